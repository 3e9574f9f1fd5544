// A run's state on the client: a snapshot, moved forward one event at a time.
// This is the TypeScript twin of engine/snapshot.py's RunView.apply; a test
// replays a log recorded by Python and compares with Python's snapshot.
import type {
  EdgeInfo, EventsMsg, Layout, NodeInfo, PendingApproval, RunInfo, SnapshotMsg
} from './protocol';
import { FINAL_NODE_STATES, SETTLED_WORKFLOW_STATES } from './states';

export type Envelope = EventsMsg['events'][number];

export interface RunState {
  runId: string;
  seq: number;
  run: RunInfo;
  nodes: Map<string, NodeInfo>;
  edges: EdgeInfo[];
  layout: Layout;
}

const DONE = ['completed', 'skipped', 'cancelled'];
const WORKFLOW_EVENTS = new Set([
  'workflow_started', 'workflow_state_changed', 'workflow_paused', 'workflow_resumed',
  'workflow_completed', 'workflow_failed', 'workflow_cancelled'
]);
const NODE_EVENTS = new Set([
  'step_started', 'step_completed', 'step_failed', 'step_retry_started', 'dag_node_status_changed'
]);

export function fromSnapshot(s: SnapshotMsg): RunState {
  return {
    runId: s.run_id,
    seq: s.seq,
    run: { ...s.run },
    nodes: new Map(s.nodes.map(n => [n.id, { ...n }])),
    edges: [...s.edges],
    layout: s.layout
  };
}

function newNode(spec: any, position: number): NodeInfo {
  return {
    id: spec.id, label: spec.label || spec.id, description: spec.description ?? '',
    deps: [...(spec.deps ?? [])], retries: spec.retries ?? 0, position,
    status: 'pending', attempt: 0, progress: null, progress_message: null,
    started_at: null, finished_at: null, error: null, result_preview: null,
    cost_usd: 0, input_tokens: 0, output_tokens: 0, last_message: null,
    files: [], metrics: {}, approval: null
  };
}

/** Topological generations, each in declaration order (as networkx does it in Python). */
export function generations(nodes: Map<string, NodeInfo>): string[][] {
  const indeg = new Map<string, number>();
  const children = new Map<string, string[]>();
  for (const n of nodes.values()) {
    indeg.set(n.id, n.deps.length);
    for (const d of n.deps) {
      if (!children.has(d)) children.set(d, []);
      children.get(d)!.push(n.id);
    }
  }
  const pos = (id: string) => nodes.get(id)!.position;
  let layer = [...indeg].filter(([, k]) => k === 0).map(([id]) => id);
  const out: string[][] = [];
  while (layer.length) {
    layer.sort((a, b) => pos(a) - pos(b));
    out.push(layer);
    const next: string[] = [];
    for (const id of layer) {
      for (const c of children.get(id) ?? []) {
        const k = indeg.get(c)! - 1;
        indeg.set(c, k);
        if (k === 0) next.push(c);
      }
    }
    layer = next;
  }
  return out;
}

/**
 * Apply one event (whose seq must be state.seq + 1). Returns the id of the node it
 * changed, or null for run-level changes.
 */
export function applyEvent(st: RunState, ev: Envelope): string | null {
  if (ev.seq !== st.seq + 1) {
    throw new Error(`event seq ${ev.seq} applied after ${st.seq}`);
  }
  st.seq = ev.seq;
  const d: any = ev.data;
  const ts = ev.timestamp;
  const run = st.run;
  run.updated_at = ts;
  const t = ev.event_type;
  if (WORKFLOW_EVENTS.has(t)) {
    run.state = d.new_state;
    run.reason = d.reason ?? null;
    if (d.new_state === 'executing' && run.started_at === null) run.started_at = ts;
    if (SETTLED_WORKFLOW_STATES.has(d.new_state)) run.finished_at = ts;
    else if (d.old_state === 'failed') run.finished_at = null;
    return null;
  }
  if (NODE_EVENTS.has(t)) {
    const node = st.nodes.get(d.node_id)!;
    const oldS = d.old_status, newS = d.new_status;
    node.status = newS;
    node.attempt = d.attempt;
    const counts = { ...run.counts };
    counts[oldS] = (counts[oldS] ?? 0) - 1;
    counts[newS] = (counts[newS] ?? 0) + 1;
    setCounts(run, counts);
    const fresh = newS === 'running' && (oldS === 'pending' || oldS === 'retrying');
    if (fresh) {
      node.started_at = ts;
      node.finished_at = null;
      node.progress = null;
      node.progress_message = null;
    }
    if (FINAL_NODE_STATES.has(newS)) node.finished_at = ts;
    if ('error' in d) node.error = d.error;
    else if (fresh) node.error = null;
    if (newS === 'completed') {
      node.progress = 1.0;
      node.result_preview = d.result_preview ?? null;
    }
    if (oldS === 'waiting_approval' && newS !== 'running' && newS !== 'paused') dropApproval(st, node);
    return node.id;
  }
  switch (t) {
    case 'dag_created':
      addNodes(st, d.nodes, d.edges);
      return null;
    case 'dag_updated':
      addNodes(st, d.added_nodes, d.added_edges);
      return null;
    case 'step_progress': {
      const node = st.nodes.get(d.node_id)!;
      if (d.progress !== undefined && d.progress !== null) node.progress = d.progress;
      if (d.message !== undefined && d.message !== null) node.progress_message = d.message;
      return node.id;
    }
    case 'agent_message': {
      const node = st.nodes.get(d.node_id)!;
      node.last_message = { agent: d.agent, message: d.message, timestamp: ts };
      return node.id;
    }
    case 'cost_update': {
      const node = st.nodes.get(d.node_id)!;
      for (const doc of [node, run] as any[]) {
        doc.cost_usd += d.usd ?? 0;
        doc.input_tokens += d.input_tokens ?? 0;
        doc.output_tokens += d.output_tokens ?? 0;
      }
      return node.id;
    }
    case 'metric_update': {
      const node = st.nodes.get(d.node_id)!;
      node.metrics = { ...node.metrics, [d.name]: d.value };
      return node.id;
    }
    case 'file_created':
    case 'file_updated': {
      const node = st.nodes.get(d.node_id)!;
      const entry: any = {};
      for (const k of ['path', 'size', 'mime', 'description']) {
        if (d[k] !== undefined && d[k] !== null) entry[k] = d[k];
      }
      entry.timestamp = ts;
      node.files = [...node.files.filter(f => f.path !== d.path), entry];
      return node.id;
    }
    case 'approval_requested': {
      const node = st.nodes.get(d.node_id)!;
      const pending: PendingApproval = {
        approval_id: d.approval_id, node_id: node.id, prompt: d.prompt, requested_at: ts
      };
      node.approval = pending;
      run.pending_approvals = [...run.pending_approvals, pending];
      return node.id;
    }
    case 'approval_received': {
      const node = st.nodes.get(d.node_id)!;
      dropApproval(st, node);
      return node.id;
    }
    case 'error_occurred':
      // The run's reason stays what it was (e.g. step_failed): the error is an extra fact.
      run.last_error = { code: d.code, message: d.message, timestamp: ts };
      return d.node_id ?? null;
    default:
      return d?.node_id ?? null;
  }
}

function setCounts(run: RunInfo, counts: Record<string, number>): void {
  run.counts = counts;
  run.done = DONE.reduce((s, k) => s + (counts[k] ?? 0), 0);
}

function addNodes(st: RunState, specs: any[], edges: EdgeInfo[]): void {
  for (const spec of specs) st.nodes.set(spec.id, newNode(spec, st.nodes.size));
  const counts = { ...st.run.counts };
  counts.pending = (counts.pending ?? 0) + specs.length;
  setCounts(st.run, counts);
  st.run.total = st.nodes.size;
  st.edges = [...st.edges, ...edges.map(e => ({ source: e.source, target: e.target }))];
  st.layout = { generations: generations(st.nodes) };
}

function dropApproval(st: RunState, node: NodeInfo): void {
  node.approval = null;
  st.run.pending_approvals = st.run.pending_approvals.filter(a => a.node_id !== node.id);
}

/** The wire snapshot of a state (what Python's RunView.snapshot() returns). */
export function toSnapshot(st: RunState): SnapshotMsg {
  return {
    type: 'snapshot',
    run_id: st.runId,
    seq: st.seq,
    run: { ...st.run },
    nodes: [...st.nodes.values()].sort((a, b) => a.position - b.position),
    edges: [...st.edges],
    layout: st.layout
  };
}
