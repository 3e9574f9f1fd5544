import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyEvent, fromSnapshot, generations, RunState, toSnapshot } from '../src/state';
import { NODE_STATES } from '../src/states';

// Recorded by scripts/make_reducer_fixture.py: a run's whole log and Python's snapshot.
const fixture = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'run-log.json'), 'utf8'));

function emptyState(): RunState {
  const first = fixture.events[0];
  const meta = first.data.run;
  return fromSnapshot({
    type: 'snapshot', run_id: first.run_id, seq: 0, edges: [], nodes: [],
    layout: { generations: [] },
    run: {
      id: first.run_id, name: meta.name, description: meta.description, owner: meta.owner,
      state: 'draft', reason: null, created_at: first.timestamp, started_at: null,
      finished_at: null, updated_at: first.timestamp, cost_usd: 0, input_tokens: 0,
      output_tokens: 0,
      counts: Object.fromEntries(NODE_STATES.map(s => [s, 0])),
      total: 0, done: 0, pending_approvals: [], last_error: null
    }
  });
}

describe('the TypeScript reducer', () => {
  it('replays the Python-recorded log to exactly Python\'s snapshot', () => {
    const st = emptyState();
    for (const ev of fixture.events) applyEvent(st, ev);
    expect(JSON.parse(JSON.stringify(toSnapshot(st)))).toEqual({ type: 'snapshot', ...fixture.snapshot });
  });

  it('continues from a mid-run snapshot like from the start', () => {
    const st = emptyState();
    const half = Math.floor(fixture.events.length / 2);
    for (const ev of fixture.events.slice(0, half)) applyEvent(st, ev);
    const resumed = fromSnapshot(JSON.parse(JSON.stringify(toSnapshot(st))));
    for (const ev of fixture.events.slice(half)) applyEvent(resumed, ev);
    expect(JSON.parse(JSON.stringify(toSnapshot(resumed)))).toEqual({ type: 'snapshot', ...fixture.snapshot });
  });

  it('refuses an event that is not the next one', () => {
    const st = emptyState();
    expect(() => applyEvent(st, fixture.events[1])).toThrow(/seq 2 applied after 0/);
  });

  it('layers a diamond by topological generation in declaration order', () => {
    const node = (id: string, deps: string[], position: number) =>
      [id, { id, deps, position } as any] as const;
    const nodes = new Map([node('d', ['b', 'c'], 3), node('a', [], 0), node('c', ['a'], 2),
                           node('b', ['a'], 1)]);
    expect(generations(nodes)).toEqual([['a'], ['b', 'c'], ['d']]);
  });
});
