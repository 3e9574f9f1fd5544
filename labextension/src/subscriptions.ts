// Which runs a transport follows, and who listens: one RunFollower per run (the client
// rules, follower.ts) and the listeners its updates go to. The socket (connection.ts),
// the widget's comm (comm.ts) and the dev harness's fake keep theirs here and only move
// frames between it and their channel.
import type { EventsMsg, Reset, SnapshotMsg } from './protocol';
import { RunFollower, Update, update } from './follower';

export type RunListener = (u: Update) => void;

/** The client frames a subscription sends. */
export type SubscriptionFrame =
  | ReturnType<RunFollower['subscribeFrame']>
  | { type: 'unsubscribe'; run_id: string }
  | { type: 'request_state'; run_id: string };

export interface SubscriptionsOptions {
  /** Sends a frame now, or drops it when the channel is down (`subscribeFrames` resends). */
  send: (frame: SubscriptionFrame) => void;
  /**
   * Whether the last listener of a run leaving unsubscribes from it. Not over a widget's
   * comm: the kernel serves one session per widget, shared by every view of it.
   */
  unsubscribe: boolean;
}

interface Sub {
  follower: RunFollower;
  listeners: Set<RunListener>;
}

export class Subscriptions {
  private readonly subs = new Map<string, Sub>();

  constructor(private readonly opts: SubscriptionsOptions) {}

  /**
   * Follow a run: the listener gets every update (the first is a snapshot). The first
   * listener subscribes; a later one gets the current state at once. Returns the unfollow.
   */
  follow(runId: string, listener: RunListener): () => void {
    let sub = this.subs.get(runId);
    if (!sub) {
      sub = { follower: new RunFollower(runId), listeners: new Set() };
      this.subs.set(runId, sub);
      this.opts.send(sub.follower.subscribeFrame());
    } else if (sub.follower.state) {
      listener(update(sub.follower.state, { snapshot: true, runChanged: true }));
    }
    sub.listeners.add(listener);
    return () => {
      const s = this.subs.get(runId);
      if (!s) return;
      s.listeners.delete(listener);
      if (!s.listeners.size) {
        this.subs.delete(runId);
        if (this.opts.unsubscribe) this.opts.send({ type: 'unsubscribe', run_id: runId });
      }
    };
  }

  /** The runs followed now. */
  runIds(): string[] {
    return [...this.subs.keys()];
  }

  /** The frames that subscribe every followed run again (after a reconnect). */
  subscribeFrames(): SubscriptionFrame[] {
    return [...this.subs.values()].map(s => s.follower.subscribeFrame());
  }

  /**
   * A frame about a run: apply it through the run's follower, ask for the state on a gap,
   * and tell the listeners when anything changed.
   */
  receive(msg: SnapshotMsg | EventsMsg | Reset): void {
    const sub = this.subs.get(msg.run_id);
    if (!sub) return;
    const f = sub.follower;
    const u = msg.type === 'snapshot' ? f.onSnapshot(msg) : msg.type === 'events' ? f.onEvents(msg) : f.onReset();
    if (u.requestState) this.opts.send({ type: 'request_state', run_id: msg.run_id });
    if (u.snapshot || u.events.length) this.tell(sub, u);
  }

  /** The server refused to serve a run (e.g. unknown_run): its listeners say so. */
  refuse(runId: string, error: { code: string; message: string }): void {
    const sub = this.subs.get(runId);
    if (sub) this.tell(sub, update(sub.follower.state, { error }));
  }

  /** The follower of a followed run (tests, diagnostics, benchmarks). */
  follower(runId: string): RunFollower | undefined {
    return this.subs.get(runId)?.follower;
  }

  private tell(sub: Sub, u: Update): void {
    for (const cb of sub.listeners) cb(u);
  }
}
