"""One source of truth per contract: the generated artefacts must match their sources."""

import json
import shutil
import subprocess
from pathlib import Path

from cmbagent_jupyter.protocol import wire_schema
from engine.snapshot import RunState
from support import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "labextension"


def test_committed_schema_is_generated_from_the_models():
    committed = json.loads((LAB / "schema" / "protocol.schema.json").read_text())
    assert committed == wire_schema(), (
        "labextension/schema/protocol.schema.json is stale: run "
        "`python -m cmbagent_jupyter.protocol schema > labextension/schema/protocol.schema.json` "
        "then `npm run gen` in labextension/")


def test_typescript_types_are_generated_from_the_schema():
    if shutil.which("node") is None:
        skip_or_fail("node is not installed")
    if not (LAB / "node_modules" / "json-schema-to-typescript").exists():
        skip_or_fail("labextension/node_modules is not installed (./dev build installs it)")
    out = subprocess.run(["node", "scripts/gen-types.mjs", "--check"], cwd=LAB,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_python_reducer_replays_the_cross_language_fixture():
    """The same recorded logs the TypeScript reducer's test replays (labextension/test)."""
    fixture = json.loads((LAB / "test" / "fixtures" / "run-log.json").read_text())
    for run in fixture["runs"]:
        events = run["events"]
        view = RunState.replay(events[0]["run_id"], events)
        assert view.snapshot() == run["snapshot"], run["title"]
