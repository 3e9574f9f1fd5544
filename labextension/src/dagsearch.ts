// Find a step of the DAG by name or id: a search box over the canvas lists the matching
// steps (with their current status) from every node of the run, drawn or collapsed into a
// "+N more"; Enter or a click selects one and the view brings it into sight. Matching is
// pure (findNodes); the box is text only (textContent) and works from the keyboard.
import type { NodeInfo } from './protocol';
import { el as html, glyphIcon } from './dom';
import { STATUS_LABEL } from './status';

/** How many matches the list shows; the rest are counted. */
export const MAX_MATCHES = 30;

export interface SearchResult {
  matches: NodeInfo[];
  /** Every node that matches, listed or not. */
  total: number;
}

/**
 * The nodes whose label or id contains every word of `query` (case-insensitive), best
 * first: an exact id or label, then a prefix of one, then the rest; ties keep the run's
 * node order. At most `limit` are returned, `total` counts them all.
 */
export function findNodes(nodes: Iterable<NodeInfo>, query: string, limit = MAX_MATCHES): SearchResult {
  const q = query.trim().toLowerCase();
  if (!q) return { matches: [], total: 0 };
  const words = q.split(/\s+/);
  const ranked: Array<[number, number, NodeInfo]> = [];
  let i = 0;
  for (const n of nodes) {
    const id = n.id.toLowerCase();
    const label = n.label.toLowerCase();
    const hay = `${label}\u0000${id}`;
    if (!words.every(w => hay.includes(w))) continue;
    const rank = id === q || label === q ? 0 : id.startsWith(q) || label.startsWith(q) ? 1 : 2;
    ranked.push([rank, i++, n]);
  }
  ranked.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return { matches: ranked.slice(0, limit).map(r => r[2]), total: ranked.length };
}

export interface DagSearchHost {
  /** Every node of the run, now. */
  nodes(): Map<string, NodeInfo> | null;
  /** A match was chosen: select it and bring it into view. */
  pick(id: string): void;
}

let counter = 0;

/** The search box and its list of matches (a combobox with a listbox). */
export class DagSearch {
  readonly element: HTMLDivElement;
  private readonly input: HTMLInputElement;
  private readonly list: HTMLUListElement;
  private readonly status: HTMLDivElement;
  private readonly prefix = `cr-search-${++counter}`;
  private shown: NodeInfo[] = [];
  private active = -1;

  constructor(private readonly host: DagSearchHost) {
    this.element = html('div', 'cr-search');
    this.input = html('input', 'cr-search-input');
    this.input.type = 'search';
    this.input.placeholder = 'Find a step…';
    this.input.autocomplete = 'off';
    this.input.spellcheck = false;
    this.input.setAttribute('role', 'combobox');
    this.input.setAttribute('aria-label', 'Find a step by name or id');
    this.input.setAttribute('aria-autocomplete', 'list');
    this.input.setAttribute('aria-expanded', 'false');
    this.list = html('ul', 'cr-search-list');
    this.list.id = `${this.prefix}-list`;
    this.list.setAttribute('role', 'listbox');
    this.list.setAttribute('aria-label', 'Matching steps');
    this.list.hidden = true;
    this.input.setAttribute('aria-controls', this.list.id);
    this.status = html('div', 'cr-search-status');
    this.status.setAttribute('role', 'status');
    this.status.hidden = true;
    this.element.append(this.input, this.list, this.status);
    this.input.addEventListener('input', () => this.search());
    this.input.addEventListener('keydown', ev => this.onKey(ev));
    this.input.addEventListener('focus', () => {
      if (this.input.value.trim()) this.search();
    });
    this.element.addEventListener('focusout', ev => {
      if (!this.element.contains(ev.relatedTarget as Node | null)) this.close();
    });
    // Keep the focus in the box when an option is pressed (a click picks it).
    this.list.addEventListener('mousedown', ev => ev.preventDefault());
    this.list.addEventListener('click', ev => {
      const li = (ev.target as Element).closest?.('[data-node-id]') as HTMLElement | null;
      if (li) this.pick(li.dataset.nodeId!);
    });
  }

  /** Focus the box (the view's "/" and Ctrl+F keys). */
  focus(): void {
    this.input.focus();
    this.input.select();
  }

  /**
   * Statuses changed: redraw the listed matches with their new statuses (only while the
   * list is open; the list itself stays as it is, no search of every node per update).
   */
  refresh(): void {
    const nodes = this.host.nodes();
    if (this.list.hidden || !nodes) return;
    const now = this.shown.map(n => nodes.get(n.id) ?? n);
    if (now.every((n, i) => n.status === this.shown[i].status && n.label === this.shown[i].label)) return;
    this.shown = now;
    this.list.replaceChildren(...this.shown.map((n, i) => this.option(n, i)));
    this.markActive(false);
  }

  private search(): void {
    const nodes = this.host.nodes();
    const query = this.input.value;
    const found = nodes ? findNodes(nodes.values(), query) : { matches: [], total: 0 };
    this.shown = found.matches;
    this.active = this.shown.length ? 0 : -1;
    this.list.replaceChildren(...this.shown.map((n, i) => this.option(n, i)));
    const open = !!query.trim();
    this.list.hidden = !open || !this.shown.length;
    this.input.setAttribute('aria-expanded', String(!this.list.hidden));
    this.status.hidden = !open;
    this.status.textContent = !found.total ? 'No step matches'
      : found.total > this.shown.length ? `${this.shown.length} of ${found.total} matches: type more to narrow`
        : `${found.total} ${found.total === 1 ? 'match' : 'matches'}`;
    this.markActive();
  }

  private option(n: NodeInfo, i: number): HTMLLIElement {
    const li = html('li', 'cr-search-option');
    li.id = `${this.prefix}-opt-${i}`;
    li.setAttribute('role', 'option');
    li.dataset.nodeId = n.id;
    li.dataset.status = n.status;
    const text = html('span', 'cr-search-text');
    text.append(html('span', 'cr-search-label', n.label));
    if (n.label !== n.id) text.append(html('span', 'cr-search-id', n.id));
    li.append(glyphIcon(n.status, 12), text, html('span', 'cr-search-state', STATUS_LABEL[n.status]));
    return li;
  }

  private markActive(scroll = true): void {
    const opts = this.list.children;
    for (let i = 0; i < opts.length; i++) opts[i].setAttribute('aria-selected', String(i === this.active));
    const cur = this.active >= 0 ? opts[this.active] as HTMLElement | undefined : undefined;
    if (cur) {
      this.input.setAttribute('aria-activedescendant', cur.id);
      if (scroll) this.scrollToActive(cur);
    } else {
      this.input.removeAttribute('aria-activedescendant');
    }
  }

  /** Scroll the list (only the list, never the page) so the active option shows. */
  private scrollToActive(cur: HTMLElement): void {
    const list = this.list;
    if (cur.offsetTop < list.scrollTop) list.scrollTop = cur.offsetTop;
    else if (cur.offsetTop + cur.offsetHeight > list.scrollTop + list.clientHeight) {
      list.scrollTop = cur.offsetTop + cur.offsetHeight - list.clientHeight;
    }
  }

  private onKey(ev: KeyboardEvent): void {
    const n = this.shown.length;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      if (this.list.hidden) this.search();
      if (!n) return;
      this.active = ev.key === 'ArrowDown' ? (this.active + 1) % n : (this.active - 1 + n) % n;
      this.markActive();
    } else if (ev.key === 'Enter') {
      ev.preventDefault();
      if (!n) this.search();
      const hit = this.shown[Math.max(0, this.active)];
      if (hit) this.pick(hit.id);
    } else if (ev.key === 'Escape') {
      ev.stopPropagation();
      if (!this.list.hidden || this.input.value) {
        ev.preventDefault();
        this.input.value = '';
        this.close();
      }
    }
  }

  private pick(id: string): void {
    this.close();
    this.host.pick(id);
  }

  private close(): void {
    this.list.hidden = true;
    this.status.hidden = true;
    this.input.setAttribute('aria-expanded', 'false');
    this.input.removeAttribute('aria-activedescendant');
  }
}
