"""A real Jupyter kernel runs a 20-step workflow and is SIGKILLed mid-run; a new kernel
resumes the run with ``wf.resume(id)``: it completes, every step ran exactly once in all
except the one the kill interrupted (side-effect counters outside the store), and the
results are those of an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest

from engine_support import TWENTY, counts, load_module
from support import wait_until

jupyter_client = pytest.importorskip("jupyter_client")


def start_kernel(work, db_url):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(work),
                              env={"DURABLE_WORK": str(work), "CMBAGENT_DB_URL": db_url,
                                   "PYTHONPATH": str(work)})
    return km, kc


def execute(kc, code: str, timeout: float = 60) -> str:
    out = []

    def keep(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=keep)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def test_a_killed_kernels_run_is_resumed_by_a_new_kernel(store, db_url, work):
    (work / "twenty.py").write_text(TWENTY)
    km, kc = start_kernel(work, db_url)
    try:
        out = execute(kc, "import twenty\nrun = twenty.build().start()\nprint(run.id)")
        run_id = out.strip()
        wait_until(lambda: (work / "s10_started").exists(), 60, "s10 to start in the kernel")
        km.signal_kernel(signal.SIGKILL)
        wait_until(lambda: not km.is_alive(), 30, "the kernel to die")
    finally:
        kc.stop_channels()
        km.cleanup_resources()
    assert counts(work) == {f"s{i}": 1 for i in range(11)}

    (work / "go").touch()
    km, kc = start_kernel(work, db_url)
    try:
        out = execute(kc, "import json, twenty\n"
                          f"run = twenty.build().resume({run_id!r})\n"
                          "print(run.wait(60).value)\n"
                          "print(json.dumps([run.result(f's{i}') for i in range(20)]))")
    finally:
        km.shutdown_kernel(now=True)
        kc.stop_channels()
    state, results = out.strip().split("\n")
    assert state == "completed"
    assert counts(work) == {**{f"s{i}": 1 for i in range(20)}, "s10": 2}
    clean = load_module(work / "twenty.py", "twenty_clean").build().run(store, timeout=30)
    assert json.loads(results) == [clean.result(f"s{i}") for i in range(20)]
    lost = [e for e in store.events(run_id) if e.event_type in ("workflow_failed", "run_reopened")]
    assert [e.event_type for e in lost] == ["workflow_failed", "run_reopened"]
    assert lost[0].data.reason == "executor_lost"
