import { describe, expect, it } from 'vitest';
import { RunFollower } from '../src/follower';
import { applyEvent, fromSnapshot, toSnapshot } from '../src/state';
import { beforeFirstEvent, MAIN } from './recorded';

const events = MAIN.events;
const runId = events[0].run_id;

/** The snapshot as of seq n, built from the recorded run. */
function snapshotAt(n: number) {
  const st = fromSnapshot(beforeFirstEvent(MAIN));
  for (const ev of events.slice(0, n)) applyEvent(st, ev);
  return toSnapshot(st);
}

const batch = (from: number, to: number) => ({ type: 'events' as const, run_id: runId,
  events: events.slice(from - 1, to) });

describe('RunFollower (the client rules)', () => {
  it('subscribes without a cursor first, then resumes after the last applied seq', () => {
    const f = new RunFollower(runId);
    expect(f.subscribeFrame()).toEqual({ type: 'subscribe', run_id: runId });
    f.onSnapshot(snapshotAt(5));
    f.onEvents(batch(6, 9));
    expect(f.subscribeFrame()).toEqual({ type: 'subscribe', run_id: runId, after_seq: 9 });
  });

  it('ignores events until the first snapshot', () => {
    const f = new RunFollower(runId);
    expect(f.onEvents(batch(1, 3)).events).toEqual([]);
    expect(f.stats.applied).toBe(0);
  });

  it('applies seq = last + 1 and drops duplicates', () => {
    const f = new RunFollower(runId);
    f.onSnapshot(snapshotAt(4));
    const u = f.onEvents(batch(3, 8)); // 3 and 4 are duplicates
    expect(u.events.map(e => e.seq)).toEqual([5, 6, 7, 8]);
    expect(f.stats.duplicates).toBe(2);
    expect(f.onEvents(batch(8, 8)).events).toEqual([]);
    expect(f.stats.duplicates).toBe(3);
    expect(f.last).toBe(8);
  });

  it('asks for the state on a gap and ignores events until the snapshot', () => {
    const f = new RunFollower(runId);
    f.onSnapshot(snapshotAt(4));
    const u = f.onEvents({ ...batch(5, 5), events: [events[4], events[6]] }); // 5, then 7
    expect(u.events.map(e => e.seq)).toEqual([5]);
    expect(u.requestState).toBe(true);
    expect(f.stats.gaps).toBe(1);
    expect(f.onEvents(batch(8, 9)).events).toEqual([]);
    const s = f.onSnapshot(snapshotAt(9));
    expect(s.snapshot).toBe(true);
    expect(f.onEvents(batch(10, 10)).events.map(e => e.seq)).toEqual([10]);
  });

  it('reaches the same state as the server, whatever the duplicates', () => {
    const f = new RunFollower(runId);
    f.onSnapshot(snapshotAt(0));
    for (let i = 1; i <= events.length; i += 3) {
      f.onEvents(batch(Math.max(1, i - 2), Math.min(events.length, i + 3)));
    }
    expect(JSON.parse(JSON.stringify(toSnapshot(f.state!)))).toEqual({ type: 'snapshot', ...MAIN.snapshot });
  });

  it('a reset waits for the snapshot that follows', () => {
    const f = new RunFollower(runId);
    f.onSnapshot(snapshotAt(3));
    f.onReset();
    expect(f.onEvents(batch(4, 5)).events).toEqual([]);
    f.onSnapshot(snapshotAt(5));
    expect(f.onEvents(batch(6, 6)).events.map(e => e.seq)).toEqual([6]);
  });
});
