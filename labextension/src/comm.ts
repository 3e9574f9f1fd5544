// The fallback transport where no server extension serves the page (VS Code, Colab):
// the widget's own comm, fed by the kernel, speaking the same frames as the socket.
// Browser-to-kernel messages wait while a cell runs, so controls act when it is idle.
import type { Ack, ServerMessage } from './protocol';
import type { ConnectionInfo, Transport } from './connection';
import { RunListener, Subscriptions } from './subscriptions';

/** The part of an anywidget model this transport needs. */
export interface CommModel {
  send(content: unknown): void;
  on(event: 'msg:custom', cb: (msg: any) => void): void;
  off(event: 'msg:custom', cb: (msg: any) => void): void;
}

let counter = 0;

export class CommTransport implements Transport {
  readonly kind = 'comm' as const;
  private readonly subs: Subscriptions;
  private readonly pending = new Map<string, (ack: Ack) => void>();
  private readonly infoListeners = new Set<(info: ConnectionInfo) => void>();
  private storeDownSince: string | undefined;
  private readonly handler = (msg: any) => this.onFrame(msg as ServerMessage);

  constructor(private readonly model: CommModel) {
    this.subs = new Subscriptions({ send: frame => model.send(frame), unsubscribe: false });
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
    return this.subs.follow(runId, listener);
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
      this.subs.refuse(msg.ref, { code: msg.code, message: msg.message });
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
    if (msg.type === 'snapshot' || msg.type === 'events' || msg.type === 'reset') this.subs.receive(msg);
  }

  dispose(): void {
    this.model.off('msg:custom', this.handler);
  }
}
