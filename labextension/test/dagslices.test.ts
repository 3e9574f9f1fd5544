import { describe, expect, it } from 'vitest';
import { chunks, columnOrder, FrameClock, FrameSlicer } from '../src/dagslices';

/** A clock that advances only when told (each step "costs" time), and frames run by hand. */
function fakeClock() {
  let t = 0;
  let next = 1;
  const frames = new Map<number, () => void>();
  const clock: FrameClock = {
    now: () => t,
    frame: cb => {
      frames.set(next, cb);
      return next++;
    },
    cancel: h => {
      frames.delete(h);
    }
  };
  return {
    clock,
    spend: (ms: number) => {
      t += ms;
    },
    pending: () => frames.size,
    runFrame: () => {
      const [[h, cb]] = frames;
      frames.delete(h);
      cb();
    }
  };
}

/** A job of `n` steps, each spending `ms` on the clock, recording what ran. */
function job(c: ReturnType<typeof fakeClock>, n: number, ms: number, ran: number[]) {
  return (function* () {
    for (let i = 0; i < n; i++) {
      c.spend(ms);
      ran.push(i);
      yield;
    }
  })();
}

describe('frame slicer', () => {
  it('runs steps until the budget is spent, then yields to the next frame', () => {
    const c = fakeClock();
    const s = new FrameSlicer(8, c.clock);
    const ran: number[] = [];
    let done = 0;
    s.start(job(c, 10, 3, ran), () => done++);
    // Nothing runs in the task that started the job.
    expect(ran).toEqual([]);
    expect(s.running).toBe(true);
    c.runFrame();
    // 3 ms a step, 8 ms a slice: 3 steps (9 ms) a slice.
    expect(ran).toEqual([0, 1, 2]);
    expect(c.pending()).toBe(1);
    c.runFrame();
    expect(ran).toHaveLength(6);
    c.runFrame();
    c.runFrame();
    expect(ran).toHaveLength(10);
    expect(done).toBe(1);
    expect(s.running).toBe(false);
    expect(c.pending()).toBe(0);
    expect(s.stats.slices).toBe(4);
    expect(s.stats.sliceMax).toBe(9);
    expect(s.stats.wall).toBe(30);
  });

  it('runs a step per slice even when one step is over the budget', () => {
    const c = fakeClock();
    const s = new FrameSlicer(4, c.clock);
    const ran: number[] = [];
    s.start(job(c, 3, 10, ran), () => undefined);
    c.runFrame();
    expect(ran).toEqual([0]);
    c.runFrame();
    expect(ran).toEqual([0, 1]);
  });

  it('finishes a short job in one frame', () => {
    const c = fakeClock();
    const s = new FrameSlicer(8, c.clock);
    let done = false;
    s.start(job(c, 2, 1, []), () => {
      done = true;
    });
    expect(done).toBe(false);
    c.runFrame();
    expect(done).toBe(true);
    expect(c.pending()).toBe(0);
  });

  it('a new job cancels the running one, which never completes', () => {
    const c = fakeClock();
    const s = new FrameSlicer(8, c.clock);
    const first: number[] = [];
    const second: number[] = [];
    const done: string[] = [];
    s.start(job(c, 10, 5, first), () => done.push('first'));
    c.runFrame();
    s.start(job(c, 4, 5, second), () => done.push('second'));
    while (c.pending()) c.runFrame();
    expect(first).toEqual([0, 1]);
    expect(second).toEqual([0, 1, 2, 3]);
    expect(done).toEqual(['second']);
  });

  it('cancel stops the job and its frame', () => {
    const c = fakeClock();
    const s = new FrameSlicer(8, c.clock);
    const ran: number[] = [];
    s.start(job(c, 10, 5, ran), () => undefined);
    c.runFrame();
    s.cancel();
    expect(c.pending()).toBe(0);
    expect(s.running).toBe(false);
    expect(ran).toEqual([0, 1]);
  });
});

describe('build order', () => {
  it('starts at the given column and goes outwards', () => {
    expect(columnOrder(6, 2)).toEqual([2, 3, 1, 4, 0, 5]);
    expect(columnOrder(4, 0)).toEqual([0, 1, 2, 3]);
    expect(columnOrder(4, 3)).toEqual([3, 2, 1, 0]);
    expect(columnOrder(3, 99)).toEqual([2, 1, 0]);
    expect(columnOrder(0, 0)).toEqual([]);
  });

  it('every column exactly once, for any start', () => {
    for (let f = 0; f < 9; f++) expect([...columnOrder(9, f)].sort((a, b) => a - b)).toEqual([...Array(9).keys()]);
  });

  it('chunks keep order and cover everything', () => {
    const items = [...Array(10).keys()];
    expect(chunks(items, 4)).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
    expect(chunks([], 4)).toEqual([]);
  });
});
