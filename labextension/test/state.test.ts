import { describe, expect, it } from 'vitest';
import { applyEvent, fromSnapshot, generations, toSnapshot } from '../src/state';
import { beforeFirstEvent, MAIN, RECORDED } from './recorded';
import { EVENT_TYPES } from './schema';

/** A JSON round trip: what a snapshot looks like on the wire. */
const wire = <T>(v: T): T => JSON.parse(JSON.stringify(v));

describe('the TypeScript reducer', () => {
  for (const rec of RECORDED) {
    it(`replays a Python-recorded log to exactly Python's snapshot: ${rec.title}`, () => {
      const st = fromSnapshot(beforeFirstEvent(rec));
      for (const ev of rec.events) applyEvent(st, ev);
      expect(wire(toSnapshot(st))).toEqual({ type: 'snapshot', ...rec.snapshot });
    });
  }

  it('is checked against every event type of the schema', () => {
    const recorded = new Set<string>(RECORDED.flatMap(r => r.events.map(e => e.event_type)));
    expect(EVENT_TYPES.filter(t => !recorded.has(t)),
           'event types no recorded run has: make scripts/make_reducer_fixture.py record them').toEqual([]);
  });

  it('continues from a mid-run snapshot like from the start', () => {
    const st = fromSnapshot(beforeFirstEvent(MAIN));
    const half = Math.floor(MAIN.events.length / 2);
    for (const ev of MAIN.events.slice(0, half)) applyEvent(st, ev);
    const resumed = fromSnapshot(wire(toSnapshot(st)));
    for (const ev of MAIN.events.slice(half)) applyEvent(resumed, ev);
    expect(wire(toSnapshot(resumed))).toEqual({ type: 'snapshot', ...MAIN.snapshot });
  });

  it('refuses an event that is not the next one', () => {
    const st = fromSnapshot(beforeFirstEvent(MAIN));
    expect(() => applyEvent(st, MAIN.events[1])).toThrow(/seq 2 applied after 0/);
  });

  it('layers a diamond by topological generation in declaration order', () => {
    const node = (id: string, deps: string[], position: number) =>
      [id, { id, deps, position } as any] as const;
    const nodes = new Map([node('d', ['b', 'c'], 3), node('a', [], 0), node('c', ['a'], 2),
                           node('b', ['a'], 1)]);
    expect(generations(nodes)).toEqual([['a'], ['b', 'c'], ['d']]);
  });

  it('layers a step after a dep declared below it, each layer still in declaration order', () => {
    const node = (id: string, deps: string[], position: number) =>
      [id, { id, deps, position } as any] as const;
    const nodes = new Map([node('a', ['c'], 0), node('b', [], 1), node('c', ['b'], 2), node('d', [], 3),
                           node('e', ['b', 'd'], 4)]);
    expect(generations(nodes)).toEqual([['b', 'd'], ['c', 'e'], ['a']]);
  });

  it('lays a new plan out when its layout is first read, the same as at once', () => {
    const st = fromSnapshot(beforeFirstEvent(MAIN));
    const plan = MAIN.events.find(e => e.event_type === 'dag_created')!;
    for (const ev of MAIN.events.slice(0, MAIN.events.indexOf(plan) + 1)) applyEvent(st, ev);
    expect(wire(st.layout)).toEqual({ generations: generations(st.nodes) });
    expect(st.layout.generations.flat().length).toBe(st.nodes.size);
  });
});
