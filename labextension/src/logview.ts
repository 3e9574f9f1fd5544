// The activity log's DOM: one row per LogBook row, keyed by seq (data-seq) so a
// row is never drawn twice; reconciled with the book once per animation frame.
import { renderAgentText } from './agenttext';
import { el } from './dom';
import { GapEntry, LogBook, LogEntry, LogRow } from './eventlog';
import { baseName, clockTime } from './status';

export interface LogViewOptions {
  fileUrl?: (path: string) => string | null;
  /** The label of a node, for rows that name one. */
  nodeLabel: (id: string) => string;
  /** Select a node (clicking its name in a row). */
  select: (id: string) => void;
}

function rowKey(r: LogRow): string {
  return r.kind === 'event' ? String(r.seq) : r.key;
}

export class LogView {
  readonly element: HTMLElement;
  private readonly list: HTMLOListElement;
  private readonly count: HTMLElement;
  private readonly empty: HTMLElement;
  private readonly rows = new Map<string, HTMLElement>();

  constructor(private readonly book: LogBook, private readonly opts: LogViewOptions) {
    this.element = el('section', 'cr-panel cr-log');
    this.element.setAttribute('aria-label', 'Activity');
    const head = el('div', 'cr-panel-title', 'Activity');
    this.count = el('span', 'cr-muted cr-log-count');
    head.append(this.count);
    this.list = el('ol', 'cr-log-list');
    this.list.setAttribute('aria-live', 'polite');
    this.list.setAttribute('aria-relevant', 'additions');
    this.empty = el('p', 'cr-muted cr-log-empty', 'Agent messages, files, failures, approvals and run state changes appear here as they happen.');
    this.element.append(head, this.empty, this.list);
    // Follow the tail while the newest row is in sight; stop when the reader scrolls up.
    this.list.addEventListener('scroll', () => { this.following = this.tailInSight(); }, { passive: true });
  }

  private following = true;

  private tailInSight(): boolean {
    const last = this.list.lastElementChild as HTMLElement | null;
    return !last || last.offsetTop + last.offsetHeight <= this.list.scrollTop + this.list.clientHeight + 2;
  }

  /**
   * Scroll to the newest row with the top row whole: the list scrolls to the first row
   * that starts at or below its furthest scroll, padding its end by what is missing (less
   * than a row), so no row is cut in half at the top edge.
   */
  private showTail(): void {
    const list = this.list;
    list.style.paddingBottom = '';
    const end = list.scrollHeight - list.clientHeight;
    if (end <= 0) return;
    let top = end;
    for (const li of Array.from(list.children) as HTMLElement[]) {
      if (li.offsetTop >= end) {
        top = li.offsetTop;
        break;
      }
    }
    if (top > end) list.style.paddingBottom = `${top - end}px`;
    list.scrollTop = top;
  }

  /** Make the DOM match the book: drop rows it no longer has, append the new ones. */
  sync(): void {
    const keys = new Set(this.book.rows.map(rowKey));
    for (const [k, li] of this.rows) {
      if (!keys.has(k)) {
        li.remove();
        this.rows.delete(k);
      }
    }
    let added = false;
    let prev: HTMLElement | null = null;
    for (const r of this.book.rows) {
      const k = rowKey(r);
      let li = this.rows.get(k);
      if (!li) {
        li = r.kind === 'event' ? this.eventRow(r) : this.gapRow(r);
        this.rows.set(k, li);
        if (prev) prev.after(li); // in book order (a backfill inserts older rows first)
        else this.list.prepend(li);
        added = true;
      }
      prev = li;
    }
    if (added && this.following) this.showTail();
    const n = this.book.rows.filter(r => r.kind === 'event').length;
    this.count.textContent = n ? ` · last ${n}` : '';
    this.empty.hidden = this.book.rows.length > 0;
  }

  private eventRow(e: LogEntry): HTMLElement {
    const li = el('li', 'cr-log-row');
    li.dataset.seq = String(e.seq);
    li.dataset.tone = e.tone;
    li.dataset.type = e.type;
    const meta = el('div', 'cr-log-meta');
    const time = el('time', 'cr-log-time', clockTime(e.timestamp));
    time.dateTime = e.timestamp;
    time.title = `${e.timestamp} · event #${e.seq}`;
    meta.append(time);
    if (e.nodeId) {
      const id = e.nodeId;
      const node = el('button', 'cr-log-node', this.opts.nodeLabel(id));
      node.type = 'button';
      node.title = `Show step ${id}`;
      node.addEventListener('click', () => this.opts.select(id));
      meta.append(node);
    }
    if (e.agent) meta.append(el('span', 'cr-log-agent', e.agent));
    li.append(meta, this.eventText(e));
    if (e.body) {
      const det = el('details', 'cr-log-more');
      // An agent's words as text and code blocks; other bodies (JSON, tracebacks) verbatim.
      det.append(el('summary', '', e.bodyLabel),
                 e.type === 'agent_message' ? renderAgentText(e.body) : el('pre', 'cr-pre', e.body));
      li.append(det);
    }
    return li;
  }

  private eventText(e: LogEntry): HTMLElement {
    if (e.type === 'agent_message') return renderAgentText(e.text, 'cr-log-text');
    const text = el('div', 'cr-log-text');
    if (!e.file) {
      text.textContent = e.text;
      return text;
    }
    // A file: link its name only when the server serves the path.
    const url = this.opts.fileUrl?.(e.file.path) ?? null;
    const name = baseName(e.file.path);
    const i = e.text.indexOf(name);
    const nameEl = url ? el('a', 'cr-file-name', name) : el('span', 'cr-file-name', name);
    if (url) {
      (nameEl as HTMLAnchorElement).href = url;
      (nameEl as HTMLAnchorElement).target = '_blank';
      (nameEl as HTMLAnchorElement).rel = 'noopener';
    }
    nameEl.title = e.file.path;
    if (i < 0) text.append(e.text, ' ', nameEl);
    else text.append(e.text.slice(0, i), nameEl, e.text.slice(i + name.length));
    return text;
  }

  private gapRow(g: GapEntry): HTMLElement {
    const li = el('li', 'cr-log-row cr-log-gap');
    li.dataset.gap = `${g.from}-${g.to}`;
    const span = g.from === g.to ? `event #${g.from}` : `events #${g.from}–#${g.to}`;
    li.textContent = g.initial
      ? `${span[0].toUpperCase()}${span.slice(1)} happened before this view opened: the graph and the step details show their outcome.`
      : `Reconnected: ${span} arrived as a snapshot. The graph and details are up to date; those events are not listed here.`;
    return li;
  }
}
