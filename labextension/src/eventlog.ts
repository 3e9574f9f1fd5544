// The activity log: which events a human wants to read, in what words, and the
// bookkeeping that shows each seq at most once, across snapshots, with a visible
// marker where events were skipped (the view never pretends it saw everything).
import type { ErrorInfo } from './protocol';
import { Envelope, EventOf, isWorkflowEvent, WorkflowEvent } from './state';
import { baseName } from './status';

export type Tone = 'info' | 'ok' | 'warn' | 'error' | 'muted' | 'state';

export interface LogEntry {
  kind: 'event';
  seq: number;
  timestamp: string;
  type: string;
  nodeId: string | null;
  agent: string | null;
  text: string;
  /** Longer text behind a toggle: thinking, tool arguments, a traceback, a long message. */
  body: string | null;
  /** Whether the summary line alone stands for the event (thinking is collapsed). */
  bodyLabel: string;
  tone: Tone;
  file: { path: string; mime: string | null } | null;
}

/** Where events were not seen one by one (before the view opened, or over a reconnect). */
export interface GapEntry {
  kind: 'gap';
  key: string;
  from: number;
  to: number;
  initial: boolean;
}

export type LogRow = LogEntry | GapEntry;

const LONG_MESSAGE = 360;

function entry(ev: Envelope, nodeId: string | null, patch: Partial<LogEntry>): LogEntry {
  return {
    kind: 'event', seq: ev.seq, timestamp: ev.timestamp, type: ev.event_type,
    nodeId, agent: null, text: '', body: null, bodyLabel: 'more', tone: 'info', file: null, ...patch
  };
}

function errorLine(e: ErrorInfo | null | undefined): string {
  return e ? `${e.type}: ${e.message}` : '';
}

function words(state: string): string {
  return state.replace(/_/g, ' ');
}

/** `tool(name=value, ...)` on one short line: multi-line values show their first line. */
export function callSummary(tool: string, args: Record<string, unknown>, max = 90): string {
  const value = (v: unknown): string => {
    if (typeof v === 'string') {
      const first = v.split('\n')[0];
      return JSON.stringify(first.length < v.length ? first + ' …' : v);
    }
    try {
      return JSON.stringify(v) ?? String(v);
    } catch {
      return String(v);
    }
  };
  const inner = Object.entries(args).map(([k, v]) => `${k}=${value(v)}`).join(', ');
  return `${tool}(${inner.length > max ? inner.slice(0, max - 1) + '…' : inner})`;
}

function describeWorkflow(ev: WorkflowEvent): LogEntry {
  const d = ev.data;
  const tone: Tone = d.new_state === 'completed' ? 'ok' : d.new_state === 'failed' ? 'error'
    : d.new_state === 'cancelled' ? 'muted' : 'state';
  const reason = d.reason ? ` (${d.reason})` : '';
  const failedNodes = 'failed_nodes' in d ? d.failed_nodes : undefined;
  const failed = failedNodes?.length ? ` — failed: ${failedNodes.join(', ')}` : '';
  return entry(ev, null, { tone, text: `run ${words(d.old_state)} → ${words(d.new_state)}${reason}${failed}` });
}

function describeMessage(ev: EventOf<'agent_message'>): LogEntry {
  const d = ev.data;
  const msg = String(d.message ?? '');
  const who = { agent: d.agent ?? null };
  if (msg.length <= LONG_MESSAGE) return entry(ev, d.node_id, { ...who, text: msg });
  return entry(ev, d.node_id, { ...who, text: msg.slice(0, LONG_MESSAGE).trimEnd() + '…', body: msg,
                                bodyLabel: 'full message' });
}

function describeToolCall(ev: EventOf<'agent_tool_call'>): LogEntry {
  const d = ev.data;
  const failed = typeof d.error === 'string' ? d.error : null;
  const parts = [`arguments: ${JSON.stringify(d.arguments ?? {}, null, 2)}`];
  if (failed !== null) parts.push(`error: ${failed}`);
  else if (d.result !== undefined) parts.push(`result: ${JSON.stringify(d.result, null, 2)}`);
  return entry(ev, d.node_id, {
    agent: d.agent ?? null,
    tone: failed !== null ? 'error' : 'info',
    text: `called ${callSummary(String(d.tool), d.arguments ?? {})}${failed !== null ? ` — failed: ${failed.split('\n')[0]}` : ''}`,
    body: parts.join('\n'), bodyLabel: 'arguments and result'
  });
}

function describeRetry(ev: EventOf<'step_retry_started'>): LogEntry {
  const d = ev.data;
  const wait = d.delay_s ? ` in ${d.delay_s < 10 ? d.delay_s.toFixed(1) : Math.round(d.delay_s)} s` : '';
  const why = d.reason ? ` — ${d.reason}` : '';
  const err = d.error ? `: ${errorLine(d.error)}` : '';
  return entry(ev, d.node_id, { tone: 'warn', text: `will retry${wait}${why}${err}`,
                                body: d.error?.traceback ?? null, bodyLabel: 'traceback' });
}

/**
 * The log entry of an event, or null for the events the log does not list: the status
 * churn the graph and the header show.
 */
export function describeEvent(ev: Envelope): LogEntry | null {
  if (isWorkflowEvent(ev)) return describeWorkflow(ev);
  switch (ev.event_type) {
    case 'agent_message':
      return describeMessage(ev);
    case 'agent_thinking':
      return entry(ev, ev.data.node_id, { agent: ev.data.agent ?? null, text: 'thinking…',
                                          body: String(ev.data.content ?? ''), bodyLabel: 'thoughts',
                                          tone: 'muted' });
    case 'agent_tool_call':
      return describeToolCall(ev);
    case 'file_created':
    case 'file_updated': {
      const d = ev.data;
      const verb = ev.event_type === 'file_created' ? 'wrote' : 'updated';
      const desc = d.description ? ` — ${d.description}` : '';
      return entry(ev, d.node_id, { text: `${verb} ${baseName(d.path)}${desc}`,
                                    file: { path: d.path, mime: d.mime ?? null } });
    }
    case 'step_failed': {
      const d = ev.data;
      return entry(ev, d.node_id, { tone: 'error', text: `failed (attempt ${d.attempt}): ${errorLine(d.error)}`,
                                    body: d.error?.traceback ?? null, bodyLabel: 'traceback' });
    }
    case 'step_retry_started':
      return describeRetry(ev);
    case 'approval_requested':
      return entry(ev, ev.data.node_id, { tone: 'warn', text: `asks for approval: ${ev.data.prompt}` });
    case 'approval_received': {
      const d = ev.data;
      const comment = d.comment ? `: “${d.comment}”` : '';
      return entry(ev, d.node_id, { tone: d.approved ? 'ok' : 'error',
                                    text: `${d.approved ? 'approved' : 'rejected'}${comment}` });
    }
    case 'question_asked': {
      const d = ev.data;
      const choices = d.choices?.length ? ` (${d.choices.join(' / ')})` : '';
      return entry(ev, d.node_id, { tone: 'warn', text: `asks: ${d.question}${choices}` });
    }
    case 'question_answered':
      return entry(ev, ev.data.node_id, { tone: 'ok', text: `answered: “${ev.data.answer}”` });
    case 'error_occurred':
      return entry(ev, ev.data.node_id ?? null, { tone: 'error', text: `${ev.data.code}: ${ev.data.message}` });
    case 'run_reopened': {
      const again = Object.keys(ev.data.rerun ?? {});
      const what = again.length ? `; running again: ${again.join(', ')}` : '';
      return entry(ev, null, { tone: 'ok', text: `resumed by process ${ev.data.pid} on ${ev.data.host}${what}` });
    }
    case 'step_started':
    case 'step_progress':
    case 'step_completed':
    case 'dag_created':
    case 'dag_updated':
    case 'dag_node_status_changed':
    case 'cost_update':
    case 'metric_update':
    case 'step_output': // the console shows output
      return null;
    default:
      return notListed(ev);
  }
}

/** An event type this client does not know (a newer server's); `never`: each known one has a case. */
function notListed(_ev: never): null {
  return null;
}

export interface LogChange {
  added: LogRow[];
  removed: LogRow[];
}

/**
 * The last `cap` rows, by seq. Each seq appears at most once: events at or below the
 * last seen seq are ignored, and a snapshot behind the log drops the rows after it
 * (they come again as events); a snapshot ahead of it leaves a gap marker.
 */
export class LogBook {
  rows: LogRow[] = [];
  /** The seq the log is complete up to; -1 before the first snapshot. */
  lastSeq = -1;

  constructor(readonly cap = 50) {}

  onSnapshot(seq: number): LogChange {
    const change: LogChange = { added: [], removed: [] };
    if (this.lastSeq < 0) {
      if (seq > 0) this.push({ kind: 'gap', key: `gap-1-${seq}`, from: 1, to: seq, initial: true }, change);
    } else if (seq < this.lastSeq) {
      const keep = this.rows.filter(r => rowEnd(r) <= seq);
      change.removed.push(...this.rows.filter(r => rowEnd(r) > seq));
      this.rows = keep;
    } else if (seq > this.lastSeq) {
      const from = this.lastSeq + 1;
      this.push({ kind: 'gap', key: `gap-${from}-${seq}`, from, to: seq, initial: false }, change);
    }
    this.lastSeq = seq;
    this.trim(change);
    return change;
  }

  onEvents(events: Envelope[]): LogChange {
    const change: LogChange = { added: [], removed: [] };
    for (const ev of events) {
      if (ev.seq <= this.lastSeq) continue; // already listed (or summarised by a snapshot)
      this.lastSeq = ev.seq;
      const e = describeEvent(ev);
      if (e) this.push(e, change);
    }
    this.trim(change);
    return change;
  }

  /**
   * Fill the gap left by events that happened before the view opened with those
   * events (fetched from the log), oldest first. Rows stay unique by seq.
   */
  backfill(events: Envelope[]): void {
    const i = this.rows.findIndex(r => r.kind === 'gap' && r.initial);
    if (i < 0) return;
    const gap = this.rows[i] as GapEntry;
    const inside = events.filter(e => e.seq >= gap.from && e.seq <= gap.to).sort((a, b) => a.seq - b.seq);
    if (!inside.length) return;
    const rows: LogRow[] = [];
    if (inside[0].seq > gap.from) {
      const to = inside[0].seq - 1;
      rows.push({ kind: 'gap', key: `gap-${gap.from}-${to}`, from: gap.from, to, initial: true });
    }
    for (const ev of inside) {
      const e = describeEvent(ev);
      if (e) rows.push(e);
    }
    this.rows.splice(i, 1, ...rows);
    this.trim({ added: [], removed: [] });
  }

  private push(row: LogRow, change: LogChange): void {
    this.rows.push(row);
    change.added.push(row);
  }

  private trim(change: LogChange): void {
    const extra = this.rows.length - this.cap;
    if (extra <= 0) return;
    const gone = this.rows.splice(0, extra);
    // A row added and dropped in the same change never reaches the DOM.
    const added = new Set(change.added);
    for (const r of gone) {
      if (added.has(r)) change.added.splice(change.added.indexOf(r), 1);
      else change.removed.push(r);
    }
  }
}

function rowEnd(r: LogRow): number {
  return r.kind === 'event' ? r.seq : r.to;
}
