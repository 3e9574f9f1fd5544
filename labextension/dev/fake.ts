// A fake server for the harness: a small executor that follows the engine's rules
// (engine/states.py, engine/executor.py) and records events, and a Transport that
// feeds them through the real Subscriptions and RunFollower, with simulated disconnects.
import type { ConnectionInfo, Transport } from '../src/connection';
import type { RunFollower } from '../src/follower';
import { RunListener, Subscriptions, SubscriptionFrame } from '../src/subscriptions';
import type { Ack, EdgeInfo, NodeSpec, NodeState, SnapshotMsg, WorkflowState } from '../src/protocol';
import { applyEvent, Envelope, fromSnapshot, RunState, toSnapshot } from '../src/state';
import {
  ACTIVE_NODE_STATES, COMMAND_NODE_STATES, COMMAND_RUN_STATES, CommandAction, NODE_STATES
} from '../src/states';

class Cancelled extends Error {}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v));

function uuid(): string {
  return (crypto as any).randomUUID ? crypto.randomUUID() : Math.random().toString(16).slice(2);
}

export interface StepDef extends NodeSpec {
  fn: (ctx: StepCtx) => Promise<string>;
  retryDelay?: number;
}

export interface StepCtx {
  readonly id: string;
  readonly attempt: number;
  progress(p: number | null, message?: string): void;
  message(agent: string, text: string): void;
  thinking(agent: string, text: string): void;
  toolCall(agent: string, tool: string, args: Record<string, unknown>, result?: Record<string, unknown>): void;
  cost(model: string, input: number, output: number, usd: number, agent?: string): void;
  metric(name: string, value: number, unit?: string, step?: number): void;
  /** Output lines as engine/output.py batches them: [stream, text, level?]; a partial line. */
  output(lines: Array<[string, string, string?]>, partial?: string): void;
  file(path: string, mime: string, size: number, description?: string, updated?: boolean): void;
  checkpoint(): Promise<void>;
  sleep(ms: number): Promise<void>;
  approve(prompt: string): Promise<boolean>;
}

/** Records events into its own RunState (the truth a snapshot is taken from). */
export class FakeServer {
  readonly st: RunState;
  private queue: Envelope[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  onEvents: (events: Envelope[]) => void = () => undefined;
  emitted = 0;
  /** The run's log (history reads it, like the REST events endpoint). */
  readonly log: Envelope[] = [];

  constructor(readonly runId: string, name: string, description: string, readonly batchMs = 50) {
    const now = new Date().toISOString();
    const counts: Record<string, number> = {};
    for (const s of NODE_STATES) counts[s] = 0;
    const snap: SnapshotMsg = {
      type: 'snapshot', run_id: runId, seq: 0, edges: [], nodes: [], layout: { generations: [] },
      run: {
        id: runId, name, description, owner: 'scientist', state: 'draft', reason: null,
        created_at: now, started_at: null, finished_at: null, updated_at: now, cost_usd: 0,
        input_tokens: 0, output_tokens: 0, counts, total: 0, done: 0, pending_approvals: [],
        last_error: null
      }
    };
    this.st = fromSnapshot(snap);
  }

  /** The executor is gone: nothing more is recorded. */
  frozen = false;

  /**
   * Record an event. `data` is the caller's fresh object, kept as it is (every caller
   * builds it for this call): the copy that matters is the wire's, at the flush.
   */
  emit(type: string, data: Record<string, unknown>): void {
    if (this.frozen) return;
    const ev = {
      run_id: this.runId, seq: this.st.seq + 1, id: uuid(), event_type: type,
      timestamp: new Date().toISOString(), data
    } as unknown as Envelope;
    applyEvent(this.st, ev);
    this.log.push(ev);
    this.queue.push(ev);
    this.emitted++;
    // Batch like the server's hub does: many events per frame when many are ready.
    if (!this.timer) this.timer = setTimeout(() => this.flush(), this.batchMs);
  }

  /**
   * Send the batch as the server does: encoded here (the server's work), decoded in a
   * task of its own (the page's, as a WebSocket message is).
   */
  private flush(): void {
    this.timer = null;
    const events = this.queue;
    this.queue = [];
    if (!events.length) return;
    const frame = JSON.stringify(events);
    setTimeout(() => this.onEvents(JSON.parse(frame)), 0);
  }

  snapshot(): SnapshotMsg {
    return clone(toSnapshot(this.st));
  }
}

/** The executor's scheduling and command rules, in a page. */
export class FakeExecutor {
  private readonly steps = new Map<string, StepDef>();
  private readonly children = new Map<string, string[]>();
  private waiters: Array<() => void> = [];
  private answers = new Map<string, { approved: boolean; comment: string | null } | null>();
  private readonly ready: string[] = [];
  /** A step ended without completing since the last scan: pending steps may be blocked. */
  private blockedScan = false;

  /** `speed` divides every sleep and retry delay; the harness's `?rate=` pacer steers it. */
  constructor(readonly server: FakeServer, readonly width = 8, public speed = 1) {}

  private get st(): RunState {
    return this.server.st;
  }

  private status(id: string): NodeState {
    return this.st.nodes.get(id)!.status;
  }

  start(steps: StepDef[], meta: { name: string; description: string }): void {
    const edges: EdgeInfo[] = [];
    for (const s of steps) {
      this.steps.set(s.id, s);
      this.children.set(s.id, []);
      for (const d of s.deps ?? []) edges.push({ source: d, target: s.id });
    }
    for (const e of edges) this.children.get(e.source)!.push(e.target);
    const specs = steps.map(({ id, label, description, deps, retries }) =>
      ({ id, label, description: description ?? '', deps: deps ?? [], retries: retries ?? 0 }));
    this.server.emit('dag_created', { run: { ...meta, owner: 'scientist' }, nodes: specs, edges });
    // The run starts in a task of its own: a plan of 20,000 steps is one long enough.
    setTimeout(() => {
      this.setRun('planning', { reason: 'preparing the DAG' });
      this.setRun('executing');
      for (const s of steps) if (!(s.deps ?? []).length) this.ready.push(s.id);
      this.settle();
    }, 0);
  }

  // -- transitions (same event choice as engine/states.py) --------------------------------

  setRun(next: WorkflowState, extra: Record<string, unknown> = {}): void {
    const old = this.st.run.state;
    const type = next === 'executing' && (old === 'draft' || old === 'planning') ? 'workflow_started'
      : next === 'executing' && old === 'paused' ? 'workflow_resumed'
        : ({ paused: 'workflow_paused', completed: 'workflow_completed', failed: 'workflow_failed',
             cancelled: 'workflow_cancelled' } as Record<string, string>)[next] ?? 'workflow_state_changed';
    this.server.emit(type, { old_state: old, new_state: next, ...extra });
    this.wake();
  }

  setNode(id: string, next: NodeState, extra: Record<string, unknown> = {}): void {
    const node = this.st.nodes.get(id)!;
    const old = node.status;
    const fresh = next === 'running' && (old === 'pending' || old === 'retrying');
    const type = next === 'running' ? (fresh ? 'step_started' : 'dag_node_status_changed')
      : ({ completed: 'step_completed', failed: 'step_failed', retrying: 'step_retry_started' } as Record<string, string>)[next]
        ?? 'dag_node_status_changed';
    this.server.emit(type, { node_id: id, old_status: old, new_status: next,
                             attempt: node.attempt + (fresh ? 1 : 0), ...extra });
    if (next === 'completed') {
      for (const c of this.children.get(id)!) if (this.depsDone(c)) this.ready.push(c);
    }
    if (next === 'failed' || next === 'skipped' || next === 'cancelled') this.blockedScan = true;
    this.wake();
  }

  private depsDone(id: string): boolean {
    return (this.steps.get(id)!.deps ?? []).every(d => this.status(d) === 'completed');
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(): Promise<void> {
    return new Promise(r => this.waiters.push(r));
  }

  // -- scheduling --------------------------------------------------------------------------

  settle(): void {
    const counts = this.st.run.counts;
    const state = this.st.run.state;
    this.skipBlocked();
    if (state === 'cancelling') return this.settleCancelling();
    if (state === 'pausing') {
      if (!counts.running) this.setRun('paused');
      return;
    }
    if (state !== 'executing' && state !== 'waiting_approval') return;
    let free = this.width - [...ACTIVE_NODE_STATES].reduce((s, k) => s + (counts[k] ?? 0), 0);
    while (this.ready.length && free > 0) {
      const id = this.ready.shift()!;
      if (this.status(id) !== 'pending') continue;
      void this.execute(id);
      free--;
    }
    this.deriveRunState();
  }

  /** Pending steps below a step that did not complete are skipped (a scan of every step,
   * so only after such an end: at 20,000 steps a scan per event would be the page's main cost). */
  private skipBlocked(): void {
    if (!this.blockedScan) return;
    this.blockedScan = false;
    for (const [id, s] of this.steps) {
      if (this.status(id) !== 'pending') continue;
      if ((s.deps ?? []).some(d => ['failed', 'skipped', 'cancelled'].includes(this.status(d)))) {
        this.setNode(id, 'skipped', { reason: 'an upstream step did not complete' });
      }
    }
  }

  private settleCancelling(): void {
    for (const id of this.steps.keys()) {
      if (['pending', 'retrying', 'skipped'].includes(this.status(id))) {
        this.setNode(id, 'cancelled', { reason: 'run cancelled' });
      }
    }
    const c = this.st.run.counts;
    if (!c.running && !c.paused && !c.waiting_approval) this.setRun('cancelled');
  }

  private deriveRunState(): void {
    const c = this.st.run.counts;
    const state = this.st.run.state;
    if (c.running || c.retrying || c.paused) {
      if (state === 'waiting_approval') this.setRun('executing');
      return;
    }
    if (c.waiting_approval) {
      if (state === 'executing') this.setRun('waiting_approval', { reason: 'a step is waiting for approval' });
      return;
    }
    if (c.pending) return;
    const failed = [...this.st.nodes.values()].filter(n => n.status === 'failed').map(n => n.id);
    if (failed.length) this.setRun('failed', { reason: 'step_failed', failed_nodes: failed });
    else this.setRun('completed');
  }

  private async execute(id: string): Promise<void> {
    const step = this.steps.get(id)!;
    this.setNode(id, 'running');
    try {
      const result = await step.fn(this.ctx(id));
      if (this.status(id) !== 'running') this.setNode(id, 'running');
      this.setNode(id, 'completed', { result_preview: result });
    } catch (err) {
      if (err instanceof Cancelled) {
        if (ACTIVE_NODE_STATES.has(this.status(id))) this.setNode(id, 'cancelled', { reason: 'run cancelled' });
      } else {
        await this.attemptFailed(id, step, err as Error);
        return;
      }
    }
    this.settle();
  }

  private async attemptFailed(id: string, step: StepDef, err: Error): Promise<void> {
    const error = { type: err.name, message: err.message, traceback: fakeTraceback(id, err) };
    if (this.status(id) !== 'running') this.setNode(id, 'running');
    const attempt = this.st.nodes.get(id)!.attempt;
    const retries = step.retries ?? 0;
    if (attempt <= retries && this.st.run.state !== 'cancelling') {
      const delay = Math.min(30, (step.retryDelay ?? 1) * 2 ** (attempt - 1));
      this.setNode(id, 'retrying', { delay_s: delay, error,
                                     reason: `attempt ${attempt} of ${retries + 1} failed` });
      this.settle();
      await wait((delay * 1000) / this.speed);
      if (this.status(id) === 'retrying' && ['executing', 'waiting_approval'].includes(this.st.run.state)) {
        void this.execute(id);
      }
      return;
    }
    this.setNode(id, 'failed', { error });
    this.settle();
  }

  private ctx(id: string): StepCtx {
    const ex = this;
    const emit = (t: string, d: Record<string, unknown>) => this.server.emit(t, { node_id: id, ...d });
    return {
      id,
      get attempt() {
        return ex.st.nodes.get(id)!.attempt;
      },
      progress: (p, message) => emit('step_progress', { progress: p, message: message ?? null }),
      message: (agent, text) => emit('agent_message', { agent, message: text, role: 'assistant' }),
      thinking: (agent, text) => emit('agent_thinking', { agent, content: text }),
      toolCall: (agent, tool, args, result) => emit('agent_tool_call', { agent, tool, arguments: args, result }),
      cost: (model, input, output, usd, agent) =>
        emit('cost_update', { model, input_tokens: input, output_tokens: output, usd, ...(agent ? { agent } : {}) }),
      metric: (name, value, unit, step) =>
        emit('metric_update', { name, value, unit: unit ?? null, ...(step !== undefined ? { step } : {}) }),
      output: (lines, partial) => emit('step_output', {
        attempt: ex.st.nodes.get(id)!.attempt,
        lines: lines.map(([stream, text, level]) => ({ stream, text, ...(level ? { level } : {}) })),
        ...(partial !== undefined ? { partial: { stream: 'stderr', text: partial } } : {})
      }),
      file: (path, mime, size, description, updated) =>
        emit(updated ? 'file_updated' : 'file_created', { path, mime, size, description: description ?? null }),
      checkpoint: () => this.checkpoint(id),
      sleep: ms => this.sleep(id, ms),
      approve: prompt => this.approve(id, prompt)
    };
  }

  private async checkpoint(id: string): Promise<void> {
    for (;;) {
      const s = this.st.run.state;
      if (s === 'cancelling' || s === 'cancelled') throw new Cancelled();
      if (s === 'pausing' || s === 'paused') {
        if (this.status(id) === 'running') {
          this.setNode(id, 'paused', { reason: 'run paused' });
          this.settle();
        }
        await this.changed();
        continue;
      }
      if (this.status(id) === 'paused') this.setNode(id, 'running', { reason: 'run resumed' });
      return;
    }
  }

  /** Sleep in slices, with a checkpoint in each (pause and cancel act quickly). */
  private async sleep(id: string, ms: number): Promise<void> {
    let left = ms / this.speed;
    while (left > 0) {
      await this.checkpoint(id);
      const slice = Math.min(left, 150);
      await wait(slice);
      left -= slice;
    }
    await this.checkpoint(id);
  }

  private async approve(id: string, prompt: string): Promise<boolean> {
    await this.checkpoint(id);
    const approvalId = uuid().replace(/-/g, '');
    this.answers.set(approvalId, null);
    this.setNode(id, 'waiting_approval', { reason: 'approval requested' });
    this.server.emit('approval_requested', { node_id: id, approval_id: approvalId, prompt });
    this.settle();
    while (!this.answers.get(approvalId)) {
      if (['cancelling', 'cancelled'].includes(this.st.run.state)) throw new Cancelled();
      await this.changed();
    }
    const answer = this.answers.get(approvalId)!;
    this.answers.delete(approvalId);
    await this.checkpoint(id);
    return answer.approved;
  }

  // -- commands (engine/states.py: command_error) --------------------------------------------

  command(action: string, nodeId: string | null, payload: Record<string, unknown> | null): string | null {
    const s = this.st.run.state;
    const legal: readonly WorkflowState[] | undefined = COMMAND_RUN_STATES[action as CommandAction];
    if (!legal) return `unknown action '${action}'`;
    if (!legal.includes(s)) return `cannot ${action} a run that is ${s}`;
    if (action === 'pause') this.setRun('pausing');
    else if (action === 'resume') this.setRun('executing');
    else if (action === 'cancel') this.setRun('cancelling');
    else if (action === 'retry') {
      const err = this.retry(nodeId);
      if (err) return err;
    } else {
      const err = this.answer(nodeId, action === 'approve', (payload?.comment as string) ?? null);
      if (err) return err;
    }
    this.settle();
    return null;
  }

  private retry(nodeId: string | null): string | null {
    if (!nodeId || !this.st.nodes.has(nodeId)) return `run has no node '${nodeId}'`;
    const status = this.status(nodeId);
    if (!COMMAND_NODE_STATES.retry?.includes(status)) {
      return `cannot retry a node that is ${status}; only failed nodes can be retried`;
    }
    if (this.st.run.state === 'failed') this.setRun('executing', { reason: `retrying ${nodeId}` });
    this.setNode(nodeId, 'retrying', { delay_s: 0, reason: 'retry requested' });
    this.reopenSkipped(nodeId);
    setTimeout(() => {
      if (this.status(nodeId) === 'retrying') void this.execute(nodeId);
    }, 200 / this.speed);
    return null;
  }

  /** What the failure skipped goes back to pending, upstream first. */
  private reopenSkipped(from: string): void {
    const queue = [...this.children.get(from)!];
    const seen = new Set<string>();
    while (queue.length) {
      const id = queue.shift()!;
      if (seen.has(id)) continue;
      seen.add(id);
      const deps = this.steps.get(id)!.deps ?? [];
      if (this.status(id) === 'skipped' && deps.every(d => !['failed', 'skipped', 'cancelled'].includes(this.status(d)))) {
        this.setNode(id, 'pending', { reason: `${from} is retried` });
      }
      queue.push(...this.children.get(id)!);
    }
  }

  private answer(nodeId: string | null, approved: boolean, comment: string | null): string | null {
    const pending = this.st.run.pending_approvals;
    const a = nodeId ? pending.find(p => p.node_id === nodeId) : pending.length === 1 ? pending[0] : undefined;
    if (!a) return nodeId ? `node '${nodeId}' is not waiting for an approval` : 'no approval is pending';
    this.server.emit('approval_received', { node_id: a.node_id, approval_id: a.approval_id, approved,
                                            comment, command_id: uuid() });
    const paused = ['pausing', 'paused'].includes(this.st.run.state);
    this.setNode(a.node_id, paused ? 'paused' : 'running', { reason: approved ? 'approved' : 'rejected' });
    if (this.st.run.state === 'waiting_approval') this.setRun('executing');
    this.answers.set(a.approval_id, { approved, comment });
    this.wake();
    return null;
  }

  /**
   * The executor's process died: what the store records when its lease expires
   * (engine/store/base.py, lost_run_events), then silence.
   */
  loseExecutor(): void {
    const reason = 'executor_lost';
    const message = 'the process that ran this workflow is gone (executor_lost); step code lives in that process, so the run cannot continue';
    if (this.st.run.state === 'failed') {
      this.server.emit('error_occurred', { code: reason, message });
    } else {
      const nodes = [...this.st.nodes.values()].sort((a, b) => a.position - b.position);
      for (const n of nodes) {
        const active = ['running', 'paused', 'waiting_approval', 'retrying'].includes(n.status);
        if (active) this.setNode(n.id, 'failed', { reason, error: { type: reason, message } });
        else if (n.status === 'pending') this.setNode(n.id, 'skipped', { reason });
      }
      const failed = [...this.st.nodes.values()].filter(n => n.status === 'failed').map(n => n.id);
      this.setRun('failed', { reason, failed_nodes: failed });
    }
    this.server.frozen = true;
  }
}

export function wait(ms: number): Promise<void> {
  return new Promise(r => setTimeout(r, ms));
}

function fakeTraceback(id: string, err: Error): string {
  return [
    'Traceback (most recent call last):',
    '  File "/home/user/cmb/engine/executor.py", line 287, in _execute',
    '    result = step.fn(**kwargs)',
    `  File "/home/user/cmb/pipeline.py", line 64, in ${id}`,
    '    results = camb.get_results(pars)',
    '  File "/opt/conda/lib/python3.11/site-packages/camb/camb.py", line 38, in get_results',
    '    res.calc_power_spectra(params)',
    `${err.name}: ${err.message}`
  ].join('\n');
}

/** A Transport over the fake server, through the real Subscriptions and RunFollower. */
export class FakeTransport implements Transport {
  private conn: ConnectionInfo = { state: 'live' };
  private retryAt = 0;
  private readonly infoListeners = new Set<(i: ConnectionInfo) => void>();
  private readonly subs = new Subscriptions({ send: frame => this.answer(frame), unsubscribe: false });
  private backlog: Envelope[] = [];
  executor: FakeExecutor | null = null;

  constructor(readonly kind: 'socket' | 'comm', readonly server: FakeServer, readonly latencyMs = 250) {
    server.onEvents = events => this.deliver(events);
  }

  info(): ConnectionInfo {
    if (this.conn.state === 'reconnecting') return { ...this.conn, retryInMs: Math.max(0, this.retryAt - Date.now()) };
    return { ...this.conn };
  }

  onInfo(cb: (info: ConnectionInfo) => void): () => void {
    this.infoListeners.add(cb);
    return () => this.infoListeners.delete(cb);
  }

  private setConn(info: ConnectionInfo): void {
    this.conn = info;
    for (const cb of this.infoListeners) cb(this.info());
  }

  follow(runId: string, listener: RunListener): () => void {
    return this.subs.follow(runId, listener);
  }

  /** The follower of a followed run: what benchmarks/widget_render.py probes. */
  follower(runId: string): RunFollower | undefined {
    return this.subs.follower(runId);
  }

  /** The fake server's side: a subscription gets a snapshot, a moment later (the view shows "connecting" meanwhile). */
  private answer(frame: SubscriptionFrame): void {
    if (frame.type === 'subscribe' || frame.type === 'request_state') {
      setTimeout(() => this.subs.receive(this.server.snapshot()), 120);
    }
  }

  private deliver(events: Envelope[]): void {
    if (this.conn.state !== 'live') {
      this.backlog.push(...events);
      return;
    }
    for (const runId of this.subs.runIds()) this.subs.receive({ type: 'events', run_id: runId, events });
  }

  /** Drop the connection for `ms`; come back replaying the backlog, or with a snapshot. */
  disconnect(ms: number, resume: 'replay' | 'snapshot', state: 'reconnecting' | 'offline' = 'reconnecting'): void {
    this.retryAt = Date.now() + ms;
    this.setConn({ state, lastError: 'closed (1006)' });
    setTimeout(() => {
      this.setConn({ state: 'live' });
      const backlog = this.backlog;
      this.backlog = [];
      for (const runId of this.subs.runIds()) {
        this.subs.receive(resume === 'snapshot' ? this.server.snapshot()
          : { type: 'events', run_id: runId, events: backlog });
      }
    }, ms);
  }

  history(_runId: string, afterSeq: number, limit: number): Promise<Envelope[]> {
    return new Promise(resolve => setTimeout(() => resolve(clone(this.server.log.slice(afterSeq, afterSeq + limit))), 60));
  }

  command(_runId: string, action: string, nodeId?: string | null,
          payload?: Record<string, unknown> | null): Promise<Ack> {
    const id = uuid();
    return new Promise(resolve => setTimeout(() => {
      if (this.server.st.run.reason === 'executor_lost') {
        resolve({ type: 'ack', command_id: id, ok: false, code: 'executor_lost',
                  error: 'the process running this workflow is gone (executor_lost); start it again' });
        return;
      }
      const err = this.executor ? this.executor.command(action, nodeId ?? null, payload ?? null) : 'no executor';
      resolve(err ? { type: 'ack', command_id: id, ok: false, error: err, code: 'illegal' }
                  : { type: 'ack', command_id: id, ok: true, state: this.server.st.run.state });
    }, this.latencyMs));
  }
}
