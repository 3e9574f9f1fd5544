from engine import Workflow, open_store


def test_a_diamond_runs_to_completion(tmp_path):
    store = open_store(str(tmp_path / "runs.sqlite"))
    wf = Workflow("diamond")

    @wf.step()
    def a():
        return 1

    @wf.step(deps=["a"])
    def b(a):
        return a + 1

    @wf.step(deps=["a"])
    def c(a):
        return a + 2

    @wf.step(deps=["b", "c"])
    def d(b, c):
        return b * c

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    assert run.result("d") == 6
    assert [e.seq for e in run.events()] == list(range(1, len(run.events()) + 1))
