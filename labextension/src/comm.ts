// The fallback transport where no server extension serves the page (VS Code, Colab):
// the widget's own comm, fed by the kernel, speaking the same frames as the socket.
// Browser-to-kernel messages wait while a cell runs, so controls act when it is idle.
import type { Ack, ServerMessage } from './protocol';
import { RunFollower, update } from './follower';
import type { ConnectionInfo, RunListener, Transport } from './connection';

/** The part of an anywidget model this transport needs. */
export interface CommModel {
  send(content: unknown): void;
  on(event: 'msg:custom', cb: (msg: any) => void): void;
  off(event: 'msg:custom', cb: (msg: any) => void): void;
}

let counter = 0;

export class CommTransport implements Transport {
  readonly kind = 'comm' as const;
  private readonly followers = new Map<string, { f: RunFollower; listeners: Set<RunListener> }>();
  private readonly pending = new Map<string, (ack: Ack) => void>();
  private readonly infoListeners = new Set<(info: ConnectionInfo) => void>();
  private storeDownSince: string | undefined;
  private readonly handler = (msg: any) => this.onFrame(msg as ServerMessage);

  constructor(private readonly model: CommModel) {
    model.on('msg:custom', this.handler);
  }

  info(): ConnectionInfo {
    return this.storeDownSince ? { state: 'live', storeDownSince: this.storeDownSince } : { state: 'live' };
  }

  onInfo(cb: (info: ConnectionInfo) => void): () => void {
    this.infoListeners.add(cb);
    return () => this.infoListeners.delete(cb);
  }

  follow(runId: string, listener: RunListener): () => void {
    let entry = this.followers.get(runId);
    if (!entry) {
      entry = { f: new RunFollower(runId), listeners: new Set() };
      this.followers.set(runId, entry);
      this.model.send(entry.f.subscribeFrame());
    }
    entry.listeners.add(listener);
    return () => {
      entry!.listeners.delete(listener);
    };
  }

  command(runId: string, action: string, nodeId?: string | null,
          payload?: Record<string, unknown> | null): Promise<Ack> {
    const commandId = `comm-${Date.now().toString(36)}-${++counter}`;
    return new Promise<Ack>(resolve => {
      this.pending.set(commandId, resolve);
      this.model.send({ type: 'command', command_id: commandId, run_id: runId, action,
                        node_id: nodeId ?? null, payload: payload ?? null });
    });
  }

  private onFrame(msg: ServerMessage): void {
    if (msg.type === 'error' && msg.code === 'unknown_run' && msg.ref) {
      const entry = this.followers.get(msg.ref);
      const u = update(entry?.f.state ?? null, { error: { code: msg.code, message: msg.message } });
      for (const cb of entry?.listeners ?? []) cb(u);
      return;
    }
    if (msg.type === 'store_status') {
      this.storeDownSince = msg.available ? undefined : msg.since;
      for (const cb of this.infoListeners) cb(this.info());
      return;
    }
    if (msg.type === 'ack') {
      this.pending.get(msg.command_id)?.(msg);
      this.pending.delete(msg.command_id);
      return;
    }
    if (msg.type !== 'snapshot' && msg.type !== 'events' && msg.type !== 'reset') return;
    const entry = this.followers.get(msg.run_id);
    if (!entry) return;
    const u = msg.type === 'snapshot' ? entry.f.onSnapshot(msg)
      : msg.type === 'events' ? entry.f.onEvents(msg) : entry.f.onReset();
    if (u.requestState) this.model.send({ type: 'request_state', run_id: msg.run_id });
    if (u.snapshot || u.events.length) for (const cb of entry.listeners) cb(u);
  }

  dispose(): void {
    this.model.off('msg:custom', this.handler);
  }
}
