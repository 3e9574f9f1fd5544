// The timeline: a Gantt view of the run, one row per step, one bar per attempt, with
// segments for running, paused, waiting for approval and retry backoff, and a "now"
// line while the run is live. Drawn on a canvas, only the rows in view (so 2,000 steps
// scroll as lightly as 20); zoom and pan on the time axis (buttons, Ctrl+wheel,
// Shift+wheel, drag, keys); hovering tells exact times; a click selects the step.
import type { NodeInfo, NodeState } from './protocol';
import type { EventOf } from './state';
import { button, el, setText } from './dom';
import { formatSeconds } from './status';

export type SegmentKind = 'running' | 'paused' | 'waiting_approval' | 'retrying';
const SEGMENT_KINDS: readonly string[] = ['running', 'paused', 'waiting_approval', 'retrying'];
const ENDS_ATTEMPT: readonly string[] = ['completed', 'failed', 'cancelled', 'skipped', 'retrying'];

export interface Segment { kind: SegmentKind; start: number; end: number | null }
export interface Attempt { n: number; start: number; end: number | null; outcome: NodeState | null }
export interface Row { id: string; attempts: Attempt[]; segments: Segment[] }

type Transition = EventOf<'step_started' | 'step_completed' | 'step_failed' | 'step_retry_started' | 'dag_node_status_changed'>;

export class TimelineModel {
  readonly rows = new Map<string, Row>();
  /** Row order: the steps' declaration order. */
  order: string[] = [];
  first = Infinity;
  last = -Infinity;
  version = 0;

  private row(id: string): Row {
    let r = this.rows.get(id);
    if (!r) {
      r = { id, attempts: [], segments: [] };
      this.rows.set(id, r);
      this.order.push(id);
    }
    return r;
  }

  /** Rows for every step (in declaration order), and a bar for a step whose start the
   *  log read so far does not have (a view opened on a run too long to read back). */
  syncNodes(nodes: Map<string, NodeInfo>, fill = false): void {
    if (!fill && nodes.size === this.order.length) return;
    const sorted = [...nodes.values()].sort((a, b) => a.position - b.position);
    if (sorted.length !== this.order.length) {
      for (const n of sorted) this.row(n.id);
      this.order = sorted.map(n => n.id);
      this.version++;
    }
    if (!fill) return;
    for (const n of sorted) {
      const r = this.rows.get(n.id)!;
      if (r.attempts.length || !n.started_at) continue;
      const start = Date.parse(n.started_at);
      const end = n.finished_at ? Date.parse(n.finished_at) : null;
      r.attempts.push({ n: n.attempt, start, end, outcome: end === null ? null : n.status });
      const kind = (SEGMENT_KINDS.includes(n.status) ? n.status : 'running') as SegmentKind;
      r.segments.push({ kind, start, end });
      this.extend(start, end);
      this.version++;
    }
  }

  private extend(...ts: Array<number | null>): void {
    for (const t of ts) {
      if (t === null) continue;
      if (t < this.first) this.first = t;
      if (t > this.last) this.last = t;
    }
  }

  apply(ev: Transition): void {
    const d = ev.data;
    const t = Date.parse(ev.timestamp);
    const r = this.row(d.node_id);
    const open = r.segments.length ? r.segments[r.segments.length - 1] : null;
    if (open && open.end === null) open.end = t;
    const fresh = d.new_status === 'running' && (d.old_status === 'pending' || d.old_status === 'retrying');
    if (fresh) r.attempts.push({ n: d.attempt, start: t, end: null, outcome: null });
    const attempt = r.attempts.length ? r.attempts[r.attempts.length - 1] : null;
    if (attempt && attempt.end === null && ENDS_ATTEMPT.includes(d.new_status)) {
      attempt.end = t;
      attempt.outcome = d.new_status;
    }
    if (SEGMENT_KINDS.includes(d.new_status)) {
      r.segments.push({ kind: d.new_status as SegmentKind, start: t, end: null });
    }
    this.extend(t);
    this.version++;
  }
}

// -- the view -------------------------------------------------------------------------------

const ROW_H = 22;
const AXIS_H = 24;
const LABEL_W = 170;
const SEG_VAR: Record<SegmentKind, string> = {
  running: '--cr-s-running', paused: '--cr-s-paused', waiting_approval: '--cr-s-waiting_approval',
  retrying: '--cr-s-retrying'
};
const OUTCOME_VAR: Partial<Record<NodeState, string>> = {
  completed: '--cr-s-completed', failed: '--cr-s-failed', cancelled: '--cr-s-cancelled',
  retrying: '--cr-s-failed', skipped: '--cr-s-skipped'
};

export interface TimelineViewOptions {
  nodeLabel: (id: string) => string;
  select: (id: string) => void;
  /** Whether the run is still live (the "now" line is drawn and the window follows it). */
  live: () => boolean;
}

export class TimelineView {
  readonly element: HTMLElement;
  private readonly viewport = el('div', 'cr-tl-viewport');
  private readonly spacer = el('div', 'cr-tl-spacer');
  private readonly canvas = el('canvas', 'cr-tl-canvas');
  private readonly tip = el('div', 'cr-tl-tip');
  private readonly range = el('span', 'cr-muted cr-tl-range');
  /** The time window shown; null: fit the whole run (and follow it while live). */
  private window: [number, number] | null = null;
  private selected: string | null = null;
  private cursor = 0;
  private drag: { x: number; win: [number, number] } | null = null;
  private shownVersion = -1;
  /** Theme colours, read once per theme (reading styles forces a style recalculation). */
  private colors: { theme: string; values: Map<string, string> } | null = null;
  /** Labels clipped to the label column, by label. */
  private readonly clipped = new Map<string, string>();

  constructor(private readonly model: TimelineModel, private readonly opts: TimelineViewOptions) {
    this.element = el('section', 'cr-timeline');
    this.element.setAttribute('aria-label', 'Timeline');
    const bar = el('div', 'cr-toolbar');
    const zin = button('cr-btn', '+', 'Zoom in on the time axis');
    zin.addEventListener('click', () => this.zoom(0.5));
    const zout = button('cr-btn', '−', 'Zoom out on the time axis');
    zout.addEventListener('click', () => this.zoom(2));
    const fit = button('cr-btn', 'Fit', 'Show the whole run');
    fit.addEventListener('click', () => { this.window = null; this.draw(); });
    const legend = el('span', 'cr-tl-legend');
    for (const k of Object.keys(SEG_VAR) as SegmentKind[]) {
      const item = el('span', 'cr-tl-key');
      const sw = el('span', 'cr-tl-swatch');
      sw.dataset.kind = k;
      item.append(sw, k === 'retrying' ? 'retry backoff' : k.replace('_', ' '));
      legend.append(item);
    }
    bar.append(zin, zout, fit, this.range, legend);
    this.viewport.tabIndex = 0;
    this.viewport.setAttribute('role', 'grid');
    this.viewport.setAttribute('aria-label',
      'Timeline of the steps: arrow keys move between steps and pan, + and − zoom, Enter selects the step, 0 fits the run');
    this.canvas.setAttribute('aria-hidden', 'true');
    this.tip.hidden = true;
    this.tip.setAttribute('role', 'status');
    this.spacer.append(this.canvas);
    this.viewport.append(this.spacer, this.tip);
    this.element.append(bar, this.viewport);
    this.viewport.addEventListener('scroll', () => this.draw());
    this.viewport.addEventListener('wheel', e => this.onWheel(e), { passive: false });
    this.viewport.addEventListener('mousemove', e => this.onMove(e));
    this.viewport.addEventListener('mouseleave', () => { this.tip.hidden = true; });
    this.viewport.addEventListener('mousedown', e => this.onDown(e));
    window.addEventListener('mouseup', this.onUp);
    this.viewport.addEventListener('keydown', e => this.onKey(e));
  }

  dispose(): void {
    window.removeEventListener('mouseup', this.onUp);
  }

  setSelected(id: string | null): void {
    if (id === this.selected) return;
    this.selected = id;
    const i = id ? this.model.order.indexOf(id) : -1;
    if (i >= 0) {
      this.cursor = i;
      this.scrollToRow(i);
    }
    this.draw();
  }

  /** Redraw when the model changed or, while live, every call (the "now" line moves). */
  render(): void {
    if (this.shownVersion === this.model.version && !this.opts.live()) return;
    this.draw();
  }

  private span(): [number, number] {
    if (this.window) return this.window;
    const m = this.model;
    if (!Number.isFinite(m.first)) return [Date.now() - 60000, Date.now()];
    const end = this.opts.live() ? Math.max(m.last, Date.now()) : m.last;
    const pad = Math.max(500, (end - m.first) * 0.02);
    return [m.first - pad, end + pad];
  }

  private zoom(factor: number, atX?: number): void {
    const [a, b] = this.span();
    const w = this.chartWidth();
    const f = atX === undefined ? 0.5 : Math.min(1, Math.max(0, (atX - LABEL_W) / w));
    const at = a + (b - a) * f;
    const width = Math.max(50, (b - a) * factor);
    this.window = [at - width * f, at - width * f + width];
    this.draw();
  }

  private pan(fraction: number): void {
    const [a, b] = this.span();
    const d = (b - a) * fraction;
    this.window = [a + d, b + d];
    this.draw();
  }

  private chartWidth(): number {
    return Math.max(50, this.viewport.clientWidth - LABEL_W - 8);
  }

  private scrollToRow(i: number): void {
    const top = i * ROW_H, h = this.viewport.clientHeight - AXIS_H;
    if (top < this.viewport.scrollTop) this.viewport.scrollTop = top;
    else if (top + ROW_H > this.viewport.scrollTop + h) this.viewport.scrollTop = top + ROW_H - h;
  }

  private rowAt(y: number): number {
    return Math.floor((y - AXIS_H + this.viewport.scrollTop) / ROW_H);
  }

  private onWheel(e: WheelEvent): void {
    if (e.ctrlKey || e.metaKey) {
      e.preventDefault();
      this.zoom(e.deltaY > 0 ? 1.25 : 0.8, e.offsetX);
    } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
      e.preventDefault();
      this.pan((e.deltaX || e.deltaY) / this.chartWidth());
    }
  }

  private onDown(e: MouseEvent): void {
    const box = this.viewport.getBoundingClientRect();
    const x = e.clientX - box.left;
    if (x > LABEL_W) this.drag = { x: e.clientX, win: this.span() };
    const i = this.rowAt(e.clientY - box.top);
    if (e.clientY - box.top > AXIS_H && i >= 0 && i < this.model.order.length) {
      this.cursor = i;
      this.pendingClick = { x: e.clientX, id: this.model.order[i] };
    }
  }

  private pendingClick: { x: number; id: string } | null = null;

  private onUp = (e: MouseEvent): void => {
    const click = this.pendingClick;
    this.pendingClick = null;
    if (this.drag && Math.abs(e.clientX - this.drag.x) > 3) {
      this.drag = null;
      return;
    }
    this.drag = null;
    if (click && Math.abs(e.clientX - click.x) <= 3) this.opts.select(click.id);
  };

  private onMove(e: MouseEvent): void {
    const box = this.viewport.getBoundingClientRect();
    const x = e.clientX - box.left, y = e.clientY - box.top;
    if (this.drag) {
      const [a, b] = this.drag.win;
      const dt = ((this.drag.x - e.clientX) / this.chartWidth()) * (b - a);
      this.window = [a + dt, b + dt];
      this.draw();
      return;
    }
    const i = this.rowAt(y);
    const id = y > AXIS_H ? this.model.order[i] : undefined;
    if (!id) {
      this.tip.hidden = true;
      return;
    }
    this.showTip(id, x > LABEL_W ? this.timeAt(x) : null, x, y);
  }

  private timeAt(x: number): number {
    const [a, b] = this.span();
    return a + ((x - LABEL_W) / this.chartWidth()) * (b - a);
  }

  /** The tooltip of a row at time t (null: the row as a whole), as text. */
  describe(id: string, t: number | null): string {
    const r = this.model.rows.get(id);
    const name = this.opts.nodeLabel(id);
    if (!r || !r.attempts.length) return `${name}: not started`;
    const seg = t === null ? null : r.segments.find(s => s.start <= t && t <= (s.end ?? Date.now()));
    const att = t === null ? r.attempts[r.attempts.length - 1]
      : r.attempts.find(a => a.start <= t && t <= (a.end ?? Date.now())) ?? r.attempts[r.attempts.length - 1];
    const lines = [`${name} · attempt ${att.n}${att.outcome ? ` · ${att.outcome}` : ' · in progress'}`,
                   `attempt: ${exact(att.start)} → ${att.end === null ? 'now' : exact(att.end)} (${formatSeconds((att.end ?? Date.now()) - att.start)})`];
    if (seg) {
      const label = seg.kind === 'retrying' ? 'retry backoff' : seg.kind.replace('_', ' ');
      lines.push(`${label}: ${exact(seg.start)} → ${seg.end === null ? 'now' : exact(seg.end)} (${formatSeconds((seg.end ?? Date.now()) - seg.start)})`);
    }
    return lines.join('\n');
  }

  private showTip(id: string, t: number | null, x: number, y: number): void {
    setText(this.tip, this.describe(id, t));
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(x + 12, Math.max(0, this.viewport.clientWidth - 320))}px`;
    this.tip.style.top = `${y + 14 + this.viewport.scrollTop}px`;
  }

  private onKey(e: KeyboardEvent): void {
    const n = this.model.order.length;
    let handled = true;
    switch (e.key) {
      case 'ArrowDown': this.cursor = Math.min(n - 1, this.cursor + 1); break;
      case 'ArrowUp': this.cursor = Math.max(0, this.cursor - 1); break;
      case 'PageDown': this.cursor = Math.min(n - 1, this.cursor + 10); break;
      case 'PageUp': this.cursor = Math.max(0, this.cursor - 10); break;
      case 'ArrowLeft': this.pan(-0.1); break;
      case 'ArrowRight': this.pan(0.1); break;
      case '+': case '=': this.zoom(0.5); break;
      case '-': case '_': this.zoom(2); break;
      case '0': this.window = null; break;
      case 'Enter': case ' ':
        if (this.model.order[this.cursor]) this.opts.select(this.model.order[this.cursor]);
        break;
      default: handled = false;
    }
    if (!handled) return;
    e.preventDefault();
    const id = this.model.order[this.cursor];
    if (id) {
      this.scrollToRow(this.cursor);
      this.showTip(id, null, LABEL_W, AXIS_H + (this.cursor + 1) * ROW_H - this.viewport.scrollTop);
    }
    this.draw();
  }

  private color(name: string): string {
    const b = document.body?.dataset ?? {};
    const theme = `${b.jpThemeName ?? ''}|${b.jpThemeLight ?? ''}`;
    if (this.colors?.theme !== theme) this.colors = { theme, values: new Map() };
    let v = this.colors.values.get(name);
    if (v === undefined) {
      v = getComputedStyle(this.element).getPropertyValue(name).trim() || '#888';
      this.colors.values.set(name, v);
    }
    return v;
  }

  /** Draw the rows in view. */
  draw(): void {
    this.shownVersion = this.model.version;
    const m = this.model;
    const w = Math.max(200, this.viewport.clientWidth);
    const h = Math.max(AXIS_H + ROW_H, this.viewport.clientHeight);
    this.spacer.style.height = `${AXIS_H + m.order.length * ROW_H}px`;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
    }
    const ctx = this.canvas.getContext('2d');
    if (!ctx) return;
    const color = (v: string) => this.color(v);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const [a, b] = this.span();
    const cw = this.chartWidth();
    const X = (t: number) => LABEL_W + ((t - a) / (b - a)) * cw;
    setText(this.range, `${exact(a)} – ${exact(b)} (${formatSeconds(b - a)})`);
    const fg = color('--cr-fg'), fg2 = color('--cr-fg2'), border = color('--cr-border');
    ctx.font = `12px ${color('--cr-font')}`;
    ctx.textBaseline = 'middle';
    const top = this.viewport.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_H));
    const last = Math.min(m.order.length, Math.ceil((top + h - AXIS_H) / ROW_H));
    const segColors = Object.fromEntries(Object.entries(SEG_VAR).map(([k, v]) => [k, color(v)]));
    for (let i = first; i < last; i++) {
      const id = m.order[i];
      const y = AXIS_H + i * ROW_H - top;
      if (id === this.selected || (i === this.cursor && document.activeElement === this.viewport)) {
        ctx.fillStyle = color('--cr-bg2');
        ctx.fillRect(0, y, w, ROW_H);
      }
      ctx.fillStyle = id === this.selected ? color('--cr-brand') : fg;
      const label = this.opts.nodeLabel(id);
      let shown = this.clipped.get(label);
      if (shown === undefined) {
        shown = clip(ctx, label, LABEL_W - 12);
        if (this.clipped.size > 5000) this.clipped.clear();
        this.clipped.set(label, shown);
      }
      ctx.fillText(shown, 6, y + ROW_H / 2);
      const r = m.rows.get(id);
      if (!r) continue;
      ctx.save();
      ctx.beginPath();
      ctx.rect(LABEL_W, y, cw, ROW_H);
      ctx.clip();
      for (const s of r.segments) {
        const x0 = X(s.start), x1 = X(s.end ?? Date.now());
        if (x1 < LABEL_W || x0 > LABEL_W + cw) continue;
        ctx.fillStyle = segColors[s.kind];
        ctx.globalAlpha = s.kind === 'retrying' ? 0.35 : 0.85;
        ctx.fillRect(x0, y + 5, Math.max(1.5, x1 - x0), ROW_H - 10);
      }
      ctx.globalAlpha = 1;
      for (const at of r.attempts) {
        const x0 = X(at.start), x1 = X(at.end ?? Date.now());
        ctx.strokeStyle = at.outcome ? color(OUTCOME_VAR[at.outcome] ?? '--cr-fg2') : fg2;
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x0, y + 4.5, Math.max(1.5, x1 - x0), ROW_H - 9);
      }
      ctx.restore();
    }
    // the axis
    ctx.fillStyle = color('--cr-bg');
    ctx.fillRect(0, 0, w, AXIS_H);
    ctx.strokeStyle = border;
    ctx.beginPath();
    ctx.moveTo(0, AXIS_H - 0.5);
    ctx.lineTo(w, AXIS_H - 0.5);
    ctx.stroke();
    ctx.fillStyle = fg2;
    const step = tickStep((b - a) / Math.max(1, cw / 110));
    for (let t = Math.ceil(a / step) * step; t <= b; t += step) {
      const x = X(t);
      ctx.fillRect(x, AXIS_H - 6, 1, 6);
      ctx.fillText(tickLabel(t, step), x + 3, AXIS_H / 2);
    }
    ctx.fillText(`${m.order.length.toLocaleString()} steps`, 6, AXIS_H / 2);
    if (this.opts.live()) {
      const x = X(Date.now());
      if (x >= LABEL_W && x <= LABEL_W + cw) {
        ctx.fillStyle = color('--cr-err');
        ctx.fillRect(x, 0, 1.5, h);
      }
    }
  }
}

function exact(t: number): string {
  const d = new Date(t);
  const pad = (n: number, k = 2) => String(n).padStart(k, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

const STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000,
               120000, 300000, 600000, 900000, 1800000, 3600000, 7200000, 21600000, 43200000, 86400000];

/** A round tick interval (ms) at least `ms`. */
export function tickStep(ms: number): number {
  return STEPS.find(s => s >= ms) ?? STEPS[STEPS.length - 1];
}

function tickLabel(t: number, step: number): string {
  const s = exact(t);
  return step < 1000 ? s.slice(3) : step < 60000 ? s.slice(0, 8) : s.slice(0, 5);
}

function clip(ctx: CanvasRenderingContext2D, text: string, max: number): string {
  if (ctx.measureText(text).width <= max) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + '…').width <= max) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + '…';
}
