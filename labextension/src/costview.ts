// Cost: totals by model, by agent and by step, and the run's cumulative cost and tokens
// over time, from cost_update events as they arrive.
import type { EventOf } from './state';
import { el, throttled } from './dom';
import { lineChart, Point, pushPoint } from './metricchart';
import { formatCost } from './runlist';
import { formatCount } from './status';

export interface Totals { usd: number; input: number; output: number; calls: number }

const zero = (): Totals => ({ usd: 0, input: 0, output: 0, calls: 0 });

export class CostModel {
  readonly byModel = new Map<string, Totals>();
  readonly byAgent = new Map<string, Totals>();
  readonly byStep = new Map<string, Totals>();
  readonly total = zero();
  /** Cumulative cost and tokens (x: epoch ms). */
  readonly usd: Point[] = [];
  readonly tokens: Point[] = [];
  version = 0;

  add(ev: EventOf<'cost_update'>): void {
    const d = ev.data;
    const input = d.input_tokens ?? 0, output = d.output_tokens ?? 0, usd = d.usd ?? 0;
    for (const [map, key] of [[this.byModel, d.model], [this.byAgent, d.agent ?? '(not named)'],
                              [this.byStep, d.node_id]] as const) {
      let t = map.get(key);
      if (!t) map.set(key, t = zero());
      add(t, usd, input, output);
    }
    add(this.total, usd, input, output);
    const x = Date.parse(ev.timestamp);
    pushPoint(this.usd, { x, y: this.total.usd });
    pushPoint(this.tokens, { x, y: this.total.input + this.total.output });
    this.version++;
  }
}

function add(t: Totals, usd: number, input: number, output: number): void {
  t.usd += usd;
  t.input += input;
  t.output += output;
  t.calls++;
}

export interface CostViewOptions {
  nodeLabel: (id: string) => string;
  select: (id: string) => void;
}

/** Rows shown per table (the most expensive first). */
const TOP = 15;

/** The tables and charts are rebuilt at most this often (ms) while costs stream in. */
const REDRAW_MS = 500;

export class CostView {
  readonly element = el('section', 'cr-cost');
  private shown = -1;
  private readonly draw = throttled(() => this.redraw(), REDRAW_MS);

  constructor(private readonly model: CostModel, private readonly opts: CostViewOptions) {
    this.element.setAttribute('aria-label', 'Cost');
  }

  /** Redraw when the totals changed, at most every REDRAW_MS (a late change is drawn then). */
  render(): void {
    if (this.shown !== this.model.version) this.draw();
  }

  private redraw(): void {
    this.shown = this.model.version;
    const m = this.model;
    if (!m.total.calls) {
      this.element.replaceChildren(el('p', 'cr-muted cr-pad', 'No cost reported yet: steps report it with ctx.cost(model=..., input_tokens=..., output_tokens=..., usd=...).'));
      return;
    }
    const head = el('div', 'cr-cost-head');
    head.append(el('strong', 'cr-cost-total', formatCost(m.total.usd)),
                el('span', 'cr-muted', ` · ${formatCount(m.total.input)} input · ${formatCount(m.total.output)} output tokens · ${m.total.calls.toLocaleString()} calls`));
    const charts = el('div', 'cr-cost-charts');
    charts.append(this.chart('Cumulative cost', m.usd, 'var(--cr-brand)', formatCost),
                  this.chart('Cumulative tokens', m.tokens, 'var(--cr-info)', formatCount));
    const tables = el('div', 'cr-cost-tables');
    tables.append(this.table('By model', m.byModel, null), this.table('By agent', m.byAgent, null),
                  this.table('By step', m.byStep, id => this.opts.select(id)));
    this.element.replaceChildren(head, charts, tables);
  }

  private chart(title: string, pts: Point[], color: string, fmt: (v: number) => string): HTMLElement {
    const fig = el('figure', 'cr-metric');
    fig.append(el('figcaption', '', title), lineChart(pts, { label: title, color, formatY: fmt, width: 300, height: 80 }));
    return fig;
  }

  private table(title: string, rows: Map<string, Totals>, select: ((id: string) => void) | null): HTMLElement {
    const box = el('div', 'cr-cost-table');
    const t = el('table', 'cr-metrics');
    const cap = el('caption', '', `${title}${rows.size > TOP ? ` (top ${TOP} of ${rows.size})` : ''}`);
    const hr = el('tr');
    for (const h of ['', 'cost', 'tokens in', 'tokens out', 'calls']) hr.append(el('th', '', h));
    t.append(cap, hr);
    const sorted = [...rows].sort((a, b) => b[1].usd - a[1].usd || (b[1].input + b[1].output) - (a[1].input + a[1].output));
    for (const [key, v] of sorted.slice(0, TOP)) {
      const tr = el('tr');
      const name = el('th');
      if (select) {
        const b = el('button', 'cr-link', this.opts.nodeLabel(key));
        b.type = 'button';
        b.addEventListener('click', () => select(key));
        name.append(b);
      } else name.textContent = key;
      tr.append(name, el('td', 'cr-mono', formatCost(v.usd)), el('td', 'cr-mono', formatCount(v.input)),
                el('td', 'cr-mono', formatCount(v.output)), el('td', 'cr-mono', v.calls.toLocaleString()));
      t.append(tr);
    }
    box.append(t);
    return box;
  }
}
