// The run view shown by the notebook widget and the JupyterLab main-area panel: a
// header (state, progress, time, cost, connection, controls), what needs the
// reader (approvals, a lost executor, a broken connection), the DAG, the selected
// step and the activity log. Updates are batched into one animation frame.
import { ApprovalCards } from './approvals';
import type { ConnectionInfo, Transport } from './connection';
import type { Update } from './follower';
import type { Ack, NodeInfo, PendingApproval, RunInfo } from './protocol';
import type { RunState } from './state';
import { DagView } from './dagview';
import { DetailPane } from './detailpane';
import { button, el, glyphIcon, setText } from './dom';
import { LogBook } from './eventlog';
import type { FileLinks } from './files';
import { Insights } from './insights';
import { LogView } from './logview';
import { PauseNote } from './pausenote';
import { processGone, resumeHint } from './resumehint';
import { formatCost, formatDuration, runDuration } from './runlist';
import {
  clockTime, formatCount, GLYPHS, isLegal, isSettled, OUTCOMES, progressText, RUN_ACTIONS,
  RUN_STATE_LOOK, RunAction, storeDownText, unknownRunText
} from './status';

export interface RunViewOptions extends FileLinks {
  runId: string;
  transport: Transport;
}

export type ConnectionAttr = 'live' | 'reconnecting' | 'offline' | 'comm';

/** The root's data-connection value ("connecting" reads as reconnecting). */
export function connectionAttr(kind: Transport['kind'], info: ConnectionInfo): ConnectionAttr {
  if (kind === 'comm') return 'comm';
  return info.state === 'connecting' ? 'reconnecting' : info.state;
}

export function connectionLabel(kind: Transport['kind'], info: ConnectionInfo): string {
  if (kind === 'comm') return 'kernel channel';
  if (info.state === 'live') return 'live';
  if (info.state === 'offline') return 'offline';
  // At 0 s the attempt itself is under way (Connection stays "reconnecting" meanwhile).
  if (info.state === 'reconnecting' && info.retryInMs !== undefined && info.retryInMs > 0) {
    return `reconnecting in ${Math.ceil(info.retryInMs / 1000)} s`;
  }
  return info.state === 'reconnecting' ? 'reconnecting…' : 'connecting…';
}

const ACTION_TEXT: Record<RunAction, { label: string; aria: string; help: string }> = {
  pause: { label: 'Pause', aria: 'Pause the run',
           help: 'Pause: no new step starts; running steps stop at their next ctx.checkpoint() (a long call finishes first)' },
  resume: { label: 'Resume', aria: 'Resume the run', help: 'Resume the paused run' },
  cancel: { label: 'Cancel', aria: 'Cancel the run',
            help: 'Cancel the run: running steps stop at their next checkpoint, the rest never start' }
};

const ACTION_GLYPH: Record<RunAction, 'paused' | 'running' | 'cancelled'> = {
  pause: 'paused', resume: 'running', cancel: 'cancelled'
};

export class RunView {
  readonly element: HTMLElement;
  private readonly opts: RunViewOptions;
  private readonly dag: DagView;
  private readonly detail: DetailPane;
  private readonly book = new LogBook(50);
  private readonly log: LogView;
  private readonly insights: Insights;
  private state: RunState | null = null;
  private conn: ConnectionInfo;
  private lastUpdateAt = 0;
  private readonly busyKeys = new Set<string>();
  private readonly disposers: Array<() => void> = [];
  private readonly ticker: ReturnType<typeof setInterval>;
  private frame = 0;
  private dirtyRun = false;
  private dirtyNodes = new Set<string>();
  private dirtyLog = false;
  private dirtyInsights = false;
  /** While another tab hides the graph, what it has not drawn yet (drawn when shown). */
  private dagBehind: { nodes: Set<string>; full: boolean } | null = null;
  private disposed = false;
  private countdown: ReturnType<typeof setTimeout> | null = null;

  // header
  private readonly stateBadge = el('span', 'cr-state');
  private readonly stateText = el('span', 'cr-state-text');
  private readonly stateGlyph: SVGPathElement;
  private readonly name = el('h2', 'cr-name');
  private readonly runIdEl = el('span', 'cr-runid cr-mono');
  private readonly connBadge = el('span', 'cr-conn');
  private readonly progressSegs = new Map<string, HTMLElement>();
  private readonly progressBar = el('div', 'cr-bar');
  private readonly progressText = el('span', 'cr-bar-text');
  private readonly elapsed = el('span', 'cr-stat-value');
  private readonly cost = el('span', 'cr-stat-value');
  private readonly tokens = el('span', 'cr-stat-value');
  private readonly buttons = new Map<RunAction, HTMLButtonElement>();
  private readonly cmdError = el('div', 'cr-cmd-error');
  // attention
  private readonly alert = el('div', 'cr-banner cr-banner-error');
  private readonly stale = el('div', 'cr-banner cr-banner-warn cr-stale');
  private readonly storeDown = el('div', 'cr-banner cr-banner-warn cr-store');
  private readonly approvals: ApprovalCards;
  private readonly pauseNote = new PauseNote();
  private readonly attentionEl = el('div', 'cr-attention');
  private alertSig = '';
  /** A command was refused because the run's process is gone (not always in the log). */
  private gone = false;

  constructor(host: HTMLElement, opts: RunViewOptions) {
    this.opts = opts;
    this.conn = opts.transport.info();
    const root = el('div', 'cmbagent-run');
    root.dataset.cmbagentRun = opts.runId;
    root.setAttribute('role', 'region');
    root.setAttribute('aria-label', `Workflow run ${opts.runId}`);
    this.element = root;
    const glyphSvg = glyphIcon('pending', 12);
    this.stateGlyph = glyphSvg.firstChild as SVGPathElement;
    this.stateBadge.append(glyphSvg, this.stateText);

    // A main-area panel (index.ts gives its host this class) is filled; a cell is not.
    const panel = host.classList.contains('cmbagent-run-panel');
    this.dag = new DagView({
      onSelect: id => this.onSelect(id),
      wheelZoom: panel ? 'always' : 'engaged',
      fill: panel
    });
    this.detail = new DetailPane({
      fileUrl: opts.fileUrl,
      openFile: opts.openFile,
      showOutput: id => {
        this.insights.console.setScope(id);
        this.insights.show('console');
      },
      retry: (id, b, err) => void this.send(`retry:${id}`, b, err, 'retry', id),
      rerun: (id, b, err) => void this.send(`rerun:${id}`, b, err, 'rerun', id),
      gone: () => this.gone,
      busy: key => this.busyKeys.has(key)
    });
    this.approvals = new ApprovalCards({
      answer: (a, action, b, err, payload) =>
        void this.send(approvalKey(a), b, err, action, a.node_id, payload),
      busy: a => this.busyKeys.has(approvalKey(a)),
      showStep: id => this.dag.select(id, true)
    });
    this.log = new LogView(this.book, {
      fileUrl: opts.fileUrl,
      nodeLabel: id => this.state?.nodes.get(id)?.label ?? id,
      select: id => this.dag.select(id, true)
    });

    const nodeLabel = (id: string) => this.state?.nodes.get(id)?.label ?? id;
    this.insights = new Insights({
      runId: opts.runId, transport: opts.transport, fileUrl: opts.fileUrl, openFile: opts.openFile,
      nodeLabel, select: id => this.dag.select(id, true),
      live: () => !!this.state && !isSettled(this.state.run.state),
      onTab: tab => {
        this.dag.element.hidden = tab !== 'graph';
        if (tab !== 'graph') this.dagBehind ??= { nodes: new Set(), full: false };
        else if (this.dagBehind) {
          const behind = this.dagBehind;
          this.dagBehind = null;
          if (this.state) this.dag.update(this.state, behind.nodes, behind.full);
        }
        this.dirtyInsights = true;
        this.schedule();
      }
    });
    this.insights.onLoaded = () => {
      this.dirtyInsights = true;
      this.schedule();
    };

    const body = el('div', 'cr-body');
    const side = el('div', 'cr-side');
    side.append(this.detail.element, this.log.element);
    const main = el('div', 'cr-main');
    main.append(this.insights.tabs, this.dag.element, this.insights.panels);
    body.append(main, side);
    root.append(this.header(), this.attention(), body);
    host.append(root);

    this.dag.setMessage(`Connecting to run ${opts.runId}…`);
    this.showConnection(this.conn);
    this.disposers.push(opts.transport.onInfo(info => this.showConnection(info)));
    this.disposers.push(opts.transport.follow(opts.runId, u => this.onUpdate(u)));
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  /** The graph's last build and patch timings (ms): for benchmarks and the dev harness. */
  stats(): DagView['timings'] {
    return { ...this.dag.timings };
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const d of this.disposers) d();
    clearInterval(this.ticker);
    if (this.countdown) clearTimeout(this.countdown);
    if (this.frame) cancelAnimationFrame(this.frame);
    this.dag.dispose();
    this.insights.dispose();
    this.element.remove();
  }

  // -- building -------------------------------------------------------------------------

  private header(): HTMLElement {
    const head = el('header', 'cr-head');
    const title = el('div', 'cr-titlebar');
    setText(this.name, this.opts.runId);
    title.append(this.stateBadge, this.name, this.runIdEl, el('span', 'cr-spacer'), this.connBadge);

    const stats = el('div', 'cr-statsbar');
    this.progressBar.setAttribute('role', 'progressbar');
    this.progressBar.setAttribute('aria-label', 'Steps done');
    this.progressBar.setAttribute('aria-valuemin', '0');
    // One segment per outcome, so skipped and failed steps show as what they are.
    for (const s of OUTCOMES) {
      const seg = el('div', 'cr-bar-seg');
      seg.dataset.status = s;
      this.progressSegs.set(s, seg);
      this.progressBar.append(seg);
    }
    const progress = el('div', 'cr-stat cr-run-progress');
    progress.append(this.progressBar, this.progressText);
    stats.append(progress, this.stat('Elapsed', this.elapsed), this.stat('Cost', this.cost),
                 this.stat('Tokens', this.tokens), this.controls());
    this.cmdError.setAttribute('role', 'alert');
    this.cmdError.hidden = true;
    head.append(title, stats, this.cmdError);
    return head;
  }

  private stat(label: string, value: HTMLElement): HTMLElement {
    const s = el('div', 'cr-stat');
    s.append(el('span', 'cr-stat-label', label), value);
    return s;
  }

  private controls(): HTMLElement {
    const box = el('div', 'cr-controls');
    box.setAttribute('role', 'group');
    box.setAttribute('aria-label', 'Run controls');
    for (const action of RUN_ACTIONS) {
      const t = ACTION_TEXT[action];
      const b = button(`cr-btn cr-btn-${action}`, t.label, t.aria, glyphIcon(ACTION_GLYPH[action], 12));
      b.dataset.action = action;
      b.disabled = true;
      b.addEventListener('click', () => void this.send(action, b, this.cmdError, action));
      this.buttons.set(action, b);
      box.append(b);
    }
    return box;
  }

  private attention(): HTMLElement {
    const wrap = this.attentionEl;
    wrap.hidden = true;
    this.alert.setAttribute('role', 'alert');
    this.alert.hidden = true;
    this.stale.setAttribute('role', 'status');
    this.stale.hidden = true;
    this.storeDown.setAttribute('role', 'status');
    this.storeDown.hidden = true;
    this.storeDown.title = 'The Jupyter server cannot reach the run store (its database). Events, '
      + 'snapshots and commands wait for it; nothing is lost, and nothing needs doing.';
    wrap.append(this.alert, this.pauseNote.element, this.stale, this.storeDown, this.approvals.element);
    return wrap;
  }

  // -- updates --------------------------------------------------------------------------

  private onUpdate(u: Update): void {
    if (this.disposed) return;
    if (u.error) {
      this.element.dataset.state = "unknown";
      setText(this.stateText, u.error.code === 'unknown_run' ? 'unknown run' : 'cannot show');
      this.dag.setMessage(u.error.code === 'unknown_run'
        ? unknownRunText(this.opts.runId)
        : `This run cannot be shown: ${u.error.message}`);
      return;
    }
    if (!u.state) return;
    this.state = u.state;
    this.lastUpdateAt = Date.now();
    if (u.snapshot) {
      const first = this.book.lastSeq < 0;
      this.book.onSnapshot(u.state.seq);
      if (first && u.state.seq > 0) this.backfill(u.state.seq);
      this.insights.onSnapshot(u.state);
    }
    if (u.events.length) {
      this.book.onEvents(u.events);
      this.insights.onEvents(u.events);
    }
    this.dirtyInsights = true;
    this.dirtyLog = true;
    this.dirtyRun ||= u.runChanged || u.snapshot;
    for (const id of u.nodes) this.dirtyNodes.add(id);
    if (this.dagBehind) {  // hidden: no drawing, only what to draw when shown
      for (const id of u.nodes) this.dagBehind.nodes.add(id);
      this.dagBehind.full ||= u.snapshot;
    } else {
      this.dag.update(u.state, u.nodes, u.snapshot);
    }
    this.schedule();
  }

  /** Fill the log with what happened before this view opened (the last ~50 shown). */
  private backfill(seq: number): void {
    const history = this.opts.transport.history;
    if (!history) return;
    const limit = Math.min(seq, 500);
    history.call(this.opts.transport, this.opts.runId, seq - limit, limit).then(events => {
      if (this.disposed) return;
      this.book.backfill(events);
      this.dirtyLog = true;
      this.schedule();
    }, () => undefined);
  }

  private schedule(): void {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  private flush(): void {
    this.frame = 0;
    const st = this.state;
    if (!st) return;
    const sel = this.dag.selectedId;
    if (this.dirtyRun) {
      this.renderRun(st.run);
      this.approvals.render(st);
      this.pauseNote.render(st);
      this.updateAttention();
    }
    if (this.dirtyRun || (sel && this.dirtyNodes.has(sel))) this.renderDetail();
    if (this.dirtyLog) this.log.sync();
    if (this.dirtyInsights) this.insights.render(st, sel);
    this.dirtyRun = false;
    this.dirtyLog = false;
    this.dirtyInsights = false;
    this.dirtyNodes.clear();
  }

  private renderRun(run: RunInfo): void {
    const root = this.element;
    if (root.dataset.state !== run.state) root.dataset.state = run.state;
    const look = RUN_STATE_LOOK[run.state];
    this.stateBadge.dataset.status = look;
    this.stateGlyph.setAttribute('d', GLYPHS[look].d);
    this.stateGlyph.setAttribute('class', GLYPHS[look].fill ? 'cr-glyph-fill' : 'cr-glyph-stroke');
    setText(this.stateText, run.state.replace(/_/g, ' '));
    this.stateBadge.title = run.reason ? `${run.state} — ${run.reason}` : run.state;
    setText(this.name, run.name || run.id);
    this.name.title = run.description ? `${run.name}\n${run.description}` : run.name;
    setText(this.runIdEl, run.id.slice(0, 8));
    this.runIdEl.title = `Run id ${run.id}`;
    for (const [s, seg] of this.progressSegs) {
      seg.style.width = `${run.total ? (100 * (run.counts[s] ?? 0)) / run.total : 0}%`;
    }
    const text = progressText(run.counts, run.done, run.total);
    this.progressBar.setAttribute('aria-valuemax', String(run.total));
    this.progressBar.setAttribute('aria-valuenow', String(run.done));
    this.progressBar.setAttribute('aria-valuetext', text);
    setText(this.progressText, text);
    setText(this.cost, formatCost(run.cost_usd));
    setText(this.tokens, formatCount(run.input_tokens + run.output_tokens));
    this.tokens.title = `${run.input_tokens.toLocaleString()} input · ${run.output_tokens.toLocaleString()} output tokens`;
    this.renderElapsed(run);
    this.renderControls(run);
    this.renderAlert(run);
    this.renderStale();
    if (this.state && !this.state.nodes.size) {
      this.dag.setMessage('No steps yet: the plan appears here as soon as it is made.');
    }
  }

  private renderElapsed(run: RunInfo): void {
    const ms = runDuration(run, Date.now());
    setText(this.elapsed, Number.isFinite(ms) ? formatDuration(ms) : 'not started');
    this.elapsed.title = run.started_at
      ? `started ${new Date(run.started_at).toLocaleString()}${run.finished_at ? `, finished ${new Date(run.finished_at).toLocaleString()}` : ''}`
      : 'the run has not started';
  }

  private renderControls(run: RunInfo): void {
    for (const [action, b] of this.buttons) {
      const legal = isLegal(action, run.state);
      const busy = this.busyKeys.has(action);
      b.disabled = !legal || busy;
      b.title = legal ? ACTION_TEXT[action].help : `Cannot ${action} a run that is ${run.state.replace(/_/g, ' ')}`;
    }
  }

  private renderAlert(run: RunInfo): void {
    const lost = processGone(run) || this.gone;
    const err = run.last_error;
    // Failed steps are listed only once the run has failed (no scan of every node per frame).
    const failedNodes = run.state === 'failed' && this.state
      ? [...this.state.nodes.values()].filter(n => n.status === 'failed') : [];
    const sig = JSON.stringify([lost, err, run.state, failedNodes.map(n => n.id)]);
    if (sig === this.alertSig) return;
    this.alertSig = sig;
    this.alert.replaceChildren();
    this.alert.dataset.kind = lost ? 'executor_lost' : err ? 'error' : run.state === 'failed' ? 'failed' : '';
    if (lost) {
      this.alert.append(el('strong', '', 'The process running this workflow is gone (executor lost). '),
                        el('span', '', 'Commands that need it are refused; completed steps keep their results.'));
      if (run.state === 'completed') {
        this.alert.append(el('div', '', 'To run steps again, select one: its details say how, from a kernel.'));
      } else {
        this.alert.append(resumeHint(run.id, 'To continue it:'));
      }
    } else if (err) {
      this.alert.append(el('strong', '', `Error${err.code ? ` (${err.code})` : ''}: `));
    }
    if (err?.message) {
      this.alert.append(el('div', 'cr-alert-detail', `${err.message}${err.timestamp ? ` — ${clockTime(err.timestamp)}` : ''}`));
    }
    if (!lost && !err && run.state === 'failed') {
      this.alert.append(el('strong', '', 'The run failed. '));
    }
    if (run.state === 'failed' && failedNodes.length) this.alert.append(this.failedList(failedNodes, lost));
    this.alert.hidden = !this.alert.childNodes.length;
  }

  private failedList(nodes: NodeInfo[], lost: boolean): HTMLElement {
    const span = el('span', 'cr-alert-nodes', lost ? 'Interrupted: ' : 'Failed: ');
    nodes.slice(0, 8).forEach((n, i) => {
      const b = el('button', 'cr-link', n.label);
      b.type = 'button';
      b.title = `Show ${n.id}: ${n.error ? `${n.error.type}: ${n.error.message}` : 'failed'}`;
      b.addEventListener('click', () => this.dag.select(n.id, true));
      span.append(i ? ', ' : '', b);
    });
    if (nodes.length > 8) span.append(` and ${nodes.length - 8} more`);
    span.append(lost ? '.' : ' — select one to see the error and retry it.');
    return span;
  }

  private renderDetail(): void {
    const id = this.dag.selectedId;
    const node = id ? this.state?.nodes.get(id) ?? null : null;
    this.detail.show(node, this.state?.run ?? null);
  }

  private onSelect(_id: string | null): void {
    this.renderDetail();
    this.dirtyInsights = true;
    this.schedule();
  }

  // -- commands -------------------------------------------------------------------------

  /**
   * Send a command; its button is disabled while in flight (with its siblings of the
   * same key), and a refusal is shown next to it, in the server's words.
   */
  private async send(key: string, b: HTMLButtonElement, errorEl: HTMLElement, action: string,
                     nodeId?: string | null, payload?: Record<string, unknown> | null): Promise<void> {
    if (this.busyKeys.has(key)) return;
    this.busyKeys.add(key);
    b.disabled = true;
    b.setAttribute('aria-busy', 'true');
    errorEl.hidden = true;
    this.refreshBusy(key);
    let ack: Ack | null = null;
    let failure: string | null = null;
    try {
      ack = await this.opts.transport.command(this.opts.runId, action, nodeId ?? null, payload ?? null);
      if (!ack.ok) failure = ack.error || ack.code || 'refused';
    } catch (err) {
      failure = err instanceof Error ? err.message : String(err);
    }
    this.busyKeys.delete(key);
    b.removeAttribute('aria-busy');
    if (this.disposed) return;
    if (failure) {
      errorEl.textContent = `Could not ${action}: ${failure}`;
      errorEl.hidden = false;
    }
    if (ack?.code === 'executor_lost' && !this.gone) {
      // A settled run's process may end without the log saying so: now it is known.
      this.gone = true;
      if (this.state) this.renderAlert(this.state.run);
      this.updateAttention();
      this.renderDetail();
    }
    b.disabled = false;
    this.refreshBusy(key);
  }

  /** Re-derive the enabled state of whatever a command key disables. */
  private refreshBusy(key: string): void {
    const st = this.state;
    if (!st) return;
    if ((RUN_ACTIONS as string[]).includes(key)) this.renderControls(st.run);
    else if (key.startsWith('approval:')) this.approvals.render(st);
    else if (key.startsWith('retry:') || key.startsWith('rerun:')) this.renderDetail();
  }

  // -- connection and clock -------------------------------------------------------------

  private showConnection(info: ConnectionInfo): void {
    this.conn = info;
    const kind = this.opts.transport.kind;
    const attr = connectionAttr(kind, info);
    if (this.element.dataset.connection !== attr) this.element.dataset.connection = attr;
    this.connBadge.dataset.connection = attr;
    setText(this.connBadge, connectionLabel(kind, info));
    this.scheduleCountdown(info);
    this.connBadge.title = kind === 'comm'
      ? 'Connected through the notebook kernel (no server extension on this page): updates arrive while the kernel runs, but controls act only when the kernel is idle.'
      : info.state === 'live' ? 'Live connection to the Jupyter server'
        : `Not connected${info.lastError ? ` (last error: ${info.lastError})` : ''}; retrying automatically`;
    this.renderStale();
    this.renderStore();
  }

  /** While the server's run store does not answer, say so (the socket itself is fine). */
  private renderStore(): void {
    const since = this.conn.storeDownSince;
    const attr = since ? 'unavailable' : 'available';
    if (this.element.dataset.store !== attr) this.element.dataset.store = attr;
    this.storeDown.hidden = !since;
    if (since) setText(this.storeDown, `${storeDownText(since)}.`);
    this.updateAttention();
  }

  /** "reconnecting in N s" changes exactly when N does, not up to a second late. */
  private scheduleCountdown(info: ConnectionInfo): void {
    if (this.countdown) clearTimeout(this.countdown);
    this.countdown = null;
    if (this.disposed || info.state !== 'reconnecting' || info.retryInMs === undefined) return;
    const next = (info.retryInMs % 1000) + 15;
    this.countdown = setTimeout(() => this.showConnection(this.opts.transport.info()), next);
  }

  /** When the socket is down, say how old the picture is: the view must not look live. */
  private renderStale(): void {
    const down = this.opts.transport.kind !== 'comm' && this.conn.state !== 'live';
    const show = down && !!this.state;
    this.stale.hidden = !show;
    this.updateAttention();
    if (!show) return;
    const when = this.lastUpdateAt ? new Date(this.lastUpdateAt).toLocaleTimeString([], { hour12: false }) : '';
    setText(this.stale, `Not connected: showing the state as of ${when} (event #${this.state!.seq}). It catches up by itself when the connection returns.`);
  }

  /** The attention area takes no room when nothing in it is shown. */
  private updateAttention(): void {
    this.attentionEl.hidden = this.alert.hidden && this.stale.hidden && this.storeDown.hidden
      && this.approvals.element.hidden && this.pauseNote.element.hidden;
  }

  private tick(): void {
    const run = this.state?.run;
    if (run && !isSettled(run.state)) {
      this.renderElapsed(run);
      if (this.insights.tab === 'timeline') this.insights.timeline.render(); // the "now" line
    }
    const sel = this.dag.selectedId;
    const node = sel ? this.state?.nodes.get(sel) : undefined;
    if (node?.started_at && !node.finished_at) this.renderDetail(); // its duration ticks
  }
}

/** The busy key of an answer to an approval request (one answer in flight per request). */
function approvalKey(a: PendingApproval): string {
  return `approval:${a.approval_id}`;
}
