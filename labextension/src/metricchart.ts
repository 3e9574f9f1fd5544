// Small line charts (SVG, drawn in the theme's colours): ctx.metric series per step, and
// the cost view's cumulative curves. Values are plotted as given; labels are text nodes.
import type { EventOf } from './state';
import { el, svg } from './dom';
import { formatMetric } from './status';

/** Points a series keeps (the oldest are thinned beyond it: every other one dropped). */
export const SERIES_CAP = 1000;

export interface Point { x: number; y: number }

/** A series that holds at most `cap` points: past it, every other old point is dropped. */
export function pushPoint(points: Point[], p: Point, cap = SERIES_CAP): void {
  points.push(p);
  if (points.length > cap) {
    const half = Math.floor(points.length / 2);
    const thinned = points.slice(0, half).filter((_, i) => i % 2 === 0);
    points.splice(0, half, ...thinned);
  }
}

export interface ChartOptions {
  width?: number;
  height?: number;
  /** Accessible description (the chart is also summarised as text next to it). */
  label: string;
  /** CSS colour (a custom property of the run view, e.g. var(--cr-brand)). */
  color?: string;
  formatY?: (v: number) => string;
}

/** A line chart of `points` (x ascending) with its min and max as text. */
export function lineChart(points: Point[], o: ChartOptions): SVGSVGElement {
  const w = o.width ?? 240, h = o.height ?? 64, pad = 4;
  const chart = svg('svg', { viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: 'img',
                             'aria-label': o.label }, 'cr-chart');
  chart.append(svg('rect', { x: 0.5, y: 0.5, width: w - 1, height: h - 1, rx: 3 }, 'cr-chart-frame'));
  if (!points.length) return chart;
  let x0 = points[0].x, x1 = points[points.length - 1].x;
  let y0 = Infinity, y1 = -Infinity;
  for (const p of points) {
    if (p.y < y0) y0 = p.y;
    if (p.y > y1) y1 = p.y;
  }
  const lo = y0, hi0 = y1;
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const X = (x: number) => pad + ((x - x0) / (x1 - x0)) * (w - 2 * pad);
  const Y = (y: number) => h - pad - ((y - y0) / (y1 - y0)) * (h - 2 * pad - 12);
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join('');
  const line = svg('path', { d, fill: 'none', 'stroke-width': 1.5 }, 'cr-chart-line');
  if (o.color) line.style.stroke = o.color;
  chart.append(line);
  if (points.length === 1) {
    const dot = svg('circle', { cx: X(points[0].x), cy: Y(points[0].y), r: 2.5 }, 'cr-chart-dot');
    if (o.color) dot.style.fill = o.color;
    chart.append(dot);
  }
  const fmt = o.formatY ?? formatMetric;
  const hi = svg('text', { x: pad + 2, y: 11 }, 'cr-chart-text');
  hi.textContent = points.length === 1 ? `${fmt(lo)}`
    : `max ${fmt(hi0)} · min ${fmt(lo)} · last ${fmt(points[points.length - 1].y)}`;
  chart.append(hi);
  return chart;
}

// -- ctx.metric series ---------------------------------------------------------------------

export class MetricModel {
  /** node id -> metric name -> points (x: the metric's step, else its index). */
  readonly series = new Map<string, Map<string, Point[]>>();
  version = 0;

  add(ev: EventOf<'metric_update'>): void {
    const d = ev.data;
    let byName = this.series.get(d.node_id);
    if (!byName) this.series.set(d.node_id, byName = new Map());
    let pts = byName.get(d.name);
    if (!pts) byName.set(d.name, pts = []);
    const x = d.step ?? (pts.length ? pts[pts.length - 1].x + 1 : 0);
    pushPoint(pts, { x, y: d.value });
    this.version++;
  }
}

export interface MetricsViewOptions {
  nodeLabel: (id: string) => string;
  select: (id: string) => void;
}

/** One block per step with metrics (the selected step first), a chart per metric. */
export class MetricsView {
  readonly element = el('section', 'cr-metrics-view');
  private shown = '';

  constructor(private readonly model: MetricModel, private readonly opts: MetricsViewOptions) {
    this.element.setAttribute('aria-label', 'Metrics');
  }

  render(selected: string | null): void {
    const sig = `${this.model.version}|${selected}`;
    if (sig === this.shown) return;
    this.shown = sig;
    const ids = [...this.model.series.keys()];
    if (selected && this.model.series.has(selected)) ids.splice(ids.indexOf(selected), 1), ids.unshift(selected);
    if (!ids.length) {
      this.element.replaceChildren(el('p', 'cr-muted cr-pad', 'No metrics yet: steps report them with ctx.metric(name, value, step=...).'));
      return;
    }
    this.element.replaceChildren(...ids.slice(0, 50).map(id => this.block(id, id === selected)));
  }

  private block(id: string, selected: boolean): HTMLElement {
    const box = el('div', 'cr-metric-block');
    if (selected) box.dataset.selected = 'true';
    const head = el('button', 'cr-link cr-metric-step', this.opts.nodeLabel(id));
    head.type = 'button';
    head.title = `Select step ${id}`;
    head.addEventListener('click', () => this.opts.select(id));
    const grid = el('div', 'cr-metric-grid');
    for (const [name, pts] of this.model.series.get(id)!) {
      const cell = el('figure', 'cr-metric');
      cell.append(el('figcaption', '', `${name} (${pts.length} point${pts.length === 1 ? '' : 's'})`),
                  lineChart(pts, { label: `${name} of step ${this.opts.nodeLabel(id)}` }));
      grid.append(cell);
    }
    box.append(head, grid);
    return box;
  }
}
