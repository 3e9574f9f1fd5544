"""Step output (engine.output): prints, stream writes, logging records and warnings of a
step become ``step_output`` events of its attempt, from its threads and Dask workers
too; outside a step nothing changes; a runaway loop is cut by the budget."""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

import engine
from engine import Workflow, WorkflowDefinitionError
from engine import output as engine_output
from engine_support import shutdown_executors, wait_until

TIMEOUT = 60


@pytest.fixture
def store(tmp_path):
    s = engine.open_store("sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/"))
    yield s
    shutdown_executors(s)
    s.close()


def output_of(run, node_id=None) -> list[dict]:
    """Every recorded line (with its node and attempt), in log order."""
    lines = []
    for ev in run.events():
        if ev.event_type == "step_output" and (node_id is None or ev.data.node_id == node_id):
            for entry in ev.data.lines:  # consecutive lines of one stream, joined
                for text in entry.text.split("\n"):
                    lines.append({"node": ev.data.node_id, "attempt": ev.data.attempt,
                                  **entry.model_dump(exclude_none=True), "text": text})
    return lines


def texts(lines, stream=None) -> list[str]:
    return [line["text"] for line in lines if stream is None or line["stream"] == stream]


def test_prints_stream_writes_logging_and_warnings_are_the_steps_events(store, capsys, caplog):
    wf = Workflow("out")

    @wf.step()
    def talk(ctx):
        print("hello", 42)
        sys.stdout.write("in ")
        sys.stdout.write("pieces\n")
        print("to stderr", file=sys.stderr)
        logging.getLogger("fit").warning("chi2 is %.1f", 3.5)
        logging.getLogger("fit").info("not enabled: not recorded")
        warnings.warn("old prior", DeprecationWarning, stacklevel=1)

    run = wf.run(store=store, timeout=TIMEOUT)
    assert run.state == "completed"
    lines = output_of(run)
    assert {(line["node"], line["attempt"]) for line in lines} == {("talk", 1)}
    assert texts(lines, "stdout") == ["hello 42", "in pieces"]
    assert texts(lines, "stderr") == ["to stderr"]
    [rec] = [line for line in lines if line["stream"] == "log"]
    assert rec == {"node": "talk", "attempt": 1, "stream": "log", "text": "fit: chi2 is 3.5",
                   "level": "WARNING"}
    warned = [line for line in lines if line["stream"] == "warning"]
    assert warned and "DeprecationWarning: old prior" in warned[0]["text"]
    assert warned[0]["level"] == "DeprecationWarning"
    # tee (the default): still shown where it went before, and the record still reaches
    # the logging handlers (recorded once: what a stream handler writes is not recorded).
    out, err = capsys.readouterr()
    assert "hello 42\nin pieces\n" in out and "to stderr" in err
    assert [r.getMessage() for r in caplog.records if r.name == "fit"] == ["chi2 is 3.5"]
    assert run.snapshot()["nodes"][0]["output_lines"] == len(lines)


def test_threads_a_step_starts_and_its_pools_report_as_the_step(store):
    wf = Workflow("threads")

    @wf.step()
    def spawn(ctx):
        t = threading.Thread(target=lambda: print("from a thread"))
        t.start()
        t.join()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: print(f"task {i}"), range(3)))

    run = wf.run(store=store, timeout=TIMEOUT)
    assert run.state == "completed"
    assert sorted(texts(output_of(run, "spawn"))) == ["from a thread", "task 0", "task 1", "task 2"]


def test_a_pool_made_in_a_step_does_not_attribute_later_work_to_it(store, capsys):
    pools = {}
    wf = Workflow("pool")

    @wf.step()
    def make(ctx):
        pools["p"] = ThreadPoolExecutor(1)
        pools["p"].submit(print, "inside").result()

    run = wf.run(store=store, timeout=TIMEOUT)
    pools["p"].submit(print, "later, outside any step").result()
    pools["p"].shutdown()
    assert texts(output_of(run)) == ["inside"]
    assert "later, outside any step" in capsys.readouterr().out


def test_outside_a_step_nothing_changes(store, capsys, caplog):
    gate = threading.Event()
    wf = Workflow("outside")

    @wf.step()
    def wait(ctx):
        print("step line")
        gate.wait(TIMEOUT)

    run = wf.start(store=store)
    wait_until(lambda: output_of(run), TIMEOUT, "the step's line")
    print("the notebook's own line")
    logging.getLogger("cell").warning("the notebook's own record")
    gate.set()
    run.wait(TIMEOUT)
    assert texts(output_of(run)) == ["step line"]
    assert "the notebook's own line" in capsys.readouterr().out
    assert "the notebook's own record" in [r.getMessage() for r in caplog.records]


def test_concurrent_steps_do_not_mix(store):
    barrier = threading.Barrier(2)
    wf = Workflow("mix")

    def body(tag):
        def step(ctx):
            barrier.wait(TIMEOUT)
            for i in range(2000):
                print(f"{tag} {i}")
        return step

    wf.add(engine.step.make_step(body("a"), name="a"))
    wf.add(engine.step.make_step(body("b"), name="b"))
    run = wf.run(store=store, timeout=TIMEOUT, max_workers=2)
    assert run.state == "completed"
    for tag in "ab":
        assert texts(output_of(run, tag)) == [f"{tag} {i}" for i in range(2000)]


def test_modes_tee_capture_off(store, capsys):
    wf = Workflow("modes", capture_output="capture")

    @wf.step()
    def quiet(ctx):
        print("captured only")

    @wf.step(capture_output="off")
    def loud(ctx):
        print("not recorded")

    @wf.step(capture_output="tee")
    def both(ctx):
        print("recorded and shown")

    run = wf.run(store=store, timeout=TIMEOUT)
    assert run.state == "completed"
    assert texts(output_of(run, "quiet")) == ["captured only"]
    assert output_of(run, "loud") == []
    assert texts(output_of(run, "both")) == ["recorded and shown"]
    out = capsys.readouterr().out
    assert "captured only" not in out
    assert "not recorded" in out and "recorded and shown" in out
    with pytest.raises(WorkflowDefinitionError, match="capture_output"):
        Workflow("bad", capture_output="loud")
    with pytest.raises(WorkflowDefinitionError, match="capture_output"):
        wf.step(capture_output="everything")(lambda ctx: None)


def test_each_attempt_has_its_own_output(store):
    wf = Workflow("retry")
    tries = []

    @wf.step(retries=1, retry_delay=0.01)
    def flaky(ctx):
        tries.append(1)
        print(f"try {len(tries)}")
        if len(tries) == 1:
            raise RuntimeError("again")

    run = wf.run(store=store, timeout=TIMEOUT)
    assert [(line["attempt"], line["text"]) for line in output_of(run)] == [(1, "try 1"), (2, "try 2")]


def test_tqdm_progress_bar_is_one_line_updated_in_place(store):
    tqdm = pytest.importorskip("tqdm")
    wf = Workflow("bar")

    @wf.step()
    def loop(ctx):
        for _ in tqdm.tqdm(range(50), desc="fitting", mininterval=0, file=sys.stderr):
            pass
        print("after")

    run = wf.run(store=store, timeout=TIMEOUT)
    lines = output_of(run)
    bars = texts(lines, "stderr")
    assert len(bars) == 1 and bars[0].startswith("fitting: 100%") and "50/50" in bars[0]
    assert texts(lines, "stdout") == ["after"]


def test_a_partial_line_is_sent_while_it_is_written(store):
    gate = threading.Event()
    wf = Workflow("partial")

    @wf.step()
    def bar(ctx):
        sys.stdout.write("\r 10%")
        sys.stdout.write("\r 20%")
        gate.wait(TIMEOUT)
        sys.stdout.write("\r100%\n")

    run = wf.start(store=store)

    def partial():
        evs = [e for e in run.events() if e.event_type == "step_output"]
        return evs and evs[-1].data.partial and evs[-1].data.partial.text
    wait_until(lambda: partial() == " 20%", TIMEOUT, "the partial line")
    gate.set()
    run.wait(TIMEOUT)
    assert texts(output_of(run)) == ["100%"]


def test_a_million_lines_are_cut_by_the_budget_and_the_run_is_unaffected(store):
    wf = Workflow("flood", capture_output="capture")
    n = 1_000_000

    @wf.step()
    def flood(ctx):
        for i in range(n):
            print(i)
        return "done"

    @wf.step(deps=["flood"])
    def then(ctx, flood):
        print("next step")
        return flood

    run = wf.run(store=store, timeout=120)
    assert run.state == "completed" and run.result("then") == "done"
    lines = output_of(run, "flood")
    kept = [line for line in lines if line["stream"] == "stdout"]
    markers = [line for line in lines if line["stream"] == "dropped"]
    assert markers and "dropped" in markers[-1]["text"]
    recorded = sum(len(line["text"]) + 1 for line in kept)
    assert recorded <= engine_output.TOTAL_BYTES
    assert [line["text"] for line in kept[:3]] == ["0", "1", "2"]
    node = {nd["id"]: nd for nd in run.snapshot()["nodes"]}["flood"]
    # every line is either recorded or counted as dropped
    assert node["output_lines"] == len(kept) and node["output_lines"] + node["output_dropped"] == n
    assert texts(output_of(run, "then")) == ["next step"]


def test_ctx_add_step_inherits_the_mode(store, capsys):
    wf = Workflow("planner", capture_output="capture")

    @wf.step()
    def plan(ctx):
        ctx.add_step(lambda ctx: print("child"), name="child", deps=["plan"])

    run = wf.run(store=store, timeout=TIMEOUT)
    assert texts(output_of(run, "child")) == ["child"]
    assert "child" not in capsys.readouterr().out


def test_output_from_a_dask_worker(store, dask_client):
    wf = Workflow("dask-out", capture_output="capture")

    @wf.step()
    def remote(ctx):
        print("from the worker")
        logging.getLogger("w").error("worker record")
        t = threading.Thread(target=print, args=("worker thread",))
        t.start()
        t.join()

    run = wf.run(store=store, timeout=TIMEOUT, dask=dask_client)
    assert run.state == "completed"
    lines = output_of(run, "remote")
    assert texts(lines, "stdout") == ["from the worker", "worker thread"]
    assert [(line["level"], line["text"]) for line in lines if line["stream"] == "log"] == [
        ("ERROR", "w: worker record")]
