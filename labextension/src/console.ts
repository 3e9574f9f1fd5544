// The console: what steps printed, logged and warned (step_output events), for the whole
// run or one step. It holds the last LINE_CAP lines of the run and of each of the
// NODE_RINGS steps written to last, renders only the rows in view (fixed row height),
// turns ANSI colour codes into styled text (never HTML), filters by a search string,
// and follows new output until the reader scrolls up.
import type { EventOf } from './state';
import { el, setText, throttled } from './dom';

export const LINE_CAP = 5000;
/** Steps whose own last LINE_CAP lines are held (the ones written to last). */
export const NODE_RINGS = 20;
const ROW_H = 18;
const OVERSCAN = 10;
/** New output is drawn at most this often (ms): a flood scrolls at 10 frames a second. */
const REDRAW_MS = 100;

export interface ConsoleLine {
  seq: number;
  nodeId: string;
  attempt: number;
  stream: string;
  level: string | null;
  text: string;
}

/** A fixed-size ring of lines, oldest first. */
export class Ring {
  private buf: ConsoleLine[] = [];
  private start = 0;
  /** Lines ever pushed (the ring holds the last `cap`). */
  total = 0;

  constructor(readonly cap = LINE_CAP) {}

  push(line: ConsoleLine): void {
    this.total++;
    if (this.buf.length < this.cap) this.buf.push(line);
    else {
      this.buf[this.start] = line;
      this.start = (this.start + 1) % this.cap;
    }
  }

  get size(): number {
    return this.buf.length;
  }

  at(i: number): ConsoleLine {
    return this.buf[(this.start + i) % this.buf.length];
  }

  toArray(): ConsoleLine[] {
    return [...this.buf.slice(this.start), ...this.buf.slice(0, this.start)];
  }
}

export class ConsoleModel {
  readonly run = new Ring();
  private readonly nodes = new Map<string, Ring>();
  /** The line each step is writing now (a progress bar), until it ends. */
  readonly partial = new Map<string, ConsoleLine>();
  /** Bumped on every change: views redraw when it moved. */
  version = 0;

  add(ev: EventOf<'step_output'>): void {
    const d = ev.data;
    let ring = this.nodes.get(d.node_id);
    if (ring) this.nodes.delete(d.node_id); // re-inserted last: the map is in LRU order
    else ring = new Ring();
    this.nodes.set(d.node_id, ring);
    if (this.nodes.size > NODE_RINGS) this.nodes.delete(this.nodes.keys().next().value!);
    for (const l of d.lines ?? []) {
      // An entry holds consecutive lines of one stream, joined by newlines.
      for (const text of l.text.split('\n')) {
        const line: ConsoleLine = { seq: ev.seq, nodeId: d.node_id, attempt: d.attempt, stream: l.stream,
                                    level: l.level ?? null, text };
        this.run.push(line);
        ring.push(line);
      }
    }
    if (d.partial) {
      this.partial.set(d.node_id, { seq: ev.seq, nodeId: d.node_id, attempt: d.attempt,
                                    stream: d.partial.stream, level: d.partial.level ?? null,
                                    text: d.partial.text });
    } else this.partial.delete(d.node_id);
    this.version++;
  }

  /** The held lines of the run (nodeId null) or of one step, then its partial lines. */
  lines(nodeId: string | null): ConsoleLine[] {
    let held: ConsoleLine[];
    if (nodeId === null) held = this.run.toArray();
    else {
      const ring = this.nodes.get(nodeId);
      held = ring ? ring.toArray() : this.run.toArray().filter(l => l.nodeId === nodeId);
    }
    const partial = nodeId === null ? [...this.partial.values()] : this.partial.has(nodeId) ? [this.partial.get(nodeId)!] : [];
    return partial.length ? [...held, ...partial] : held;
  }
}

// -- ANSI ---------------------------------------------------------------------------------

export interface Span {
  text: string;
  /** Class names for colour and weight (cr-ansi-fg-1, cr-ansi-bold, ...), space separated. */
  cls: string;
}

// eslint-disable-next-line no-control-regex
const ESC = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>NOMDEHc78]/g;

/** Text with ANSI escapes as styled spans: SGR colours and bold kept, other codes removed. */
export function ansiSpans(text: string): Span[] {
  if (!text.includes('\x1b')) return [{ text, cls: '' }];
  const out: Span[] = [];
  let fg: string | null = null, bg: string | null = null, bold = false, last = 0;
  const cls = () => [fg && `cr-ansi-fg-${fg}`, bg && `cr-ansi-bg-${bg}`, bold && 'cr-ansi-bold'].filter(Boolean).join(' ');
  ESC.lastIndex = 0;
  for (let m = ESC.exec(text); m; m = ESC.exec(text)) {
    if (m.index > last) out.push({ text: text.slice(last, m.index), cls: cls() });
    last = ESC.lastIndex;
    if (m[2] !== 'm') continue;
    const codes = (m[1] || '0').split(';').map(c => parseInt(c || '0', 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { fg = bg = null; bold = false; }
      else if (c === 1) bold = true;
      else if (c === 22) bold = false;
      else if (c >= 30 && c <= 37) fg = String(c - 30);
      else if (c >= 90 && c <= 97) fg = String(c - 90 + 8);
      else if (c === 39) fg = null;
      else if (c >= 40 && c <= 47) bg = String(c - 40);
      else if (c >= 100 && c <= 107) bg = String(c - 100 + 8);
      else if (c === 49) bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) i += 2; // 256 colours: not kept
      else if ((c === 38 || c === 48) && codes[i + 1] === 2) i += 4; // true colour: not kept
    }
  }
  if (last < text.length) out.push({ text: text.slice(last), cls: cls() });
  return out.filter(s => s.text);
}

/** The text without escapes (for search). */
export function plainText(text: string): string {
  return text.includes('\x1b') ? text.replace(ESC, '') : text;
}

/** The tag a line shows for its stream: out, err, warning, dropped, or a log record's level. */
export function streamTag(l: ConsoleLine): string {
  if (l.stream === 'stdout') return 'out';
  if (l.stream === 'stderr') return 'err';
  if (l.stream === 'log') return (l.level ?? 'log').toLowerCase();
  return l.stream;
}

// -- the view -------------------------------------------------------------------------------

export interface ConsoleViewOptions {
  nodeLabel: (id: string) => string;
  /** Select a step in the run view (a click on a line's step). */
  select: (id: string) => void;
}

export class ConsoleView {
  readonly element: HTMLElement;
  private readonly viewport = el('div', 'cr-console-viewport');
  private readonly spacer = el('div', 'cr-console-spacer');
  private readonly rows = el('div', 'cr-console-rows');
  private readonly scope = el('select', 'cr-input cr-console-scope');
  private readonly search = el('input', 'cr-input cr-console-search');
  private readonly followBox = el('input');
  private readonly status = el('span', 'cr-muted cr-console-status');
  private nodeId: string | null = null;
  private lines: ConsoleLine[] = [];
  private drawn = '';
  private shownVersion = -1;
  private follow = true;
  private programmatic = false;
  private query = '';
  private readonly redraw = throttled(() => this.render(true), REDRAW_MS);

  constructor(private readonly model: ConsoleModel, private readonly opts: ConsoleViewOptions) {
    this.element = el('section', 'cr-console');
    this.element.setAttribute('aria-label', 'Console: step output');
    const bar = el('div', 'cr-toolbar');
    this.scope.setAttribute('aria-label', 'Whose output');
    this.scope.addEventListener('change', () => this.setScope(this.scope.value || null));
    this.search.type = 'search';
    this.search.placeholder = 'Search output';
    this.search.setAttribute('aria-label', 'Search output');
    this.search.addEventListener('input', () => {
      this.query = this.search.value.toLowerCase();
      this.shownVersion = -1;
      this.render(true);
    });
    const follow = el('label', 'cr-check');
    this.followBox.type = 'checkbox';
    this.followBox.checked = true;
    this.followBox.addEventListener('change', () => {
      this.follow = this.followBox.checked;
      if (this.follow) this.scrollToEnd();
    });
    follow.append(this.followBox, el('span', '', 'Follow'));
    bar.append(this.scope, this.search, follow, this.status);
    this.viewport.tabIndex = 0;
    this.viewport.setAttribute('role', 'log');
    this.viewport.setAttribute('aria-label', 'Output lines');
    this.viewport.addEventListener('scroll', () => this.onScroll());
    this.spacer.append(this.rows);
    this.viewport.append(this.spacer);
    this.element.append(bar, this.viewport);
    this.setScopes([]);
  }

  get following(): boolean {
    return this.follow;
  }

  /** Show the whole run (null) or one step's output. */
  setScope(nodeId: string | null): void {
    this.nodeId = nodeId;
    if (this.scope.value !== (nodeId ?? '')) this.scope.value = nodeId ?? '';
    this.shownVersion = -1;
    this.follow = true;
    this.followBox.checked = true;
    this.render(true);
  }

  /** The steps offered in the scope menu (those with output, and the selected one). */
  setScopes(ids: string[]): void {
    const want = ['', ...ids];
    const have = [...this.scope.options].map(o => o.value);
    if (want.join('\n') === have.join('\n')) return;
    this.scope.replaceChildren(...want.map(id => {
      const o = el('option', '', id ? this.opts.nodeLabel(id) : 'All steps');
      o.value = id;
      return o;
    }));
    this.scope.value = this.nodeId ?? '';
  }

  /** Redraw if the model changed (at most every REDRAW_MS); `force`: now. */
  render(force = false): void {
    if (!force) {
      if (this.shownVersion !== this.model.version) this.redraw();
      return;
    }
    this.shownVersion = this.model.version;
    let lines = this.model.lines(this.nodeId);
    if (this.query) lines = lines.filter(l => plainText(l.text).toLowerCase().includes(this.query));
    this.lines = lines;
    this.spacer.style.height = `${lines.length * ROW_H}px`;
    const held = this.nodeId === null ? this.model.run.total : lines.length;
    setText(this.status, this.query ? `${lines.length.toLocaleString()} matching`
      : `${lines.length.toLocaleString()} lines${held > lines.length ? ` (last ${LINE_CAP.toLocaleString()} of ${held.toLocaleString()})` : ''}`);
    if (this.follow) this.scrollToEnd();
    this.drawRows(true);
  }

  private scrollToEnd(): void {
    const top = Math.max(0, this.lines.length * ROW_H - this.viewport.clientHeight);
    if (Math.abs(this.viewport.scrollTop - top) > 1) {
      this.programmatic = true;
      this.viewport.scrollTop = top;
    }
  }

  private onScroll(): void {
    if (this.programmatic) {
      this.programmatic = false;
    } else {
      const atEnd = this.viewport.scrollTop + this.viewport.clientHeight >= this.lines.length * ROW_H - ROW_H;
      if (atEnd !== this.follow) {
        this.follow = atEnd; // scrolling up stops following; back at the end resumes it
        this.followBox.checked = atEnd;
      }
    }
    this.drawRows(false);
  }

  private drawRows(changed: boolean): void {
    const h = this.viewport.clientHeight || 300;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(this.lines.length, Math.ceil((this.viewport.scrollTop + h) / ROW_H) + OVERSCAN);
    const key = `${first}:${last}`;
    if (!changed && key === this.drawn) return;
    this.drawn = key;
    this.rows.style.transform = `translateY(${first * ROW_H}px)`;
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.append(this.row(this.lines[i]));
    this.rows.replaceChildren(frag);
    if (!this.lines.length) {
      this.rows.append(el('div', 'cr-console-empty cr-muted',
                          this.query ? 'No line matches.' : 'No output yet: what steps print, log and warn shows here.'));
    }
  }

  private row(l: ConsoleLine): HTMLElement {
    const r = el('div', 'cr-console-row');
    r.dataset.stream = l.stream;
    if (l.level) r.dataset.level = l.level.toLowerCase();
    const tag = el('span', 'cr-console-tag', streamTag(l));
    tag.title = l.level ? `${l.stream}: ${l.level}` : l.stream;
    const who = el('button', 'cr-console-node', this.opts.nodeLabel(l.nodeId));
    who.type = 'button';
    who.tabIndex = -1;
    who.title = `Step ${l.nodeId}, attempt ${l.attempt} (event #${l.seq}): select it`;
    who.addEventListener('click', () => this.opts.select(l.nodeId));
    const text = el('span', 'cr-console-text');
    for (const s of ansiSpans(l.text)) {
      if (!s.cls) text.append(s.text);
      else text.append(el('span', s.cls, s.text));
    }
    if (this.nodeId === null) r.append(tag, who, text);
    else r.append(tag, text);
    return r;
  }
}
