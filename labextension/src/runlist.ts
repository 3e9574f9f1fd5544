// Pure helpers for the runs list: ordering, filtering, and what is worth a notification.
import type { RunInfo } from './protocol';

export interface RunFilter {
  state: string; // '' = any
  query: string;
}

/** Newest first, filtered by state and by a case-insensitive name/id search. */
export function visibleRuns(runs: Iterable<RunInfo>, filter: RunFilter): RunInfo[] {
  const q = filter.query.trim().toLowerCase();
  return [...runs]
    .filter(r => !filter.state || r.state === filter.state)
    .filter(r => !q || r.name.toLowerCase().includes(q) || r.id.toLowerCase().startsWith(q))
    .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
}

export type Alert =
  | { kind: 'approval'; run: RunInfo; prompt: string; approvalId: string; question: boolean }
  | { kind: 'failed'; run: RunInfo };

/**
 * Alerts a change of run document deserves, given what was known before: a new
 * pending approval or question, or the run becoming failed. Nothing for the first sighting of
 * a run that was already in that condition when the page loaded (prev undefined and
 * `initial` true).
 */
export function alertsFor(prev: RunInfo | undefined, next: RunInfo, initial: boolean): Alert[] {
  if (initial) return [];
  const out: Alert[] = [];
  const known = new Set((prev?.pending_approvals ?? []).map(a => a.approval_id));
  for (const a of next.pending_approvals) {
    if (!known.has(a.approval_id)) {
      out.push({ kind: 'approval', run: next, prompt: a.prompt, approvalId: a.approval_id,
                 question: a.kind === 'question' });
    }
  }
  if (next.state === 'failed' && prev?.state !== 'failed') out.push({ kind: 'failed', run: next });
  return out;
}

export function formatDuration(ms: number): string {
  if (!(ms >= 0)) return '';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, '0')}m`;
}

export function runDuration(r: RunInfo, now: number): number {
  if (!r.started_at) return NaN;
  const end = r.finished_at ? Date.parse(r.finished_at) : now;
  return end - Date.parse(r.started_at);
}

export function formatCost(usd: number): string {
  return usd >= 1 ? `$${usd.toFixed(2)}` : usd > 0 ? `$${usd.toFixed(4)}` : '$0';
}
