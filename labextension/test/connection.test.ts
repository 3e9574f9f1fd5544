import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay, Connection, sharedConnection } from '../src/connection';
import { beforeFirstEvent, MAIN } from './recorded';

const runId: string = MAIN.events[0].run_id;

/** A scripted stand-in for the browser's WebSocket. */
class FakeSocket {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: any[] = [];
  onmessage: ((ev: { data: string }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }

  send(data: string) {
    this.sent.push(JSON.parse(data));
  }

  close() {
    this.drop(1000);
  }

  /** The server accepts: it says hello. */
  accept(heartbeat = 15) {
    this.readyState = 1;
    this.push({ type: 'hello', protocol: 1, server_id: 's', heartbeat_interval: heartbeat });
  }

  push(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
}

const latest = () => FakeSocket.all[FakeSocket.all.length - 1];

function connect(random = () => 0.5) {
  return new Connection({ url: 'ws://h/cmbagent/api/ws', token: 't', listenToPage: false,
                          random, WebSocket: FakeSocket as any });
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});
afterEach(() => vi.useRealTimers());

describe('backoff', () => {
  it('is full jitter: uniform below min(cap, base * 2^attempt)', () => {
    expect(backoffDelay(0, () => 0.999)).toBeLessThan(1000); // first try within a second
    expect(backoffDelay(3, () => 0.5)).toBe(4000);
    expect(backoffDelay(20, () => 0.999)).toBeLessThan(30000); // capped at 30 s
    expect(backoffDelay(20, () => 0)).toBe(0);
  });

  it('grows between failed attempts and resets after a hello', () => {
    const conn = connect(() => 0.999);
    const waits: number[] = [];
    for (let i = 0; i < 7; i++) {
      latest().drop();
      waits.push(conn.info().retryInMs!);
      vi.advanceTimersByTime(waits[waits.length - 1] + 1);
    }
    expect(waits.slice(0, 6)).toEqual([999, 1998, 3996, 7992, 15984, 29970]);
    expect(waits[6]).toBeLessThanOrEqual(30000);
    latest().accept();
    expect(conn.info().state).toBe('live');
    latest().drop();
    expect(conn.info().retryInMs).toBeLessThan(1000);
    conn.close();
  });
});

describe('Connection', () => {
  it('passes the token and shows the connection state', () => {
    const conn = connect();
    expect(latest().url).toBe('ws://h/cmbagent/api/ws?token=t');
    const states: string[] = [];
    conn.onInfo(i => states.push(i.state));
    latest().accept();
    latest().drop();
    expect(states).toEqual(['live', 'reconnecting']);
    conn.close();
  });

  it('resubscribes after a reconnect with the last applied seq', () => {
    const conn = connect();
    latest().accept();
    const seen: number[] = [];
    conn.follow(runId, u => seen.push(...u.events.map(e => e.seq)));
    expect(latest().sent).toContainEqual({ type: 'subscribe', run_id: runId });
    latest().push(beforeFirstEvent(MAIN));
    latest().push({ type: 'events', run_id: runId, events: MAIN.events.slice(0, 7) });
    latest().drop();
    vi.advanceTimersByTime(1000);
    latest().accept();
    expect(latest().sent).toEqual([{ type: 'subscribe', run_id: runId, after_seq: 7 }]);
    // The server replays from 8; an overlap is dropped as duplicates.
    latest().push({ type: 'events', run_id: runId, events: MAIN.events.slice(5, 10) });
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(conn.stats(runId)!.duplicates).toBe(2);
    conn.close();
  });

  it('asks for the state on a gap', () => {
    const conn = connect();
    latest().accept();
    conn.follow(runId, () => undefined);
    latest().push(beforeFirstEvent(MAIN));
    latest().push({ type: 'events', run_id: runId, events: [MAIN.events[0], MAIN.events[2]] });
    expect(latest().sent).toContainEqual({ type: 'request_state', run_id: runId });
    conn.close();
  });

  it('retries an unanswered command with the same command_id after a reconnect', async () => {
    const conn = connect();
    latest().accept();
    const ack = conn.command(runId, 'pause');
    const first = latest().sent.find(f => f.type === 'command');
    latest().drop();
    vi.advanceTimersByTime(1000);
    latest().accept();
    const again = latest().sent.find(f => f.type === 'command');
    expect(again.command_id).toBe(first.command_id);
    latest().push({ type: 'ack', command_id: first.command_id, ok: true, state: 'executing' });
    await expect(ack).resolves.toMatchObject({ ok: true });
    conn.close();
  });

  it('closes a silent connection after two heartbeat intervals and reconnects', () => {
    const conn = connect();
    latest().accept(1);
    const first = latest();
    vi.advanceTimersByTime(1000);
    expect(first.sent).toContainEqual({ type: 'ping', id: 1 });
    vi.advanceTimersByTime(2500);
    expect(first.readyState).toBe(3);
    expect(conn.info().state).toBe('reconnecting');
    conn.close();
  });

  it('shares one socket per page and URL between every view', () => {
    vi.stubGlobal('WebSocket', FakeSocket);
    try {
      const a = sharedConnection('ws://h/x', 't');
      const b = sharedConnection('ws://h/x', 't');
      expect(a).toBe(b);
      a.follow('r1', () => undefined);
      b.follow('r2', () => undefined);
      expect(FakeSocket.all.length).toBe(1);
      a.close();
    } finally {
      vi.unstubAllGlobals();
    }
  });
});

describe('run store status', () => {
  it('says when the server\'s store stops answering, and when it answers again', () => {
    const conn = connect();
    const seen: Array<string | undefined> = [];
    conn.onInfo(i => seen.push(i.storeDownSince));
    latest().accept();
    expect(conn.info().storeDownSince).toBeUndefined();
    latest().push({ type: 'store_status', available: false, since: '2030-01-01T14:02:11+00:00' });
    expect(conn.info()).toMatchObject({ state: 'live', storeDownSince: '2030-01-01T14:02:11+00:00' });
    latest().push({ type: 'store_status', available: true, since: '2030-01-01T14:02:31+00:00' });
    expect(conn.info().storeDownSince).toBeUndefined();
    expect(seen).toEqual([undefined, '2030-01-01T14:02:11+00:00', undefined]);
    conn.close();
  });

  it('forgets it when the connection drops: the next server says it again if so', () => {
    const conn = connect();
    latest().accept();
    latest().push({ type: 'store_status', available: false, since: '2030-01-01T14:02:11+00:00' });
    latest().drop();
    expect(conn.info().storeDownSince).toBeUndefined();
    vi.advanceTimersByTime(1000);
    latest().accept();
    expect(conn.info().storeDownSince).toBeUndefined();
    conn.close();
  });
});
