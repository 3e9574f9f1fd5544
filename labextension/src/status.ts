// Statuses, their glyphs and words, which run commands are legal when, and small
// formatters: pure, shared by the DAG view and the run view (and unit-tested).
import type { MetricStats, NodeInfo, NodeState, WorkflowState } from './protocol';
import { CommandAction, COMMAND_RUN_STATES, NODE_STATES, SETTLED_WORKFLOW_STATES } from './states';

/** Words a human reads (the data-status attribute keeps the machine name). */
export const STATUS_LABEL: Record<NodeState, string> = {
  pending: 'pending',
  running: 'running',
  paused: 'paused',
  waiting_approval: 'needs approval',
  retrying: 'retrying',
  completed: 'completed',
  failed: 'failed',
  skipped: 'skipped',
  cancelled: 'cancelled'
};

export interface Glyph {
  d: string;
  /** Filled shapes; the others are drawn as strokes. */
  fill: boolean;
}

/**
 * One shape per status on a 12×12 grid, so a status reads without colour
 * (colour-blind users, greyscale prints). Each path starts with one absolute moveto
 * and uses relative commands after it, so `glyphAt` can move it by rewriting that
 * moveto alone (no per-node transform: thousands of them slow the compositor).
 */
export const GLYPHS: Record<NodeState, Glyph> = {
  pending: { d: 'M6 2.25a3.75 3.75 0 1 1 0 7.5a3.75 3.75 0 1 1 0-7.5z', fill: false },
  running: { d: 'M3.75 2.2l6.25 3.8-6.25 3.8z', fill: true },
  paused: { d: 'M3 2.5h2.25v7h-2.25zm3.75 0h2.25v7h-2.25z', fill: true },
  waiting_approval: {
    d: 'M6 1.6a2.1 2.1 0 1 1 0 4.2a2.1 2.1 0 1 1 0-4.2zm-3.8 9c.3-2.1 1.8-3.3 3.8-3.3s3.5 1.2 3.8 3.3',
    fill: false
  },
  retrying: { d: 'M9.6 6.2a3.6 3.6 0 1 1-1.1-2.8m.8-1.8v2.3h-2.3', fill: false },
  completed: { d: 'M2.4 6.3l2.5 2.5 4.7-5.4', fill: false },
  failed: { d: 'M3 3l6 6m0-6l-6 6', fill: false },
  skipped: { d: 'M1.8 6h6.4m-2.3-2.5l2.5 2.5-2.5 2.5m4.3-5.7v6.4', fill: false },
  cancelled: { d: 'M6 1.9a4.1 4.1 0 1 1 0 8.2a4.1 4.1 0 1 1 0-8.2zm-2.9 7l5.8-5.8', fill: false }
};

/** A glyph's path moved by (dx, dy): only its leading absolute moveto changes. */
export function glyphAt(status: NodeState, dx: number, dy: number): string {
  const d = GLYPHS[status].d;
  const m = /^M(-?[\d.]+)[ ,](-?[\d.]+)/.exec(d)!;
  const r = (v: number) => Math.round(v * 100) / 100;
  return `M${r(Number(m[1]) + dx)} ${r(Number(m[2]) + dy)}${d.slice(m[0].length)}`;
}

/** The node status whose look a workflow state borrows (badge colour and glyph). */
export const RUN_STATE_LOOK: Record<WorkflowState, NodeState> = {
  draft: 'pending',
  planning: 'running',
  executing: 'running',
  pausing: 'paused',
  paused: 'paused',
  waiting_approval: 'waiting_approval',
  cancelling: 'cancelled',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'cancelled'
};

/** The commands that act on the whole run: the run view's and the sidebar's buttons. */
export type RunAction = 'pause' | 'resume' | 'cancel';
export const RUN_ACTIONS: RunAction[] = ['pause', 'resume', 'cancel'];

/** Whether the engine accepts `action` for a run in `state` (the generated command table). */
export function isLegal(action: CommandAction, state: WorkflowState | null | undefined): boolean {
  return !!state && COMMAND_RUN_STATES[action].includes(state);
}

/** Settled runs stop the elapsed clock (a failed run may still be reopened by a retry). */
export function isSettled(state: WorkflowState): boolean {
  return SETTLED_WORKFLOW_STATES.has(state);
}

/** Attention first: the status a group of nodes (a collapsed generation) is shown with. */
const PRIORITY: NodeState[] = [
  'failed', 'waiting_approval', 'retrying', 'running', 'paused', 'pending', 'cancelled',
  'skipped', 'completed'
];

export function dominantStatus(counts: Partial<Record<NodeState, number>>): NodeState {
  return PRIORITY.find(s => (counts[s] ?? 0) > 0) ?? 'pending';
}

/** "12 completed · 3 running" for the statuses present, in legend order. */
export function countsText(counts: Partial<Record<NodeState, number>>): string {
  return NODE_STATES.filter(s => (counts[s] ?? 0) > 0)
    .map(s => `${counts[s]} ${STATUS_LABEL[s]}`).join(' · ');
}

/** A label cut to at most `max` characters, with an ellipsis when cut. */
export function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  return text.slice(0, Math.max(1, max - 1)).trimEnd() + '…';
}

/** Attempt ``attempt`` of a node allowed ``retries`` retries. The count goes on across
 * re-runs (each starts the node afresh, with the same allowance), so past the allowance it
 * says so instead of "2 of 1". */
export function attemptText(attempt: number, retries: number): string {
  const allowed = retries + 1;
  return attempt <= allowed ? `${attempt} of ${allowed}`
    : `${attempt}, counting re-runs (${allowed} allowed each time)`;
}

/** The second line of a node: what it is doing, or how it ended. */
export function nodeSubtitle(n: NodeInfo): string {
  const pct = n.progress !== null ? `${Math.round(n.progress * 100)}%` : '';
  switch (n.status) {
    case 'running':
      if (n.progress_message) return pct ? `${pct} · ${n.progress_message}` : n.progress_message;
      return pct ? `running · ${pct}` : 'running';
    case 'retrying':
      return `retrying · attempt ${attemptText(n.attempt + 1, n.retries)}`;
    case 'failed':
      return n.error ? `failed · ${n.error.type}` : 'failed';
    case 'completed': {
      const ms = durationMs(n.started_at, n.finished_at, Date.now());
      return Number.isFinite(ms) ? `completed · ${formatSeconds(ms)}` : 'completed';
    }
    case 'paused':
      return pct ? `paused · ${pct}` : 'paused';
    default:
      return STATUS_LABEL[n.status];
  }
}

export function durationMs(start: string | null, end: string | null, now: number): number {
  if (!start) return NaN;
  const t1 = end ? Date.parse(end) : now;
  return t1 - Date.parse(start);
}

/** Short durations for nodes: 0.4s, 12s, 3m 05s, 1h 02m. */
export function formatSeconds(ms: number): string {
  if (!(ms >= 0)) return '';
  if (ms < 10000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

/** 950, 12.3k, 4.56M. */
export function formatCount(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e4 ? 2 : 1).replace(/\.?0+$/, '')}k`;
  return `${(n / 1e6).toFixed(2).replace(/\.?0+$/, '')}M`;
}

/** Local wall-clock time of an ISO timestamp: 14:02:11. */
export function clockTime(iso: string | null | undefined): string {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d.getTime())) return '';
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

/** What the reader is told while the server's run store does not answer. */
export function storeDownText(since: string, what: 'view' | 'list' = 'view'): string {
  return `Run store not answering since ${clockTime(since)} — the ${what} catches up by itself`;
}

/** What a view of a run that the server's store does not have (or hides) says. */
export function unknownRunText(runId: string): string {
  return `No run ${runId} in the run store this Jupyter server reads. It may have been started `
    + 'with another store (CMBAGENT_DB_URL), belong to another user, or have been deleted; a notebook '
    + 'saved elsewhere shows the runs of the machine it was saved on.';
}

/** Metric values: few significant digits, exponent for very large or small ones. */
export function formatMetric(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}

/** A metric's hover text: its last value, then min and max over every value it reported. */
export function metricSummary(last: number, s: MetricStats | undefined): string {
  const unit = s?.unit ? ` ${s.unit}` : '';
  const head = `last ${formatMetric(last)}${unit}${s?.step !== null && s?.step !== undefined ? ` (step ${s.step})` : ''}`;
  if (!s || s.count < 2) return `${head} · the only value`;
  return `${head} · min ${formatMetric(s.min)} · max ${formatMetric(s.max)} over ${s.count} values`;
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 ** 2).toFixed(1)} MB`;
}

export function baseName(path: string): string {
  const i = path.lastIndexOf('/');
  return i >= 0 ? path.slice(i + 1) : path;
}

/** The finished part of a run, by outcome, in bar order (failed is final but not "done"). */
export const OUTCOMES: NodeState[] = ['completed', 'skipped', 'cancelled', 'failed'];

/**
 * "7 / 8 done", plus what did not complete when anything did not: a run whose steps
 * were skipped must not read as nearly finished.
 */
export function progressText(counts: Record<string, number>, done: number, total: number): string {
  const notes = ['failed', 'skipped', 'cancelled']
    .filter(s => (counts[s] ?? 0) > 0)
    .map(s => `${counts[s]} ${s}`);
  return `${done} / ${total} done${notes.length ? ` · ${notes.join(', ')}` : ''}`;
}
