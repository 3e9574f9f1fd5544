// The runs scripts/make_reducer_fixture.py recorded with the Python engine: each run's
// whole log and Python's snapshot after it. Together they contain every event type.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotMsg } from '../src/protocol';
import type { Envelope } from '../src/state';
import { NODE_STATES } from '../src/states';

export interface RecordedRun {
  title: string;
  events: Envelope[];
  /** Python's snapshot after the last event (the wire message without its type). */
  snapshot: Omit<SnapshotMsg, 'type'>;
}

export const RECORDED: RecordedRun[] =
  JSON.parse(readFileSync(join(__dirname, 'fixtures', 'run-log.json'), 'utf8')).runs;

/** The longest run: a plan extended at run time, retries, a pause, an approval. */
export const MAIN = RECORDED[0];

/** A run's snapshot before its first event (what Python's new_run_doc starts from). */
export function beforeFirstEvent(rec: RecordedRun): SnapshotMsg {
  const first = rec.events[0];
  if (first.event_type !== 'dag_created') throw new Error(`${rec.title}: the log starts with ${first.event_type}`);
  const meta = first.data.run;
  return {
    type: 'snapshot', run_id: first.run_id, seq: 0, edges: [], nodes: [],
    layout: { generations: [] },
    run: {
      id: first.run_id, name: meta.name, description: meta.description ?? '', owner: meta.owner ?? '',
      state: 'draft', reason: null, created_at: first.timestamp, started_at: null,
      finished_at: null, updated_at: first.timestamp, cost_usd: 0, input_tokens: 0,
      output_tokens: 0, counts: Object.fromEntries(NODE_STATES.map(s => [s, 0])),
      total: 0, done: 0, pending_approvals: [], last_error: null, reopened: null
    }
  };
}
