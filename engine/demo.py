"""A small workflow, run from the terminal, printing its event stream as it happens.

    python -m engine demo [--store URL]
"""

from __future__ import annotations

import argparse
import random
import time

from . import Workflow, open_store
from .states import SETTLED_WORKFLOW_STATES


def build() -> Workflow:
    wf = Workflow("demo", description="plan, fit three models in parallel, pick the best")

    @wf.step()
    def plan(ctx):
        """Decide which models to fit (a scripted stand-in for a planning agent)."""
        ctx.message("I will fit a constant, a line and a parabola.", agent="planner (scripted)")
        ctx.cost(model="scripted-planner", input_tokens=420, output_tokens=96, usd=0.0021)
        return [0, 1, 2]

    def make_fit(degree):
        def fit(ctx, plan):
            rng = random.Random(degree)
            for i in range(5):
                ctx.checkpoint()
                time.sleep(0.1)
                ctx.progress((i + 1) / 5, f"iteration {i + 1}/5")
            chi2 = 10.0 / (1 + degree) + rng.random()
            ctx.metric("chi2", chi2)
            return chi2
        return fit

    for deg in (0, 1, 2):
        wf.step(f"fit_degree_{deg}", deps=["plan"])(make_fit(deg))

    @wf.step(deps=["fit_degree_0", "fit_degree_1", "fit_degree_2"])
    def choose(ctx, fit_degree_0, fit_degree_1, fit_degree_2):
        """Pick the model with the lowest chi-square, after a human agrees."""
        fits = {0: fit_degree_0, 1: fit_degree_1, 2: fit_degree_2}
        best = min(fits, key=fits.get)
        if not ctx.approve(f"Use the degree-{best} model (chi2 = {fits[best]:.2f})?"):
            return None
        return best

    return wf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store URL (default: the per-user SQLite store)")
    args = parser.parse_args(argv)
    store = open_store(args.store)
    run = build().start(store=store)
    print(f"run {run.id} in {store.url}")
    seq, approved = 0, False
    while True:
        for ev in run.events(after_seq=seq):
            seq = ev.seq
            data = ev.data.model_dump(mode="json", exclude_none=True)
            print(f"{ev.seq:4d} {ev.timestamp[11:23]} {ev.event_type:24s} {data}")
            if ev.event_type == "approval_requested" and not approved:
                print("     -> approving from the terminal (run.approve())")
                run.approve(comment="approved by the demo script")
                approved = True
        if run.state in SETTLED_WORKFLOW_STATES and seq == run.snapshot()["seq"]:
            break
        time.sleep(0.05)
    print(f"final state: {run.state.value}; best model: degree {run.result('choose')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
