"""DAG execution: results flow by parameter name, dependencies are respected, the
thread pool bounds parallelism, and steps added at run time run like the others."""

from __future__ import annotations

import threading
import time

from engine import Workflow
from engine_support import check_log, of_type


class Timeline:
    """Records when each step starts and finishes, and how many run at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.peak = 0

    def start(self, name):
        with self.lock:
            self.log.append(("start", name))
            self.running += 1
            self.peak = max(self.peak, self.running)

    def finish(self, name):
        with self.lock:
            self.log.append(("finish", name))
            self.running -= 1

    def index(self, what, name):
        return self.log.index((what, name))


def assert_dependency_order(timeline: Timeline, events: list[dict], deps: dict[str, list[str]]):
    """Every step started after all its dependencies finished, in the step code's own
    timeline and in the log (step_started after the deps' step_completed)."""
    started = {e["data"]["node_id"]: e["seq"] for e in of_type(events, "step_started")}
    completed = {e["data"]["node_id"]: e["seq"] for e in of_type(events, "step_completed")}
    for node, ds in deps.items():
        for d in ds:
            assert timeline.index("finish", d) < timeline.index("start", node), \
                f"{node} started before {d} finished"
            assert completed[d] < started[node], f"{node}'s step_started precedes {d}'s step_completed"


def test_diamond_passes_results_by_parameter_name(store, tmp_path):
    tl = Timeline()
    wf = Workflow("diamond", description="a, then b and c, then d")
    out = tmp_path / "fit.txt"

    @wf.step()
    def a(ctx):
        tl.start("a"); tl.finish("a")
        return 3

    @wf.step(deps=["a"])
    def b(ctx, a):
        tl.start("b")
        ctx.progress(0.5, "halfway")
        ctx.message("Looks fine", agent="engineer")
        ctx.cost(model="m", input_tokens=10, output_tokens=5, usd=0.25)
        ctx.metric("chi2", 1.5)
        out.write_text("fit")
        ctx.file(out, description="the fit")
        tl.finish("b")
        return a * 10

    @wf.step(deps=["a"])
    def c(a):  # no ctx: only the dependency's result
        tl.start("c"); tl.finish("c")
        return a + 1

    @wf.step(deps=["b", "c"])
    def d(ctx, c, b):  # parameter order does not matter, names do
        tl.start("d"); tl.finish("d")
        ctx.cost(model="m", input_tokens=1, output_tokens=2, usd=0.5)
        return {"b": b, "c": c}

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    assert run.result("d") == {"b": 30, "c": 4}
    events = check_log(run)
    assert_dependency_order(tl, events, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})

    snap = run.snapshot()
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert [n["id"] for n in snap["nodes"]] == ["a", "b", "c", "d"]
    assert snap["edges"] == [{"source": "a", "target": "b"}, {"source": "a", "target": "c"},
                             {"source": "b", "target": "d"}, {"source": "c", "target": "d"}]
    assert snap["layout"]["generations"] == [["a"], ["b", "c"], ["d"]]
    assert all(n["status"] == "completed" and n["attempt"] == 1 and n["progress"] == 1.0
               for n in nodes.values())
    assert nodes["b"]["progress_message"] == "halfway"
    assert nodes["b"]["last_message"]["agent"] == "engineer"
    assert nodes["b"]["metrics"] == {"chi2": 1.5}
    assert [f["path"] for f in nodes["b"]["files"]] == [str(out)]
    assert nodes["d"]["result_preview"] == repr({"b": 30, "c": 4})
    r = snap["run"]
    assert (r["name"], r["description"], r["state"]) == ("diamond", "a, then b and c, then d", "completed")
    assert (r["cost_usd"], r["input_tokens"], r["output_tokens"]) == (0.75, 11, 7)
    assert (r["total"], r["done"], r["counts"]["completed"]) == (4, 4, 4)
    assert r["started_at"] and r["finished_at"] and r["started_at"] <= r["finished_at"]
    # The run shows up in the store's list, and a fresh handle reads the same run.
    assert [x["id"] for x in store.runs()] == [run.id]
    assert store.run(run.id).snapshot() == snap
    assert events[0]["event_type"] == "dag_created" and events[-1]["event_type"] == "workflow_completed"


def _sink(names: list[str], tl: Timeline):
    """A function whose parameters are exactly ``names`` (results arrive by name only)."""
    src = (f"def sink({', '.join(names)}):\n    tl.start('sink'); tl.finish('sink')\n"
           f"    return [{', '.join(names)}]\n")
    ns: dict = {"tl": tl}
    exec(src, ns)
    return ns["sink"]


def test_wide_dag_runs_in_parallel_within_max_workers(store):
    tl = Timeline()
    wf = Workflow("wide")
    width = 200

    @wf.step()
    def root():
        tl.start("root"); tl.finish("root")
        return 1000

    def leaf(i):
        def fn(root):
            tl.start(f"leaf_{i}")
            time.sleep(0.002)  # long enough for the pool's threads to overlap
            tl.finish(f"leaf_{i}")
            return root + i
        return fn

    names = [f"leaf_{i}" for i in range(width)]
    for i, name in enumerate(names):
        wf.step(name, deps=["root"])(leaf(i))
    wf.step("sink", deps=names)(_sink(names, tl))

    t0 = time.monotonic()
    run = wf.run(store=store, timeout=60, max_workers=8)
    elapsed = time.monotonic() - t0
    assert run.state == "completed", run.snapshot()["run"]
    assert run.result("sink") == [1000 + i for i in range(width)]
    assert 2 <= tl.peak <= 8, f"peak concurrency {tl.peak}"
    events = check_log(run)
    assert_dependency_order(tl, events, {**{n: ["root"] for n in names}, "sink": names})
    snap = run.snapshot()
    assert snap["run"]["done"] == snap["run"]["total"] == width + 2
    assert [len(g) for g in snap["layout"]["generations"]] == [1, width, 1]
    # What the DAG view shows agrees: never more nodes "running" than there are workers.
    running, peak_shown = set(), 0
    for e in events:
        if "old_status" in e["data"]:
            (running.add if e["data"]["new_status"] == "running" else running.discard)(e["data"]["node_id"])
            peak_shown = max(peak_shown, len(running))
    assert peak_shown <= 8, f"{peak_shown} nodes shown running with 8 workers"
    assert len(of_type(events, "step_started")) == width + 2
    print(f"wide DAG of {width + 2} nodes: {elapsed:.2f} s, {len(events)} events")


def test_planner_adds_steps_at_run_time(store):
    wf = Workflow("planner")

    def double(planner):
        return planner * 2

    def part(i):
        def fn(ctx):
            ctx.progress(1.0, f"part {i}")
            return i
        return fn

    def combine(double, part_0, part_1, part_2):
        return double + part_0 + part_1 + part_2

    @wf.step()
    def planner(ctx):
        ids = [ctx.add_step(double, deps=["planner"])]  # depends on the planner itself
        ids += [ctx.add_step(part(i), name=f"part_{i}", description=f"part {i}") for i in range(3)]
        ids.append(ctx.add_step(combine, deps=["double", "part_0", "part_1", "part_2"]))
        return 21

    @wf.step(deps=["planner"])
    def report(planner):
        return f"planned {planner}"

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed", run.snapshot()["run"]
    assert run.result("combine") == 42 + 0 + 1 + 2
    assert run.result("report") == "planned 21"

    events = check_log(run)
    updates = of_type(events, "dag_updated")
    assert [u["data"]["added_nodes"][0]["id"] for u in updates] == [
        "double", "part_0", "part_1", "part_2", "combine"]
    assert all(u["data"]["by_node"] == "planner" for u in updates)
    assert updates[0]["data"]["added_edges"] == [{"source": "planner", "target": "double"}]
    assert updates[1]["data"]["added_nodes"][0]["description"] == "part 0"
    # Each dag_updated comes while the planner runs, before it completes.
    planner_done = next(e["seq"] for e in of_type(events, "step_completed")
                        if e["data"]["node_id"] == "planner")
    assert all(u["seq"] < planner_done for u in updates)

    snap = run.snapshot()
    assert [n["id"] for n in snap["nodes"]] == [
        "planner", "report", "double", "part_0", "part_1", "part_2", "combine"]
    assert all(n["status"] == "completed" for n in snap["nodes"])
    assert snap["run"]["total"] == snap["run"]["done"] == 7
    assert {"source": "part_2", "target": "combine"} in snap["edges"]
    assert snap["layout"]["generations"] == [
        ["planner", "part_0", "part_1", "part_2"], ["report", "double"], ["combine"]]


def test_a_kwargs_step_receives_every_dependency_result(store):
    """The planner pattern: a combine step whose inputs are only known at run time."""
    wf = Workflow("combine")

    @wf.step()
    def plan(ctx):
        names = [ctx.add_step(lambda i=i: i * i, name=f"square_{i}") for i in range(4)]
        ctx.add_step(lambda **results: sorted(results.items()), deps=names, name="combine")

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    assert run.result("combine") == [("square_0", 0), ("square_1", 1), ("square_2", 4), ("square_3", 9)]
