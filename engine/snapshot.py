"""The materialized state of a run, and the one reducer that changes it: ``apply``.

The executor changes its in-memory view only by applying the events it records, the
store persists that view in the same transaction as the events, and replaying the log
from seq 1 through the same reducer rebuilds the same view. So "the snapshot" and
"the event log" cannot disagree.

Nested values (lists, dicts) inside run and node documents are replaced, never
mutated in place: a shallow copy of a document is then a stable picture of it, which
is what the group committer relies on.
"""

from __future__ import annotations

from typing import Iterable, Literal, Optional

import networkx as nx
from pydantic import BaseModel, Field

from .events import ErrorInfo, ResultInfo
from .states import (
    ATTEMPT_START_NODE_STATES,
    DONE_NODE_STATES,
    FINAL_NODE_STATES,
    SETTLED_WORKFLOW_STATES,
    NodeState,
    WorkflowState,
)

_NODE_STATUSES = [s.value for s in NodeState]
#: As plain strings: the reducer sums their counts at every node event (str keys hash faster).
_DONE = tuple(s.value for s in DONE_NODE_STATES)


def new_run_doc(run_id: str, name: str, description: str, owner: str, created_at: str) -> dict:
    return {
        "id": run_id,
        "name": name,
        "description": description,
        "owner": owner,
        "state": WorkflowState.draft.value,
        "reason": None,
        "created_at": created_at,
        "started_at": None,
        "finished_at": None,
        "updated_at": created_at,
        "cost_usd": 0.0,
        "input_tokens": 0,
        "output_tokens": 0,
        "counts": {s: 0 for s in _NODE_STATUSES},
        "total": 0,
        "done": 0,
        "pending_approvals": [],
        "last_error": None,
        "reopened": None,
    }


def new_node_doc(spec: dict, position: int) -> dict:
    return {
        "id": spec["id"],
        "label": spec.get("label") or spec["id"],
        "description": spec.get("description", ""),
        "deps": list(spec.get("deps", [])),
        "retries": spec.get("retries", 0),
        "position": position,
        "status": NodeState.pending.value,
        "attempt": 0,
        "progress": None,
        "progress_message": None,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "result_preview": None,
        "cost_usd": 0.0,
        "input_tokens": 0,
        "output_tokens": 0,
        "last_message": None,
        "files": [],
        "metrics": {},
        "metric_stats": {},
        "approval": None,
        "output_lines": 0,
        "output_dropped": 0,
        "result": None,
        "added_by": None,
    }


class RunState:
    """A run's state as of event ``seq``: a run document, node documents and edges."""

    def __init__(self, run: dict, nodes: dict[str, dict] | None = None,
                 edges: list[dict] | None = None, seq: int = 0):
        self.run = run
        self.nodes: dict[str, dict] = nodes or {}
        self.edges: list[dict] = edges or []
        self.seq = seq

    @classmethod
    def replay(cls, run_id: str, events: Iterable[dict]) -> "RunState":
        """Rebuild a view from the complete log (seq 1 onwards)."""
        view: RunState | None = None
        for ev in events:
            if view is None:
                # The run document's identity fields are not in the log's events;
                # they come from the first event (dag_created) and its metadata.
                meta = ev["data"].get("run", {})
                view = cls(new_run_doc(run_id, meta.get("name", ""), meta.get("description", ""),
                                       meta.get("owner", ""), ev["timestamp"]))
            view.apply(ev)
        if view is None:
            raise ValueError(f"run {run_id!r} has no events to replay")
        return view

    # -- the reducer -----------------------------------------------------------------

    def apply(self, ev: dict) -> Optional[str]:
        """Apply one event. Returns the id of the node it changed, if any."""
        seq = ev["seq"]
        if seq != self.seq + 1:
            raise ValueError(f"event seq {seq} applied after {self.seq}")
        self.seq = seq
        d, ts = ev["data"], ev["timestamp"]
        self.run["updated_at"] = ts
        handler = _HANDLERS.get(ev["event_type"])
        return handler(self, d, ts) if handler else d.get("node_id")

    def _workflow(self, d: dict, ts: str) -> None:
        run = self.run
        new = d["new_state"]
        run["state"] = new
        run["reason"] = d.get("reason")
        if new == "executing" and run["started_at"] is None:
            run["started_at"] = ts
        if new in SETTLED_WORKFLOW_STATES:
            run["finished_at"] = ts
        elif d["old_state"] in SETTLED_WORKFLOW_STATES:  # reopened (retry, re-run, resume)
            run["finished_at"] = None

    def _node(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        old, new = d["old_status"], d["new_status"]
        node["status"] = new
        node["attempt"] = d["attempt"]
        counts = dict(self.run["counts"])
        counts[old] -= 1
        counts[new] += 1
        self._set_counts(counts)
        if new == "running" and old in ATTEMPT_START_NODE_STATES:
            node["started_at"], node["finished_at"] = ts, None
            node["progress"], node["progress_message"] = None, None
        if new in FINAL_NODE_STATES:
            node["finished_at"] = ts
        if "error" in d:
            node["error"] = d["error"]
        elif new == "running" and old in ATTEMPT_START_NODE_STATES:
            node["error"] = None
        if new == "completed":
            node["progress"] = 1.0
            node["result_preview"] = d.get("result_preview")
            node["result"] = d.get("result")
        elif new == "pending":  # to run again (a resume, a re-run): what it had is stale
            node["result"], node["result_preview"], node["progress"] = None, None, None
        if old == "waiting_approval" and new not in ("running", "paused"):
            self._drop_approval(node)
        return node["id"]

    def _set_counts(self, counts: dict) -> None:
        self.run["counts"] = counts
        self.run["done"] = sum(counts[s] for s in _DONE)

    def _add_nodes(self, specs: list[dict], edges: list[dict]) -> None:
        for spec in specs:
            self.nodes[spec["id"]] = new_node_doc(spec, len(self.nodes))
        counts = dict(self.run["counts"])
        counts["pending"] += len(specs)
        self._set_counts(counts)
        self.run["total"] = len(self.nodes)
        self.edges = self.edges + [{"source": e["source"], "target": e["target"]} for e in edges]

    def _dag_created(self, d: dict, ts: str) -> None:
        self._add_nodes(d["nodes"], d["edges"])

    def _dag_updated(self, d: dict, ts: str) -> None:
        self._add_nodes(d["added_nodes"], d["added_edges"])
        for spec in d["added_nodes"]:
            self.nodes[spec["id"]]["added_by"] = d.get("by_node")

    def _reopened(self, d: dict, ts: str) -> None:
        self.run["reopened"] = {"host": d["host"], "pid": d["pid"], "timestamp": ts}
        self.run["last_error"] = None  # e.g. the executor_lost it recovers from

    def _progress(self, d: dict, ts: str) -> str:
        node_id = d["node_id"]
        node = self.nodes[node_id]
        progress, message = d.get("progress"), d.get("message")
        if progress is not None:
            node["progress"] = progress
        if message is not None:
            node["progress_message"] = message
        return node_id

    def _agent_message(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        node["last_message"] = {"agent": d["agent"], "message": d["message"], "timestamp": ts}
        return node["id"]

    def _cost(self, d: dict, ts: str) -> str:
        node, run = self.nodes[d["node_id"]], self.run
        for doc in (node, run):
            doc["cost_usd"] += d.get("usd", 0.0)
            doc["input_tokens"] += d.get("input_tokens", 0)
            doc["output_tokens"] += d.get("output_tokens", 0)
        return node["id"]

    def _metric(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        name, value = d["name"], d["value"]
        node["metrics"] = {**node["metrics"], name: value}
        was = node.get("metric_stats", {}).get(name)  # absent in snapshots of older versions
        stats = ({"min": value, "max": value, "count": 1} if was is None else
                 {"min": min(was["min"], value), "max": max(was["max"], value), "count": was["count"] + 1})
        stats.update(step=d.get("step"), unit=d.get("unit"))
        node["metric_stats"] = {**node.get("metric_stats", {}), name: stats}
        return node["id"]

    def _output(self, d: dict, ts: str) -> str:
        # Bounded: the snapshot counts output; the lines themselves stay in the log.
        node = self.nodes[d["node_id"]]
        # (.get: a node document stored before output was recorded has neither count.)
        node["output_lines"] = node.get("output_lines", 0) + sum(
            line["text"].count("\n") + 1 for line in d["lines"] if line["stream"] != "dropped")
        node["output_dropped"] = node.get("output_dropped", 0) + d.get("dropped_lines", 0)
        return node["id"]

    def _file(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        entry = {k: d[k] for k in ("path", "size", "mime", "description") if d.get(k) is not None}
        entry["timestamp"] = ts
        node["files"] = [f for f in node["files"] if f["path"] != d["path"]] + [entry]
        return node["id"]

    def _approval_requested(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        pending = {"approval_id": d["approval_id"], "node_id": node["id"],
                   "prompt": d["prompt"], "requested_at": ts, "kind": "approval", "choices": None}
        node["approval"] = pending
        self.run["pending_approvals"] = self.run["pending_approvals"] + [pending]
        return node["id"]

    def _question_asked(self, d: dict, ts: str) -> str:
        # A question waits with the approvals (kind "question"): one list of what the run
        # waits on a human for, counted and notified the same way.
        node = self.nodes[d["node_id"]]
        pending = {"approval_id": d["question_id"], "node_id": node["id"], "prompt": d["question"],
                   "requested_at": ts, "kind": "question", "choices": d.get("choices")}
        node["approval"] = pending
        self.run["pending_approvals"] = self.run["pending_approvals"] + [pending]
        return node["id"]

    def _approval_received(self, d: dict, ts: str) -> str:
        node = self.nodes[d["node_id"]]
        self._drop_approval(node)
        return node["id"]

    def _drop_approval(self, node: dict) -> None:
        node["approval"] = None
        self.run["pending_approvals"] = [
            a for a in self.run["pending_approvals"] if a["node_id"] != node["id"]
        ]

    def _error(self, d: dict, ts: str) -> Optional[str]:
        # The run's reason stays what it was (e.g. step_failed): the error is an extra fact.
        self.run["last_error"] = {"code": d["code"], "message": d["message"], "timestamp": ts}
        return d.get("node_id")

    # -- reading -----------------------------------------------------------------------

    def node_status(self, node_id: str) -> str:
        return self.nodes[node_id]["status"]

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from((e["source"], e["target"]) for e in self.edges)
        return g

    def rerun_closure(self, roots: dict[str, str]) -> dict[str, str]:
        """The steps that must run again when ``roots`` do (``{node_id: why}``), with why,
        in declaration order: everything downstream of them, and, for a step that added
        steps (``ctx.add_step``), every step it added — it adds them again when it runs,
        so they run again too. Upstream steps come before downstream ones."""
        g = self.graph()
        added: dict[str, list[str]] = {}
        for n in self.nodes.values():
            if n.get("added_by"):
                added.setdefault(n["added_by"], []).append(n["id"])
        out = dict(roots)
        todo = list(roots)
        while todo:
            nid = todo.pop()
            for other in [*nx.descendants(g, nid), *added.get(nid, ())]:
                if other not in out:
                    out[other] = f"{nid} runs again"
                    todo.append(other)
        order = nx.lexicographical_topological_sort(g.subgraph(out), key=lambda n: self.nodes[n]["position"])
        return {n: out[n] for n in order}

    def snapshot(self) -> dict:
        """The wire ``snapshot`` message's content: plain JSON values."""
        return {
            "run_id": self.run["id"],
            "seq": self.seq,
            "run": dict(self.run),
            "nodes": [dict(n) for n in sorted(self.nodes.values(), key=lambda n: n["position"])],
            "edges": list(self.edges),
            "layout": layout(self.graph(), self.nodes),
        }


_HANDLERS = {
    **{t: RunState._workflow for t in (
        "workflow_started", "workflow_state_changed", "workflow_paused", "workflow_resumed",
        "workflow_completed", "workflow_failed", "workflow_cancelled")},
    **{t: RunState._node for t in (
        "step_started", "step_completed", "step_failed", "step_retry_started",
        "dag_node_status_changed")},
    "dag_created": RunState._dag_created,
    "dag_updated": RunState._dag_updated,
    "step_progress": RunState._progress,
    "agent_message": RunState._agent_message,
    "cost_update": RunState._cost,
    "metric_update": RunState._metric,
    "step_output": RunState._output,
    "file_created": RunState._file,
    "file_updated": RunState._file,
    "approval_requested": RunState._approval_requested,
    "approval_received": RunState._approval_received,
    "question_asked": RunState._question_asked,
    "question_answered": RunState._approval_received,
    "error_occurred": RunState._error,
    "run_reopened": RunState._reopened,
}


def layout(graph: nx.DiGraph, nodes: dict[str, dict]) -> dict:
    """Layers by topological generation; within a layer, in declaration order."""
    order = {nid: n["position"] for nid, n in nodes.items()}
    generations = [sorted(g, key=order.__getitem__) for g in nx.topological_generations(graph)]
    return {"generations": generations}


# -- pydantic models of the snapshot, for the schema ----------------------------------


class FileInfo(BaseModel):
    path: str
    size: Optional[int] = None
    mime: Optional[str] = None
    description: Optional[str] = None
    timestamp: str


class AgentLine(BaseModel):
    agent: str
    message: str
    timestamp: str


class PendingApproval(BaseModel):
    approval_id: str = Field(description="The approval's id, or the question's")
    node_id: str
    prompt: str = Field(description="What the human is asked")
    requested_at: str
    kind: Literal["approval", "question"] = Field(
        "approval", description="ctx.approve (approve / reject) or ctx.ask (answer)")
    choices: Optional[list[str]] = Field(None, description="A question's allowed answers; free text when null")


class MetricStats(BaseModel):
    min: float
    max: float
    count: int = Field(description="How many values the step reported under this name")
    step: Optional[int] = Field(description="The step of the last value, if it gave one")
    unit: Optional[str] = Field(description="The unit of the last value, if it gave one")


class NodeInfo(BaseModel):
    id: str
    label: str
    description: str
    deps: list[str]
    retries: int
    position: int
    status: NodeState
    attempt: int
    progress: Optional[float]
    progress_message: Optional[str]
    started_at: Optional[str]
    finished_at: Optional[str]
    error: Optional[ErrorInfo]
    result_preview: Optional[str]
    cost_usd: float
    input_tokens: int
    output_tokens: int
    last_message: Optional[AgentLine]
    files: list[FileInfo]
    metrics: dict[str, float] = Field(description="The last value of each metric")
    metric_stats: dict[str, MetricStats] = Field(default_factory=dict,
                                                 description="Per metric: min, max, count, the last step and unit")
    approval: Optional[PendingApproval]
    output_lines: int = Field(0, description="Lines of output the step recorded (step_output)")
    output_dropped: int = Field(0, description="Lines of output dropped over the step's budget")
    result: Optional[ResultInfo] = Field(None, description="What was kept of the last completion's result")
    added_by: Optional[str] = Field(None, description="The step that added this one (ctx.add_step)")


class Reopened(BaseModel):
    host: str
    pid: int
    timestamp: str


class RunInfo(BaseModel):
    id: str
    name: str
    description: str
    owner: str
    state: WorkflowState
    reason: Optional[str]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    updated_at: str
    cost_usd: float
    input_tokens: int
    output_tokens: int
    counts: dict[NodeState, int] = Field(description="Number of nodes in each status")
    total: int
    done: int = Field(description="Nodes completed, skipped or cancelled")
    pending_approvals: list[PendingApproval]
    last_error: Optional[dict[str, str]]
    reopened: Optional[Reopened] = Field(None, description="The last process that continued this run (wf.resume)")


class EdgeInfo(BaseModel):
    source: str
    target: str


class Layout(BaseModel):
    generations: list[list[str]] = Field(description="Node ids by topological generation")


class Snapshot(BaseModel):
    run_id: str
    seq: int = Field(description="The state is as of this event (0: none yet)")
    run: RunInfo
    nodes: list[NodeInfo]
    edges: list[EdgeInfo]
    layout: Layout
