// The client rules of the wire protocol, for one run, without I/O:
// apply an event only if its seq is last+1, drop seq <= last (a duplicate), and on a
// gap ask for the state (request_state) and ignore events until the snapshot comes.
import type { EventsMsg, SnapshotMsg } from './protocol';
import { applyEvent, Envelope, fromSnapshot, RunState } from './state';

export interface FollowerStats {
  applied: number;
  duplicates: number;
  gaps: number;
  resets: number;
  snapshots: number;
}

/** What one server frame changed. */
export interface Update {
  state: RunState | null;
  /** The state was replaced by a snapshot: redraw everything. */
  snapshot: boolean;
  /** Events applied, in seq order. */
  events: Envelope[];
  /** Nodes whose documents changed. */
  nodes: Set<string>;
  /** The run document changed (state, totals, approvals...). */
  runChanged: boolean;
  /** A gap was seen: send request_state for this run. */
  requestState: boolean;
  /** The server refused to serve this run (e.g. unknown_run). */
  error?: { code: string; message: string };
}

export function update(state: RunState | null, patch: Partial<Update> = {}): Update {
  return {
    state, snapshot: false, events: [], nodes: new Set(), runChanged: false, requestState: false,
    ...patch
  };
}

export class RunFollower {
  state: RunState | null = null;
  /** Waiting for a snapshot (at first, after a gap or a reset): events are ignored. */
  awaitingSnapshot = true;
  readonly stats: FollowerStats = { applied: 0, duplicates: 0, gaps: 0, resets: 0, snapshots: 0 };

  constructor(readonly runId: string) {}

  get last(): number {
    return this.state ? this.state.seq : 0;
  }

  /** The frame to (re)subscribe with: resume after the last applied event if any. */
  subscribeFrame(): { type: 'subscribe'; run_id: string; after_seq?: number } {
    if (this.state) {
      this.awaitingSnapshot = false; // the server continues exactly after our seq
      return { type: 'subscribe', run_id: this.runId, after_seq: this.state.seq };
    }
    return { type: 'subscribe', run_id: this.runId };
  }

  onSnapshot(msg: SnapshotMsg): Update {
    this.state = fromSnapshot(msg);
    this.awaitingSnapshot = false;
    this.stats.snapshots++;
    return update(this.state, { snapshot: true, runChanged: true });
  }

  onReset(): Update {
    this.awaitingSnapshot = true;
    this.stats.resets++;
    return update(this.state);
  }

  onEvents(msg: EventsMsg): Update {
    const st = this.state;
    const out = update(st);
    if (!st || this.awaitingSnapshot) return out;
    for (const ev of msg.events) {
      if (ev.seq <= st.seq) {
        this.stats.duplicates++;
        continue;
      }
      if (ev.seq !== st.seq + 1) {
        this.stats.gaps++;
        this.awaitingSnapshot = true;
        out.requestState = true;
        break;
      }
      const node = applyEvent(st, ev);
      if (node) out.nodes.add(node);
      out.events.push(ev);
      this.stats.applied++;
    }
    // Every event touches the run document (updated_at, and totals for costs).
    out.runChanged = out.events.length > 0;
    return out;
  }
}
