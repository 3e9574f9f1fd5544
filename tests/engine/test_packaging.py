"""The engine stands alone (no Jupyter imports), and its protocol schema is generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import Workflow
from engine.events import EVENT_TYPES
from engine_support import REPO, check_log


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=60)


def test_importing_the_engine_imports_no_jupyter_code():
    code = (
        "import sys, json\n"
        "import engine, engine.demo, engine.events, engine.snapshot, engine.executor, engine.run\n"
        "import engine.runtime, engine.journal, engine.context, engine.step\n"
        "import engine.store.sqlite\n"
        "bad = ('jupyter', 'tornado', 'ipywidgets', 'anywidget')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0].startswith(bad))))\n"
    )
    out = python("-c", code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.fixture(scope="module")
def schema():
    out = python("-m", "engine", "schema")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_schema_command_prints_a_json_schema_of_every_event_type(schema):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert len(EVENT_TYPES) == 29  # the seed's 25, question_asked, question_answered, step_output, run_reopened
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert schema["discriminator"]["propertyName"] == "event_type"
    assert len(schema["oneOf"]) == len(EVENT_TYPES)


def test_real_events_validate_against_the_schema(schema, store):
    jsonschema = pytest.importorskip("jsonschema")
    wf = Workflow("schema check")

    @wf.step(retries=1, retry_delay=0.01)
    def a(ctx):
        ctx.progress(0.5, "half")
        ctx.message("hi", agent="planner")
        ctx.thinking("hmm", agent="planner")
        ctx.tool_call("search", {"q": "cmb"}, result=["x"])
        ctx.cost(model="m", input_tokens=1, output_tokens=1, usd=0.01)
        ctx.metric("loss", 0.1, step=1, unit="nats")
        if ctx.attempt == 1:
            raise ValueError("first try")
        return 1

    run = wf.run(store=store, timeout=30)
    events = check_log(run)
    assert len({e["event_type"] for e in events}) >= 12
    validator = jsonschema.Draft202012Validator(schema)
    for e in events:
        validator.validate(e)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[0], "event_type": "no_such_event"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[0], "seq": 0})


def test_schema_command_usage():
    out = python("-m", "engine")
    assert out.returncode == 2 and "usage: python -m engine schema" in out.stderr


def test_a_run_displays_as_what_the_front_end_registered_and_as_text_without_one(store, monkeypatch):
    """The engine imports no front end: cmbagent_jupyter registers how a run displays
    (the ``engine.run_display`` entry point); with none, a run shows as its text repr."""
    import engine.run
    from importlib.metadata import entry_points

    [registered] = entry_points(group=engine.run.DISPLAY_GROUP)
    assert registered.value == "cmbagent_jupyter.widget:display_run"
    wf = Workflow("shown")
    wf.step()(lambda: 1)
    run = wf.run(store, timeout=10)
    monkeypatch.setattr(engine.run, "_display", lambda: None)
    assert run._repr_mimebundle_() == {"text/plain": repr(run)}
    assert repr(run).startswith("<Run 'shown' ") and "completed: 1/1 steps done" in repr(run)
    with pytest.raises(ImportError, match="no front end is installed"):
        run.widget()
