// Long DOM work (the DAG view's build of thousands of nodes) cut into slices of a few
// milliseconds, one per animation frame, so the page never blocks for a long task and
// the view is usable while it fills in. The work is an iterator: each step is one unit
// (a chunk of nodes); the slicer runs steps until its budget is spent, then yields.

/** Schedules `cb` for the next frame; returns a handle for `cancel`. */
export interface FrameClock {
  now(): number;
  frame(cb: () => void): number;
  cancel(handle: number): void;
}

const BROWSER: FrameClock = {
  now: () => performance.now(),
  frame: cb => requestAnimationFrame(cb),
  cancel: h => cancelAnimationFrame(h)
};

export interface SliceStats {
  /** Slices the last job took, and the longest one (ms of JS). */
  slices: number;
  sliceMax: number;
  /** Wall time from the job's start to its last step (ms). */
  wall: number;
}

export class FrameSlicer {
  private job: Iterator<unknown> | null = null;
  private onDone: (() => void) | null = null;
  private handle = 0;
  private started = 0;
  readonly stats: SliceStats = { slices: 0, sliceMax: 0, wall: 0 };

  /** `budget`: ms of work per slice; a slice always runs at least one step. */
  constructor(private readonly budget: number, private readonly clock: FrameClock = BROWSER) {}

  get running(): boolean {
    return this.job !== null;
  }

  /**
   * Start `job` (cancelling any running one) at the next frame: the task that asked for it
   * (a layout, say) is not made longer by a first slice.
   */
  start(job: Iterator<unknown>, done: () => void): void {
    this.cancel();
    this.job = job;
    this.onDone = done;
    this.started = this.clock.now();
    this.stats.slices = 0;
    this.stats.sliceMax = 0;
    this.next();
  }

  cancel(): void {
    if (this.handle) this.clock.cancel(this.handle);
    this.handle = 0;
    this.job = null;
    this.onDone = null;
  }

  private next(): void {
    this.handle = this.clock.frame(() => {
      this.handle = 0;
      this.slice();
    });
  }

  private slice(): void {
    const job = this.job!;
    const t0 = this.clock.now();
    let finished = false;
    do {
      finished = !!job.next().done;
    } while (!finished && this.clock.now() - t0 < this.budget);
    const t1 = this.clock.now();
    this.stats.slices++;
    this.stats.sliceMax = Math.max(this.stats.sliceMax, t1 - t0);
    if (!finished) {
      this.next();
      return;
    }
    this.stats.wall = t1 - this.started;
    const done = this.onDone!;
    this.job = null;
    this.onDone = null;
    done();
  }
}

/**
 * Column indices in build order: `first` (the generation the reader is looking at, or
 * the selected node's), then outwards one column either side, so what matters is drawn
 * in the first slice.
 */
export function columnOrder(count: number, first: number): number[] {
  const f = Math.max(0, Math.min(count - 1, first));
  const out: number[] = count ? [f] : [];
  for (let d = 1; out.length < count; d++) {
    if (f + d < count) out.push(f + d);
    if (f - d >= 0) out.push(f - d);
  }
  return out;
}

/** `items` cut into consecutive chunks of at most `size`. */
export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
