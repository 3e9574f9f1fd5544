// A run's state on the client: a snapshot, moved forward one event at a time.
// This is the TypeScript twin of engine/snapshot.py's RunState.apply; a test
// replays logs recorded by Python and compares with Python's snapshots.
import type {
  Edge, EdgeInfo, EventsMsg, FileInfo, Layout, MetricStats, NodeInfo, NodeSpec, PendingApproval, RunInfo,
  SnapshotMsg
} from './protocol';
import { FINAL_NODE_STATES, SETTLED_WORKFLOW_STATES } from './states';

/** One event of a run's log: a union discriminated by `event_type`. */
export type Envelope = EventsMsg['events'][number];
export type EventType = Envelope['event_type'];
/** The envelope of one event type, with its data's own type. */
export type EventOf<T extends EventType> = Extract<Envelope, { event_type: T }>;

/** The events of a workflow transition: each carries the old and the new state. */
const WORKFLOW_EVENTS = [
  'workflow_started', 'workflow_state_changed', 'workflow_paused', 'workflow_resumed',
  'workflow_completed', 'workflow_failed', 'workflow_cancelled'
] as const satisfies readonly EventType[];
export type WorkflowEvent = EventOf<typeof WORKFLOW_EVENTS[number]>;

/** The events of a node transition: each carries the old and the new status. */
const NODE_TRANSITIONS = [
  'step_started', 'step_completed', 'step_failed', 'step_retry_started', 'dag_node_status_changed'
] as const satisfies readonly EventType[];
type NodeTransition = EventOf<typeof NODE_TRANSITIONS[number]>;

export function isWorkflowEvent(ev: Envelope): ev is WorkflowEvent {
  return (WORKFLOW_EVENTS as readonly string[]).includes(ev.event_type);
}

function isNodeTransition(ev: Envelope): ev is NodeTransition {
  return (NODE_TRANSITIONS as readonly string[]).includes(ev.event_type);
}

export interface RunState {
  runId: string;
  seq: number;
  run: RunInfo;
  nodes: Map<string, NodeInfo>;
  edges: EdgeInfo[];
  layout: Layout;
}

const DONE = ['completed', 'skipped', 'cancelled'];

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

/**
 * What a new node starts with and the reducer only ever replaces, never changes in place
 * (`files`, `metrics`, `metric_stats`; `deps` never change): shared and frozen, so a plan of
 * 20,000 steps allocates 4 objects fewer per step (at that size the allocations, and the
 * garbage collection they bring, were most of the task that applies the plan).
 */
const NONE: never[] = Object.freeze([]) as never[];
const EMPTY: Record<string, never> = Object.freeze({});

function newNode(spec: NodeSpec, position: number): NodeInfo {
  return {
    id: spec.id, label: spec.label || spec.id, description: spec.description ?? '',
    deps: spec.deps ?? NONE, retries: spec.retries ?? 0, position,
    status: 'pending', attempt: 0, progress: null, progress_message: null,
    started_at: null, finished_at: null, error: null, result_preview: null,
    cost_usd: 0, input_tokens: 0, output_tokens: 0, last_message: null,
    files: NONE, metrics: EMPTY, metric_stats: EMPTY, approval: null, output_lines: 0, output_dropped: 0,
    result: null, added_by: null
  };
}

/**
 * Topological generations, each in declaration order (as networkx does it in Python).
 * Linear in nodes and deps, on integer indices: at 20,000 nodes this runs inside the task
 * that applies the plan, so it must take a few milliseconds, not tens.
 */
export function generations(nodes: Map<string, NodeInfo>): string[][] {
  // Nodes by declaration order (already in it in every real state: a no-op sort).
  const list = [...nodes.values()].sort((a, b) => a.position - b.position);
  const n = list.length;
  const index = new Map<string, number>();
  for (let i = 0; i < n; i++) index.set(list[i].id, i);
  // Children as one flat array (CSR): a dep listed twice is counted twice, like its indegree.
  const indeg = new Int32Array(n);
  const start = new Int32Array(n + 1);
  for (let i = 0; i < n; i++) {
    const deps = list[i].deps;
    indeg[i] = deps.length; // a dep that is not a node never comes down: the node is left out
    for (const d of deps) {
      const j = index.get(d);
      if (j !== undefined) start[j + 1]++;
    }
  }
  for (let i = 0; i < n; i++) start[i + 1] += start[i];
  const children = new Int32Array(start[n]);
  const fill = start.slice(0, n);
  for (let i = 0; i < n; i++) {
    for (const d of list[i].deps) {
      const j = index.get(d);
      if (j !== undefined) children[fill[j]++] = i;
    }
  }
  // Kahn's algorithm a layer at a time gives each node its generation...
  const gen = new Int32Array(n).fill(-1);
  let layer: number[] = [];
  for (let i = 0; i < n; i++) if (indeg[i] === 0) layer.push(i);
  let count = 0;
  while (layer.length) {
    const next: number[] = [];
    for (const i of layer) {
      gen[i] = count;
      for (let k = start[i]; k < start[i + 1]; k++) if (--indeg[children[k]] === 0) next.push(children[k]);
    }
    count++;
    layer = next;
  }
  // ...and one pass in declaration order fills them, each already in that order.
  const out: string[][] = Array.from({ length: count }, () => []);
  for (let i = 0; i < n; i++) if (gen[i] >= 0) out[gen[i]].push(list[i].id);
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
  const ts = ev.timestamp;
  st.run.updated_at = ts;
  if (isWorkflowEvent(ev)) {
    applyWorkflow(st.run, ev.data, ts);
    return null;
  }
  if (isNodeTransition(ev)) return applyNode(st, ev.data, ts);
  switch (ev.event_type) {
    case 'dag_created':
      addNodes(st, ev.data.nodes, ev.data.edges);
      return null;
    case 'dag_updated':
      addNodes(st, ev.data.added_nodes, ev.data.added_edges);
      for (const spec of ev.data.added_nodes) st.nodes.get(spec.id)!.added_by = ev.data.by_node ?? null;
      return null;
    case 'run_reopened':
      // Continued by another process (wf.resume): the loss it recovers from is over.
      st.run.reopened = { host: ev.data.host, pid: ev.data.pid, timestamp: ts };
      st.run.last_error = null;
      return null;
    case 'step_progress': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      if (d.progress !== undefined && d.progress !== null) node.progress = d.progress;
      if (d.message !== undefined && d.message !== null) node.progress_message = d.message;
      return node.id;
    }
    case 'agent_message': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      node.last_message = { agent: d.agent, message: d.message, timestamp: ts };
      return node.id;
    }
    case 'agent_thinking':
    case 'agent_tool_call':
      return ev.data.node_id; // nothing kept in the state: the activity log shows them
    case 'cost_update': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      for (const doc of [node, st.run]) {
        doc.cost_usd += d.usd ?? 0;
        doc.input_tokens += d.input_tokens ?? 0;
        doc.output_tokens += d.output_tokens ?? 0;
      }
      return node.id;
    }
    case 'metric_update': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      node.metrics = { ...node.metrics, [d.name]: d.value };
      const was = node.metric_stats?.[d.name]; // absent in snapshots of older versions
      const stats: MetricStats = was
        ? { min: Math.min(was.min, d.value), max: Math.max(was.max, d.value), count: was.count + 1,
            step: d.step ?? null, unit: d.unit ?? null }
        : { min: d.value, max: d.value, count: 1, step: d.step ?? null, unit: d.unit ?? null };
      node.metric_stats = { ...node.metric_stats, [d.name]: stats };
      return node.id;
    }
    case 'step_output': {
      // Bounded: the state counts output; the lines stay in the log (console.ts reads them).
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      let lines = 0;
      for (const l of d.lines ?? []) if (l.stream !== 'dropped') lines += l.text.split('\n').length;
      node.output_lines = (node.output_lines ?? 0) + lines;
      node.output_dropped = (node.output_dropped ?? 0) + (d.dropped_lines ?? 0);
      return node.id;
    }
    case 'file_created':
    case 'file_updated': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      // Only the facts the event has, in Python's key order.
      const entry: FileInfo = {
        path: d.path,
        ...(d.size !== undefined && d.size !== null && { size: d.size }),
        ...(d.mime !== undefined && d.mime !== null && { mime: d.mime }),
        ...(d.description !== undefined && d.description !== null && { description: d.description }),
        timestamp: ts
      };
      node.files = [...node.files.filter(f => f.path !== d.path), entry];
      return node.id;
    }
    case 'approval_requested': {
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      return waitOnHuman(st, node, {
        approval_id: d.approval_id, node_id: node.id, prompt: d.prompt, requested_at: ts,
        kind: 'approval', choices: null
      });
    }
    case 'question_asked': {
      // A question waits with the approvals (kind "question"), as in snapshot.py.
      const d = ev.data;
      const node = st.nodes.get(d.node_id)!;
      return waitOnHuman(st, node, {
        approval_id: d.question_id, node_id: node.id, prompt: d.question, requested_at: ts,
        kind: 'question', choices: d.choices ?? null
      });
    }
    case 'approval_received':
    case 'question_answered': {
      const node = st.nodes.get(ev.data.node_id)!;
      dropApproval(st, node);
      return node.id;
    }
    case 'error_occurred': {
      const d = ev.data;
      // The run's reason stays what it was (e.g. step_failed): the error is an extra fact.
      st.run.last_error = { code: d.code, message: d.message, timestamp: ts };
      return d.node_id ?? null;
    }
    default:
      return unknownEvent(ev);
  }
}

/** The node waits on a human (an approval, or a question: kind "question"), as in snapshot.py. */
function waitOnHuman(st: RunState, node: NodeInfo, pending: PendingApproval): string {
  node.approval = pending;
  st.run.pending_approvals = [...st.run.pending_approvals, pending];
  return node.id;
}

function applyWorkflow(run: RunInfo, d: WorkflowEvent['data'], ts: string): void {
  run.state = d.new_state;
  run.reason = d.reason ?? null;
  if (d.new_state === 'executing' && run.started_at === null) run.started_at = ts;
  if (SETTLED_WORKFLOW_STATES.has(d.new_state)) run.finished_at = ts;
  else if (SETTLED_WORKFLOW_STATES.has(d.old_state)) run.finished_at = null; // reopened
}

function applyNode(st: RunState, d: NodeTransition['data'], ts: string): string {
  const run = st.run;
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
  if ('error' in d) node.error = d.error ?? null;
  else if (fresh) node.error = null;
  if (newS === 'completed') {
    node.progress = 1.0;
    node.result_preview = 'result_preview' in d ? d.result_preview ?? null : null;
    node.result = 'result' in d ? d.result ?? null : null;
  } else if (newS === 'pending') {
    // To run again (a re-run, a resume): what it had is stale.
    node.result = null;
    node.result_preview = null;
    node.progress = null;
  }
  if (oldS === 'waiting_approval' && newS !== 'running' && newS !== 'paused') dropApproval(st, node);
  return node.id;
}

/**
 * An event type this client does not know (a newer server's): nothing to apply. The
 * `never` makes every known type need its case above.
 */
function unknownEvent(ev: never): string | null {
  const nodeId = (ev as { data?: { node_id?: unknown } }).data?.node_id;
  return typeof nodeId === 'string' ? nodeId : null;
}

function setCounts(run: RunInfo, counts: Record<string, number>): void {
  run.counts = counts;
  run.done = DONE.reduce((s, k) => s + (counts[k] ?? 0), 0);
}

function addNodes(st: RunState, specs: NodeSpec[], edges: Edge[]): void {
  for (const spec of specs) st.nodes.set(spec.id, newNode(spec, st.nodes.size));
  const counts = { ...st.run.counts };
  counts.pending = (counts.pending ?? 0) + specs.length;
  setCounts(st.run, counts);
  st.run.total = st.nodes.size;
  st.edges = [...st.edges, ...edges.map(e => ({ source: e.source, target: e.target }))];
  st.layout = lazyLayout(st.nodes);
}

/**
 * The layout of `nodes`, computed when first read (then kept): a plan is applied in the
 * task that received it, and at 20,000 nodes its generations are worth a task of their own
 * (the DAG view reads them in a frame of its own). Valid while no node is added: adding
 * nodes makes a new layout. Reads, `JSON.stringify` included, see a plain `{generations}`.
 */
function lazyLayout(nodes: Map<string, NodeInfo>): Layout {
  let gens: string[][] | null = null;
  return {
    get generations(): string[][] {
      return (gens ??= generations(nodes));
    }
  };
}

function dropApproval(st: RunState, node: NodeInfo): void {
  node.approval = null;
  st.run.pending_approvals = st.run.pending_approvals.filter(a => a.node_id !== node.id);
}

/** The wire snapshot of a state (what Python's RunState.snapshot() returns). */
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
