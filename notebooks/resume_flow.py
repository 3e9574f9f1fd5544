"""The workflow of notebooks/resume.ipynb: a small analysis whose process gets killed.

Each step appends its name to ``<work>/counts`` when it runs (a record outside the
store of what really ran), and ``fit`` waits for the file ``<work>/go``: the process
that first runs it is killed while it waits.
"""

import time
from pathlib import Path

from engine import Workflow


def counts(work):
    """How many times each step ran, from the counter file."""
    out = {}
    for name in (Path(work) / "counts").read_text().split():
        out[name] = out.get(name, 0) + 1
    return out


def build(work):
    work = Path(work)
    wf = Workflow("resumable analysis", description="a fit that outlives the process that started it")

    def ran(name):
        with open(work / "counts", "a") as f:
            f.write(name + "\n")

    @wf.step()
    def load(ctx):
        ran("load")
        return [1.0, 2.0, 3.0, 4.0]

    @wf.step(deps=["load"])
    def calibrate(ctx, load):
        ran("calibrate")
        return [2 * x for x in load]

    @wf.step()
    def noise(ctx):
        ran("noise")
        return 0.5

    @wf.step(deps=["calibrate", "noise"])
    def fit(ctx, calibrate, noise):
        ran("fit")
        (work / "fit_started").touch()
        while not (work / "go").exists():
            ctx.checkpoint()
            time.sleep(0.05)
        return sum(calibrate) / len(calibrate) + noise

    @wf.step(deps=["fit"])
    def report(ctx, fit):
        ran("report")
        return f"best fit: {fit:.2f}"

    return wf
