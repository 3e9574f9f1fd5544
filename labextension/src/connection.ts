// One WebSocket per browser tab to {base_url}cmbagent/api/ws, shared by the sidebar
// and every widget on the page. It reconnects with full-jitter exponential backoff
// (first try within a second, cap 30 s), at once when the tab becomes visible or the
// browser comes back online, and resubscribes each run after its last applied seq.
import type { Ack, RunInfo, ServerMessage } from './protocol';
import type { Envelope } from './state';
import { RunListener, Subscriptions } from './subscriptions';

export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'offline';

export interface ConnectionInfo {
  state: ConnectionState;
  /** When state is reconnecting: ms until the next attempt. */
  retryInMs?: number;
  /** Why the last connection closed, if it did. */
  lastError?: string;
  /**
   * While live: set (ISO time) when the server says its run store has not answered since
   * then (a store_status frame). The socket stays open; what needs the store waits and
   * catches up exactly once it answers.
   */
  storeDownSince?: string;
}

export type RunsListener = (runs: Map<string, RunInfo>, changed: RunInfo | null) => void;

export interface Transport {
  readonly kind: 'socket' | 'comm';
  info(): ConnectionInfo;
  onInfo(cb: (info: ConnectionInfo) => void): () => void;
  /** Follow a run: the listener gets every update (the first is a snapshot). */
  follow(runId: string, listener: RunListener): () => void;
  command(runId: string, action: string, nodeId?: string | null,
          payload?: Record<string, unknown> | null): Promise<Ack>;
  /** Events of a run's log with seq > afterSeq (at most limit), where the log is reachable. */
  history?(runId: string, afterSeq: number, limit: number): Promise<Envelope[]>;
}

/** Full jitter: uniform in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, random: () => number = Math.random,
                             baseMs = 1000, capMs = 30000): number {
  return random() * Math.min(capMs, baseMs * 2 ** attempt);
}

export interface ConnectionOptions {
  url: string;
  token?: string;
  /** The server's HTTP base URL (for REST reads such as history). */
  baseUrl?: string;
  WebSocket?: typeof WebSocket;
  random?: () => number;
  /** Set false in tests: no window/document listeners. */
  listenToPage?: boolean;
}

interface PendingCommand {
  frame: Record<string, unknown>;
  resolve: (ack: Ack) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

let commandCounter = 0;

function newCommandId(): string {
  const c: any = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  commandCounter += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${commandCounter}`;
}

export class Connection implements Transport {
  readonly kind = 'socket' as const;
  private ws: WebSocket | null = null;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryAt = 0;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private lastFrameAt = 0;
  private heartbeatMs = 15000;
  private pingId = 0;
  private closed = false;
  /** The Jupyter server's root directory (from hello): files under it have /files/ URLs. */
  rootDir: string | null = null;
  private state: ConnectionState = 'connecting';
  private lastError: string | undefined;
  private storeDownSince: string | undefined;
  private readonly infoListeners = new Set<(i: ConnectionInfo) => void>();
  private readonly subs = new Subscriptions({ send: f => this.send(f), unsubscribe: true });
  private readonly runsListeners = new Set<RunsListener>();
  private readonly runs = new Map<string, RunInfo>();
  private readonly pending = new Map<string, PendingCommand>();
  private readonly WS: typeof WebSocket;
  private readonly random: () => number;
  private readonly pageHandlers: Array<[EventTarget, string, () => void]> = [];

  constructor(private readonly opts: ConnectionOptions) {
    this.WS = opts.WebSocket ?? (globalThis as any).WebSocket;
    this.random = opts.random ?? Math.random;
    if (opts.listenToPage !== false && typeof window !== 'undefined') {
      const now = () => this.reconnectNow();
      const offline = () => this.setState('offline');
      this.listen(window, 'online', now);
      this.listen(window, 'offline', offline);
      this.listen(document, 'visibilitychange', () => {
        if (document.visibilityState === 'visible') now();
      });
    }
    this.open();
  }

  private listen(target: EventTarget, type: string, fn: () => void): void {
    target.addEventListener(type, fn);
    this.pageHandlers.push([target, type, fn]);
  }

  // -- connection state ------------------------------------------------------------

  info(): ConnectionInfo {
    const info: ConnectionInfo = { state: this.state };
    if (this.state === 'reconnecting') info.retryInMs = Math.max(0, this.retryAt - Date.now());
    if (this.lastError) info.lastError = this.lastError;
    if (this.state === 'live' && this.storeDownSince) info.storeDownSince = this.storeDownSince;
    return info;
  }

  onInfo(cb: (info: ConnectionInfo) => void): () => void {
    this.infoListeners.add(cb);
    return () => this.infoListeners.delete(cb);
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    if (state !== 'live') this.storeDownSince = undefined; // a new connection says it again
    const info = this.info();
    for (const cb of this.infoListeners) cb(info);
  }

  // -- socket lifecycle ----------------------------------------------------------------

  private open(): void {
    if (this.closed) return;
    const url = this.opts.token
      ? `${this.opts.url}${this.opts.url.includes('?') ? '&' : '?'}token=${encodeURIComponent(this.opts.token)}`
      : this.opts.url;
    let ws: WebSocket;
    try {
      ws = new this.WS(url);
    } catch (err) {
      this.lastError = String(err);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = ev => this.onFrame(String(ev.data));
    ws.onclose = ev => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopHeartbeat();
      this.lastError = ev.code ? `closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})` : 'closed';
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      this.lastError = 'connection failed';
    };
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retryTimer) return;
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    const delay = backoffDelay(this.attempt, this.random);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState(offline ? 'offline' : 'reconnecting');
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  /** Try at once (tab visible again, browser online again). */
  reconnectNow(): void {
    if (this.closed || this.ws) return;
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    this.open();
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    this.lastFrameAt = Date.now();
    this.heartbeatTimer = setInterval(() => {
      if (Date.now() - this.lastFrameAt > 2 * this.heartbeatMs) {
        // No pong (nor anything else) for two intervals: the connection is dead. Do not
        // wait for a closing handshake a dead server will never send: drop it now.
        this.lastError = 'heartbeat timeout';
        const ws = this.ws;
        this.ws = null;
        this.stopHeartbeat();
        if (ws) {
          ws.onclose = null;
          ws.onmessage = null;
          ws.close();
        }
        this.scheduleReconnect();
        return;
      }
      this.send({ type: 'ping', id: ++this.pingId });
    }, this.heartbeatMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  private send(frame: Record<string, unknown>): boolean {
    if (!this.ws || this.ws.readyState !== 1 || this.state !== 'live') return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    for (const [t, type, fn] of this.pageHandlers) t.removeEventListener(type, fn);
    this.ws?.close();
    this.ws = null;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error('connection closed'));
    }
    this.pending.clear();
  }

  // -- frames ----------------------------------------------------------------------------

  private onFrame(raw: string): void {
    this.lastFrameAt = Date.now();
    let msg: ServerMessage;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'hello':
        this.heartbeatMs = Math.max(1000, msg.heartbeat_interval * 1000);
        this.rootDir = msg.root_dir ?? null;
        this.attempt = 0;
        this.lastError = undefined;
        this.setState('live');
        this.startHeartbeat();
        for (const frame of this.subs.subscribeFrames()) this.send(frame);
        if (this.runsListeners.size) this.send({ type: 'subscribe_runs' });
        for (const p of this.pending.values()) this.send(p.frame); // same command_id: applied once
        return;
      case 'snapshot':
      case 'events':
      case 'reset':
        return this.subs.receive(msg);
      case 'store_status':
        this.storeDownSince = msg.available ? undefined : msg.since;
        return this.setState(this.state);
      case 'runs':
        this.runs.clear();
        for (const r of msg.runs) this.runs.set(r.id, r);
        for (const cb of this.runsListeners) cb(this.runs, null);
        return;
      case 'run_changed':
        this.runs.set(msg.run.id, msg.run);
        for (const cb of this.runsListeners) cb(this.runs, msg.run);
        return;
      case 'run_deleted':
        // Gone from the store: off the run list, and a view following it says so.
        if (this.runs.delete(msg.run_id)) for (const cb of this.runsListeners) cb(this.runs, null);
        this.subs.refuse(msg.run_id, { code: 'run_deleted', message: 'this run was deleted' });
        return;
      case 'ack': {
        const p = this.pending.get(msg.command_id);
        if (p) {
          this.pending.delete(msg.command_id);
          clearTimeout(p.timer);
          p.resolve(msg);
        }
        return;
      }
      case 'error': {
        const p = msg.ref ? this.pending.get(msg.ref) : undefined;
        if (p) {
          this.pending.delete(msg.ref!);
          clearTimeout(p.timer);
          p.resolve({ type: 'ack', command_id: msg.ref!, ok: false, error: msg.message, code: msg.code });
        }
        if (msg.ref && msg.code === 'unknown_run') {
          this.subs.refuse(msg.ref, { code: msg.code, message: msg.message });
        }
        return;
      }
      default:
        return; // pong, unsubscribed: nothing to do beyond lastFrameAt
    }
  }

  // -- API -----------------------------------------------------------------------------------

  follow(runId: string, listener: RunListener): () => void {
    return this.subs.follow(runId, listener);
  }

  followRuns(listener: RunsListener): () => void {
    if (!this.runsListeners.size) this.send({ type: 'subscribe_runs' });
    this.runsListeners.add(listener);
    if (this.runs.size) listener(this.runs, null);
    return () => {
      this.runsListeners.delete(listener);
      if (!this.runsListeners.size) this.send({ type: 'unsubscribe_runs' });
    };
  }

  async history(runId: string, afterSeq: number, limit: number): Promise<Envelope[]> {
    if (!this.opts.baseUrl) return [];
    const url = `${this.opts.baseUrl}cmbagent/api/runs/${encodeURIComponent(runId)}/events` +
      `?after_seq=${afterSeq}&limit=${limit}`;
    const headers: Record<string, string> = {};
    if (this.opts.token) headers.Authorization = `token ${this.opts.token}`;
    const r = await fetch(url, { headers, credentials: 'same-origin' });
    if (!r.ok) return [];
    return (await r.json()).events as Envelope[];
  }

  /** Stats of a followed run (tests and diagnostics). */
  stats(runId: string) {
    return this.subs.follower(runId)?.stats;
  }

  command(runId: string, action: string, nodeId?: string | null,
          payload?: Record<string, unknown> | null, timeoutMs = 30000): Promise<Ack> {
    const commandId = newCommandId();
    const frame: Record<string, unknown> = { type: 'command', command_id: commandId, run_id: runId, action };
    if (nodeId) frame.node_id = nodeId;
    if (payload) frame.payload = payload;
    return new Promise<Ack>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(commandId);
        reject(new Error(`no answer to ${action} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(commandId, { frame, resolve, reject, timer });
      this.send(frame); // if not live now, it is sent after the next hello
    });
  }
}

/** The page's shared connection to a server (one socket per tab, whoever asks first). */
export function sharedConnection(url: string, token?: string, baseUrl?: string): Connection {
  const g = globalThis as any;
  const registry: Map<string, Connection> = (g.__cmbagentConnections ??= new Map());
  let conn = registry.get(url);
  if (!conn) {
    conn = new Connection({ url, token, baseUrl });
    registry.set(url, conn);
  }
  return conn;
}
