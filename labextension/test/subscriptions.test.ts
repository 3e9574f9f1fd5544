import { describe, expect, it } from 'vitest';
import type { Update } from '../src/follower';
import { SubscriptionFrame, Subscriptions } from '../src/subscriptions';
import { beforeFirstEvent, MAIN } from './recorded';

const runId = MAIN.events[0].run_id;

function setup(unsubscribe: boolean) {
  const sent: SubscriptionFrame[] = [];
  const subs = new Subscriptions({ send: f => sent.push(f), unsubscribe });
  return { sent, subs };
}

describe('Subscriptions (shared by the socket, the comm and the harness)', () => {
  it('subscribes for the first listener and brings a late one up to date at once', () => {
    const { sent, subs } = setup(true);
    const first: Update[] = [];
    subs.follow(runId, u => first.push(u));
    expect(sent).toEqual([{ type: 'subscribe', run_id: runId }]);
    subs.receive(beforeFirstEvent(MAIN));
    subs.receive({ type: 'events', run_id: runId, events: MAIN.events.slice(0, 3) });
    const late: Update[] = [];
    subs.follow(runId, u => late.push(u));
    expect(sent).toHaveLength(1);
    expect(late).toHaveLength(1);
    expect(late[0]).toMatchObject({ snapshot: true, runChanged: true });
    expect(late[0].state!.seq).toBe(3);
    expect(first.map(u => u.events.length)).toEqual([0, 3]);
  });

  it('unsubscribes when the last listener leaves, unless the channel is shared (a comm)', () => {
    for (const unsubscribe of [true, false]) {
      const { sent, subs } = setup(unsubscribe);
      const a = subs.follow(runId, () => undefined);
      const b = subs.follow(runId, () => undefined);
      a();
      expect(sent).toHaveLength(1);
      b();
      expect(sent.slice(1)).toEqual(unsubscribe ? [{ type: 'unsubscribe', run_id: runId }] : []);
      expect(subs.runIds()).toEqual([]);
    }
  });

  it('asks for the state on a gap and tells listeners about a refusal', () => {
    const { sent, subs } = setup(false);
    const seen: Update[] = [];
    subs.follow(runId, u => seen.push(u));
    subs.receive(beforeFirstEvent(MAIN));
    subs.receive({ type: 'events', run_id: runId, events: [MAIN.events[0], MAIN.events[2]] });
    expect(sent).toContainEqual({ type: 'request_state', run_id: runId });
    subs.refuse(runId, { code: 'unknown_run', message: 'no such run' });
    expect(seen[seen.length - 1].error).toEqual({ code: 'unknown_run', message: 'no such run' });
    subs.refuse('another run', { code: 'unknown_run', message: 'x' }); // nobody follows it: nothing
  });
});
