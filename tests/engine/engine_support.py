"""Helpers shared by the engine tests: waiting on conditions, checking a run's log,
and running Python scripts in other processes against the same store."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Optional

import orjson
import pytest

from engine import states
from engine.events import TYPED_ENVELOPES, parse_events
from engine.snapshot import RunState
from support import shutdown_executors, wait_until  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[2]
SETTLED = ("completed", "failed", "cancelled")
#: How long the Dask tests wait for anything (a cluster, a task, a worker's restart).
DASK_TIMEOUT = 60


# -- waiting ---------------------------------------------------------------------------


def node_status(run, node_id: str) -> str:
    return next(n["status"] for n in run.snapshot()["nodes"] if n["id"] == node_id)


def statuses(run) -> dict[str, str]:
    return {n["id"]: n["status"] for n in run.snapshot()["nodes"]}


def describe(run) -> Callable[[], dict]:
    """A ``context`` for wait_until: the run's state and its nodes' statuses."""
    return lambda: {"state": run.state.value, "nodes": statuses(run)}


def wait_state(run, *wanted: str, timeout: float = 10.0) -> str:
    """Wait until the run's state is one of ``wanted``; return it."""
    return wait_until(lambda: run.state.value if run.state.value in wanted else None,
                      timeout, f"run {run.id} to be {' or '.join(wanted)}", context=describe(run))


def wait_node(run, node_id: str, *wanted: str, timeout: float = 10.0) -> str:
    return wait_until(lambda: node_status(run, node_id) in wanted and node_status(run, node_id),
                      timeout, f"node {node_id} to be {' or '.join(wanted)}", context=describe(run))


# -- reading the log -------------------------------------------------------------------------


def of_type(events: list[dict], *types: str) -> list[dict]:
    return [e for e in events if e["event_type"] in types]


def workflow_path(events: list[dict]) -> list[str]:
    """The run's states in order, starting with draft."""
    path = ["draft"]
    for e in events:
        if "old_state" in e["data"]:
            path.append(e["data"]["new_state"])
    return path


def node_path(events: list[dict], node_id: str) -> list[str]:
    """A node's statuses in order, starting with pending."""
    path = ["pending"]
    for e in events:
        if "old_status" in e["data"] and e["data"]["node_id"] == node_id:
            path.append(e["data"]["new_status"])
    return path


def check_transitions(events: list[dict]) -> None:
    """Every transition event continues its entity's previous state, is legal, has the
    event type the rules give it, and appears once (no double emission)."""
    run_state = "draft"
    nodes: dict[str, str] = {}
    for e in events:
        t, d, where = e["event_type"], e["data"], f"seq {e['seq']} ({e['event_type']})"
        if t == "dag_created":
            nodes.update({n["id"]: "pending" for n in d["nodes"]})
        elif t == "dag_updated":
            nodes.update({n["id"]: "pending" for n in d["added_nodes"]})
        elif "old_state" in d:
            assert d["old_state"] == run_state, f"{where}: run was {run_state}, event says {d['old_state']}"
            states.check_workflow(d["old_state"], d["new_state"])
            assert t == states.workflow_event_type(d["old_state"], d["new_state"]), where
            run_state = d["new_state"]
        elif "old_status" in d:
            nid = d["node_id"]
            assert d["old_status"] == nodes[nid], \
                f"{where}: node {nid} was {nodes[nid]}, event says {d['old_status']}"
            states.check_node(d["old_status"], d["new_status"])
            assert t == states.node_event_type(d["old_status"], d["new_status"]), where
            nodes[nid] = d["new_status"]


def check_log(run) -> list[dict]:
    """Check the invariants every settled run's log satisfies; return its events.

    seq is gap-free up to the snapshot's seq, every event validates against its typed
    model, transitions chain, and replaying the log gives the stored snapshot.
    """
    snap = run.snapshot()
    events = run.events().dicts()
    first, last = run.store.bounds(run.id)
    assert [e["seq"] for e in events] == list(range(first, last + 1)), "seq has a gap"
    assert last == snap["seq"], f"snapshot is at seq {snap['seq']}, log at {last}"
    typed = parse_events(orjson.dumps(events))
    assert [ev.model_dump(mode="json") for ev in typed] == [
        TYPED_ENVELOPES[e["event_type"]].model_validate(e).model_dump(mode="json") for e in events]
    assert all(ev.event_type == e["event_type"] for ev, e in zip(typed, events))
    if first == 1:
        check_transitions(events)
        assert RunState.replay(run.id, events).snapshot() == snap, "replay disagrees with the store"
    return events


# -- the database itself ------------------------------------------------------------------------


def raw(db_url: str, *statements: str) -> list[tuple]:
    """Run SQL on the database behind ``db_url`` with its own driver; rows of the last."""
    import sqlite3

    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url[len("sqlite://"):])
        try:
            rows = [conn.execute(s).fetchall() for s in statements][-1]
            conn.commit()
            return rows
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        out = []
        for s in statements:
            cur = conn.execute(s)
            out = cur.fetchall() if cur.description else []
        return out


# -- other processes ------------------------------------------------------------------------------

PRELUDE = """\
import json, os, sys, time
from pathlib import Path
from engine import Workflow, open_store

store = open_store(sys.argv[1])


def publish(path, text):
    # Write a file another process waits for, all at once.
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
"""


# A run executing in another process: `long` loops on ctx.checkpoint() until the
# file `go` appears in the work directory; `after` depends on it.
REMOTE_RUN = """
workdir = Path(sys.argv[2])
wf = Workflow("remote")

@wf.step()
def long(ctx):
    while not (workdir / "go").exists():
        ctx.checkpoint()
        time.sleep(0.002)
    return "long done"

@wf.step(deps=["long"])
def after(long):
    return long + " + after"

run = wf.start(store=store)
publish(workdir / "run_id", run.id)
print(run.wait(60).value)
print(run.result("after"))
"""


class Script:
    """A Python script run by another interpreter, its output kept in files."""

    def __init__(self, tmp_path: Path, name: str, body: str):
        self.path = tmp_path / f"{name}.py"
        self.path.write_text(PRELUDE + textwrap.dedent(body))
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, *args: str, launcher: tuple[str, ...] = ()) -> "Script":
        """Start the script with ``args``; ``launcher``: a command that runs the
        interpreter (its command line is appended), e.g. one entering a namespace."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*launcher, sys.executable, str(self.path), *map(str, args)],
                                         stdout=out, stderr=err, cwd=REPO, env=env)
        return self

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.path.name} did not finish in {timeout} s; stderr:\n{self.stderr}")

    def check(self, timeout: float = 60.0) -> str:
        """Wait for a clean exit; return stdout."""
        rc = self.wait(timeout)
        assert rc == 0, f"{self.path.name} exited {rc}; stderr:\n{self.stderr}"
        return self.stdout

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_file(self, path: Path, timeout: float = 30.0) -> str:
        """Wait until the script has written ``path`` (failing early if it died)."""
        wait_until(lambda: path.exists() or not self.alive(), timeout, f"{path.name} from {self.path.name}")
        if not path.exists():
            pytest.fail(f"{self.path.name} exited {self.proc.returncode} before writing {path.name}; "
                        f"stderr:\n{self.stderr}")
        return path.read_text()

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def run_script(tmp_path: Path, name: str, body: str, *args: str, timeout: float = 60.0) -> str:
    """Run a script to completion; fail unless it exits 0; return its stdout."""
    return Script(tmp_path, name, body).start(*args).check(timeout)



def open_at_barrier(paths: list[str], barrier, results) -> None:
    """In a process of its own: open each new store in ``paths`` with the other processes
    (all released by ``barrier``); put "ok" or the traceback in ``results`` for each."""
    import traceback

    import engine

    for path in paths:
        barrier.wait(60)
        try:
            engine.open_store("sqlite:///" + path.lstrip("/")).runs()
            results.put("ok")
        except Exception:
            results.put(traceback.format_exc())


# -- durable work (test_durable, test_kernel_resume) ------------------------------------

# A workflow module both processes import (same file: same code fingerprints). Steps
# count their runs in $DURABLE_WORK/counts; s10 waits for the file "go" (the first
# process is killed while it waits).
TWENTY = '''
import os, time
from pathlib import Path
from engine import Workflow

WORK = Path(os.environ["DURABLE_WORK"])


def count(name):
    with open(WORK / "counts", "a") as f:
        f.write(name + "\\n")


def make(i):
    def body(ctx, **upstream):
        count(f"s{i}")
        if i == 10:
            (WORK / "s10_started").touch()
            while not (WORK / "go").exists():
                time.sleep(0.01)
        return {"i": i, "sum": i + sum(u["sum"] for u in upstream.values())}
    return body


def build():
    wf = Workflow("twenty")
    for i in range(20):
        # A chain with a side branch: s(i) depends on s(i-1), and every fifth also on s(i-5).
        deps = [f"s{i - 1}"] if i else []
        if i >= 5 and i % 5 == 0:
            deps.append(f"s{i - 5}")
        wf.step(f"s{i}", deps=deps)(make(i))
    return wf
'''

def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ran(work: Path, name: str) -> None:
    """Count one run of step ``name`` in ``work``'s counter file (outside the store)."""
    with open(work / "counts", "a") as f:
        f.write(name + "\n")


def counts(work: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    if (work / "counts").exists():
        for line in (work / "counts").read_text().split():
            out[line] = out.get(line, 0) + 1
    return out
