// The selected step, in full: status and timing, progress, error and traceback, the
// last agent message, metrics, result and files. Each section is rebuilt only when
// what it shows changed, so an open traceback or a loaded image survives updates.
import type { FileInfo, NodeInfo, RunInfo } from './protocol';
import { renderAgentText } from './agenttext';
import { button, el, glyphIcon } from './dom';
import { FileLinks, fileLink, thumbnail } from './files';
import { formatCost } from './runlist';
import { processGone, resumeHint } from './resumehint';
import { COMMAND_NODE_STATES, COMMAND_RUN_STATES } from './states';
import {
  attemptText, clockTime, durationMs, formatBytes, formatCount, formatMetric, formatSeconds, metricSummary,
  STATUS_LABEL
} from './status';

export interface DetailPaneOptions extends FileLinks {
  /** Show the step's output in the console. */
  showOutput?: (nodeId: string) => void;
  /** Send a retry for the node; the pane passes its button and error line. */
  retry: (nodeId: string, button: HTMLButtonElement, error: HTMLElement) => void;
  /** Send a re-run of the node and what follows it (same arguments). */
  rerun: (nodeId: string, button: HTMLButtonElement, error: HTMLElement) => void;
  /** Whether the run's process is gone (a command was refused with executor_lost). */
  gone: () => boolean;
  /** Whether a command keyed `key` is in flight (its button stays disabled). */
  busy: (key: string) => boolean;
}

type Section = (n: NodeInfo, ctx: { run: RunInfo | null; now: number }) => [string, () => Node | null];

export class DetailPane {
  readonly element: HTMLElement;
  private readonly body: HTMLElement;
  private readonly empty: HTMLElement;
  private readonly slots: Array<{ el: HTMLElement; sig: string | null; section: Section }>;
  private nodeId: string | null = null;

  constructor(private readonly opts: DetailPaneOptions) {
    this.element = el('section', 'cr-panel cr-detail');
    this.element.setAttribute('aria-label', 'Step details');
    this.element.setAttribute('aria-live', 'off');
    this.empty = el('div', 'cr-empty');
    this.empty.append(el('div', 'cr-panel-title', 'Step details'),
                      el('p', 'cr-muted', 'Select a step in the graph (click it, or Tab to the graph and press Enter) to see its progress, messages, files and errors.'));
    this.body = el('div', 'cr-detail-body');
    const sections: Section[] = [
      this.head, this.facts, this.progress, this.errorBox, this.approval, this.message,
      this.output, this.metrics, this.result, this.files
    ];
    this.slots = sections.map(section => ({ el: el('div', 'cr-detail-section'), sig: null, section }));
    this.body.append(...this.slots.map(s => s.el));
    this.element.append(this.empty, this.body);
    this.show(null, null);
  }

  get shownId(): string | null {
    return this.nodeId;
  }

  /** Show `node` (null: nothing selected). Cheap when nothing it shows changed. */
  show(node: NodeInfo | null, run: RunInfo | null): void {
    if ((node?.id ?? null) !== this.nodeId) {
      this.nodeId = node?.id ?? null;
      for (const s of this.slots) s.sig = null;
    }
    this.empty.hidden = !!node;
    this.body.hidden = !node;
    if (!node) return;
    const ctx = { run, now: Date.now() };
    for (const slot of this.slots) {
      const [sig, build] = slot.section.call(this, node, ctx);
      if (sig === slot.sig) continue;
      slot.sig = sig;
      const content = build();
      slot.el.replaceChildren(...(content ? [content] : []));
      slot.el.hidden = !content;
    }
  }

  // -- sections: each returns [signature, builder] ---------------------------------------

  private head: Section = (n, { run }) => {
    const canRetry = COMMAND_NODE_STATES.retry?.includes(n.status) ?? false;
    const busy = this.opts.busy(`retry:${n.id}`);
    // A retry or a re-run runs in the executor's process; when that is gone, say so and
    // say how to continue (wf.resume) instead of offering them.
    const lost = processGone(run) || this.opts.gone();
    const canRerun = !!run && (COMMAND_NODE_STATES.rerun?.includes(n.status) ?? false) &&
      (COMMAND_RUN_STATES.rerun?.includes(run.state) ?? false);
    const rerunBusy = this.opts.busy(`rerun:${n.id}`);
    const sig = `${n.id}|${n.label}|${n.status}|${canRetry}|${busy}|${lost}|${canRerun}|${rerunBusy}|${n.description}`;
    return [sig, () => {
      const wrap = el('div', 'cr-detail-head');
      const title = el('div', 'cr-detail-title');
      const badge = el('span', 'cr-status-chip');
      badge.dataset.status = n.status;
      badge.append(glyphIcon(n.status, 12), el('span', '', STATUS_LABEL[n.status]));
      const name = el('h3', 'cr-detail-name', n.label);
      name.title = n.label;
      title.append(name, badge);
      wrap.append(title);
      if (n.label !== n.id) wrap.append(el('div', 'cr-mono cr-muted', n.id));
      if (n.description) wrap.append(el('p', 'cr-detail-desc', n.description));
      if (canRetry) wrap.append(this.retryRow(n, busy, lost));
      if (canRerun && !lost) wrap.append(this.rerunRow(n, rerunBusy));
      if (lost && run && (canRetry || canRerun)) {
        // A completed step runs again only when named (a plain resume keeps its result).
        wrap.append(resumeHint(run.id, 'The process that ran this workflow is gone.',
                               n.status === 'completed' ? n.id : undefined));
      }
      return wrap;
    }];
  };

  private rerunRow(n: NodeInfo, busy: boolean): HTMLElement {
    const row = el('div', 'cr-retry-row');
    const b = button('cr-btn', busy ? 'Re-running…' : 'Re-run from here',
                     `Re-run step ${n.label} and everything downstream of it`, glyphIcon('pending', 12));
    b.dataset.action = 'rerun';
    b.disabled = busy;
    const err = el('div', 'cr-cmd-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;
    b.addEventListener('click', () => this.opts.rerun(n.id, b, err));
    row.append(b, el('span', 'cr-muted', 'runs this step again, and everything downstream of it'), err);
    return row;
  }

  private retryRow(n: NodeInfo, busy: boolean, lost: boolean): HTMLElement {
    const row = el('div', 'cr-retry-row');
    const b = button('cr-btn cr-btn-primary', busy ? 'Retrying…' : 'Retry this step',
                     `Retry step ${n.label}`, glyphIcon('retrying', 12));
    b.dataset.action = 'retry';
    b.disabled = busy || lost;
    const err = el('div', 'cr-cmd-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;
    b.addEventListener('click', () => this.opts.retry(n.id, b, err));
    const help = lost ? 'not possible: the process that ran this workflow is gone'
      : 'runs it again, then what depends on it';
    row.append(b, el('span', 'cr-muted', help), err);
    return row;
  }

  private facts: Section = (n, { now }) => {
    const dur = durationMs(n.started_at, n.finished_at, now);
    const attempts = n.attempt ? attemptText(n.attempt, n.retries) : `not started (${n.retries} ${n.retries === 1 ? 'retry' : 'retries'} allowed)`;
    const rows: Array<[string, string, string?]> = [
      ['Attempt', attempts],
      ['Started', clockTime(n.started_at) || '—', n.started_at ?? undefined],
      ['Finished', clockTime(n.finished_at) || (n.started_at ? 'not yet' : '—'), n.finished_at ?? undefined],
      ['Duration', Number.isFinite(dur) ? formatSeconds(dur) + (n.finished_at ? '' : ' so far') : '—'],
      ['Cost', formatCost(n.cost_usd)],
      ['Tokens', `${formatCount(n.input_tokens)} in · ${formatCount(n.output_tokens)} out`]
    ];
    return [JSON.stringify(rows), () => {
      const dl = el('dl', 'cr-facts');
      for (const [k, v, title] of rows) {
        const dd = el('dd', '', v);
        if (title) dd.title = title;
        dl.append(el('dt', '', k), dd);
      }
      return dl;
    }];
  };

  private progress: Section = n => {
    // Progress belongs to an attempt in flight; a failed attempt's is history.
    const live = n.status === 'running' || n.status === 'paused' || n.status === 'waiting_approval';
    const show = live && (n.progress !== null || !!n.progress_message);
    return [`${n.progress}|${n.progress_message}|${n.status}`, () => {
      if (!show) return null;
      const wrap = el('div', 'cr-detail-progress');
      if (n.progress !== null) {
        const pct = Math.round(n.progress * 100);
        const bar = el('div', 'cr-bar');
        bar.setAttribute('role', 'progressbar');
        bar.setAttribute('aria-valuemin', '0');
        bar.setAttribute('aria-valuemax', '100');
        bar.setAttribute('aria-valuenow', String(pct));
        bar.setAttribute('aria-label', 'Step progress');
        const fill = el('div', 'cr-bar-fill');
        fill.style.width = `${pct}%`;
        bar.append(fill);
        wrap.append(bar, el('span', 'cr-bar-text', `${pct}%`));
      }
      if (n.progress_message) wrap.append(el('div', 'cr-muted cr-wrap', n.progress_message));
      return wrap;
    }];
  };

  private errorBox: Section = n => {
    const e = n.error;
    return [e ? `${n.status}|${e.type}|${e.message}|${e.traceback?.length}` : '', () => {
      if (!e) return null;
      const box = el('div', 'cr-error-box');
      const heading = n.status === 'failed' ? 'Failed' : n.status === 'retrying' ? 'Last attempt failed' : 'Error';
      box.append(el('div', 'cr-error-head', `${heading}: ${e.type}`), el('div', 'cr-error-msg', e.message));
      if (e.traceback) {
        const det = el('details', 'cr-traceback');
        det.append(el('summary', '', 'Traceback'), el('pre', 'cr-pre', e.traceback));
        box.append(det);
      }
      return box;
    }];
  };

  private approval: Section = n => {
    const a = n.approval;
    return [a ? a.approval_id : '', () => {
      if (!a) return null;
      const box = el('div', 'cr-note cr-note-warn');
      const what = a.kind === 'question' ? 'Waiting for your answer: ' : 'Waiting for your approval: ';
      box.append(el('strong', '', what), el('span', '', a.prompt),
                 el('div', 'cr-muted', `asked at ${clockTime(a.requested_at)} — answer it above the graph`));
      return box;
    }];
  };

  private message: Section = n => {
    const m = n.last_message;
    return [m ? `${m.timestamp}|${m.agent}|${m.message}` : '', () => {
      if (!m) return null;
      const box = el('div', 'cr-detail-block');
      const head = el('div', 'cr-block-title', 'Last message');
      head.append(el('span', 'cr-muted', ` · ${m.agent} · ${clockTime(m.timestamp)}`));
      box.append(head, renderAgentText(m.message, 'cr-message'));
      return box;
    }];
  };

  private output: Section = n => {
    const lines = n.output_lines ?? 0, dropped = n.output_dropped ?? 0;
    return [`${n.id}|${lines}|${dropped}`, () => {
      if (!lines && !dropped) return null;
      const row = el('div', 'cr-detail-output');
      const text = `Output: ${lines.toLocaleString()} line${lines === 1 ? '' : 's'}` +
        (dropped ? ` (${dropped.toLocaleString()} dropped over the output budget)` : '');
      row.append(el('span', '', text));
      if (this.opts.showOutput) {
        const b = button('cr-btn', 'Show in console', `Show the output of ${n.label} in the console`);
        b.addEventListener('click', () => this.opts.showOutput!(n.id));
        row.append(b);
      }
      return row;
    }];
  };

  private metrics: Section = n => {
    const entries = Object.entries(n.metrics ?? {});
    const stats = n.metric_stats ?? {};
    return [JSON.stringify([entries, stats]), () => {
      if (!entries.length) return null;
      const box = el('div', 'cr-detail-block');
      const table = el('table', 'cr-metrics');
      for (const [k, v] of entries) {
        const tr = el('tr');
        const value = el('td', 'cr-mono', formatMetric(v));
        const s = stats[k];
        if (s?.unit) value.append(el('span', 'cr-muted', ` ${s.unit}`));
        value.append(el('span', 'cr-muted cr-metric-last', ' last'));
        value.title = metricSummary(v, s);
        tr.append(el('th', '', k), value);
        table.append(tr);
      }
      box.append(el('div', 'cr-block-title', 'Metrics'), table);
      return box;
    }];
  };

  private result: Section = n => [n.result_preview ?? '', () => {
    if (n.result_preview === null || n.result_preview === undefined) return null;
    const box = el('div', 'cr-detail-block');
    box.append(el('div', 'cr-block-title', 'Result'), el('pre', 'cr-pre cr-result', n.result_preview));
    return box;
  }];

  private files: Section = n => {
    const files = n.files ?? [];
    return [files.map(f => `${f.path}|${f.timestamp}|${f.size}`).join('\n'), () => {
      if (!files.length) return null;
      const box = el('div', 'cr-detail-block');
      const ul = el('ul', 'cr-files');
      for (const f of files) ul.append(this.fileRow(f));
      box.append(el('div', 'cr-block-title', `Files (${files.length})`), ul);
      return box;
    }];
  };

  private fileRow(f: FileInfo): HTMLElement {
    const li = el('li', 'cr-file');
    // Only paths the server serves get a link; anything else is text, never a guessed URL.
    const meta = [f.mime, formatBytes(f.size), clockTime(f.timestamp)].filter(Boolean).join(' · ');
    li.append(fileLink(f, this.opts), el('span', 'cr-muted', meta ? ` ${meta}` : ''));
    if (f.description) li.append(el('div', 'cr-file-desc', f.description));
    li.append(el('div', 'cr-mono cr-muted cr-file-path', f.path));
    const thumb = thumbnail(f, this.opts);
    if (thumb) li.append(thumb);
    return li;
  }
}
