"""Continuing a run in another process: ``wf.resume(run_id)`` (``resume_run``).

A run whose process died (``executor_lost``), or that failed or was cancelled, is taken
over by the calling process with the workflow definition it passes in:

- the definition must match the run: same workflow name, same declared steps with the
  same dependencies (a mismatch is an error naming the difference, and nothing changes);
- completed steps keep their stored results (loaded when a step that runs needs them),
  unless their code changed since (their fingerprint differs), their result could not be
  stored, or ``rerun`` names them: those run again, with everything downstream;
- failed, cancelled, skipped and interrupted steps run again;
- steps added at run time (``ctx.add_step``) are not pickled: when one of them must run
  again, the step that added it runs again, and adds it again (its earlier node is reused,
  not duplicated); a step it does not add this time is skipped. Completed dynamic steps
  whose adder does not run again keep their results.

Refused (RunBusy) while a live process holds the run, naming it — unless that is the
calling process and the run is settled there (fix a step in the notebook, resume): refused for a completed
run with nothing to run again (no step stale, none named in ``rerun``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .errors import UnknownNode, WorkflowDefinitionError
from .executor import Executor, dask_runner
from .results import code_fingerprint
from .run import Run
from .runtime import local_executor
from .snapshot import RunState
from .step import Step
from .store.base import Store
from .store.leases import Lease


def _unbound_step(node: dict) -> Step:
    def unbound(**_: Any) -> None:
        raise WorkflowDefinitionError(f"step {node['id']!r} was added by {node['added_by']!r}, "
                                      "which has not added it again")

    return Step(node["id"], unbound, tuple(node["deps"]))


def definition_difference(name: str, steps: dict[str, Step], view: RunState) -> Optional[str]:
    """How the workflow ``name`` with ``steps`` differs from the run's, or None."""
    run = view.run
    if name != run["name"]:
        return f"the run is of workflow {run['name']!r}, not {name!r}"
    declared = {nid: n for nid, n in view.nodes.items() if not n.get("added_by")}
    missing = [n for n in declared if n not in steps]
    extra = [s for s in steps if s not in declared]
    out = []
    if missing:
        out.append(f"the run has step(s) {missing} that this workflow does not define")
    if extra:
        out.append(f"this workflow defines step(s) {extra} that the run does not have")
    for nid in declared:
        if nid in steps and list(steps[nid].deps) != declared[nid]["deps"]:
            out.append(f"step {nid!r} depends on {list(steps[nid].deps)} here, "
                       f"on {declared[nid]['deps']} in the run")
    return "; ".join(out) or None


def plan(view: RunState, steps: dict[str, Step], fingerprints: dict[str, str],
         rerun: Iterable[str] = ()) -> dict[str, str]:
    """``{node_id: why}`` of the steps that run again, upstream first (module doc)."""
    roots: dict[str, str] = {}
    for nid in rerun:
        if nid not in view.nodes:
            raise UnknownNode(view.run["id"], nid)
        roots[nid] = "re-run requested"
    for nid, node in view.nodes.items():
        if nid in roots:
            continue
        if node["status"] != "completed":
            roots[nid] = f"it was {node['status']}"
        elif nid not in fingerprints:
            roots[nid] = "its result was not stored"
        elif nid in steps and code_fingerprint(steps[nid].fn) != fingerprints[nid]:
            roots[nid] = "its code changed"
    # A step added at run time that must run again needs its adder to add it again.
    for nid in list(roots):
        adder = view.nodes[nid].get("added_by")
        while adder and adder not in roots:
            roots[adder] = f"it adds {nid}, which runs again"
            adder = view.nodes[adder].get("added_by")
    return view.rerun_closure(roots)


def resume_run(store: Store, name: str, steps: dict[str, Step], run_id: str, *,
               dask: Any = None, max_workers: Optional[int] = None,
               rerun: Iterable[str] = ()) -> Run:
    """Continue run ``run_id`` of the (validated) workflow ``name`` in this process."""
    rerun = list(rerun)
    before = store.load_view(run_id)
    diff = definition_difference(name, steps, before)
    if diff:
        raise WorkflowDefinitionError(f"cannot resume run {run_id}: {diff}")
    for nid in rerun:
        if nid not in before.nodes:
            raise UnknownNode(run_id, nid)
    # A completed run has something to do only if a step is stale (or named in rerun).
    stale = bool(plan(before, steps, store.result_fingerprints(run_id), rerun))
    runner = dask_runner(dask, run_id) if dask is not None else None
    if runner is not None:
        max_workers = max_workers or runner.default_width()
    mine = local_executor(run_id)
    if mine is not None and not mine.stopped.is_set() and (stale or before.run["state"] != "completed"):
        mine.hand_over()  # RunBusy while it is still running steps here
    lease = Lease.mine()
    try:
        view = store.claim_run(run_id, lease, rerun=stale)
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    again = plan(view, steps, store.result_fingerprints(run_id), rerun)
    all_steps = dict(steps)
    for nid, node in view.nodes.items():
        if node.get("added_by"):
            all_steps[nid] = _unbound_step(node)
    Executor(store, view, all_steps, lease, max_workers, runner, reopen=again).start()
    return Run(store, run_id)


__all__ = ["resume_run", "plan", "definition_difference"]
