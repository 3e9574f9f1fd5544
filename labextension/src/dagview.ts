// The DAG as SVG, one topological generation per column (left→right) or per row
// (top→bottom): whichever shows the whole graph larger in the space it has, so a
// pipeline reads at 100 % in a notebook cell and a wide DAG fits a panel. The SVG is
// built once per layout (new nodes, a snapshot, a generation expanded); after that,
// updates touch only the nodes that changed, batched into one animation frame, so
// thousands of nodes and hundreds of events a second stay cheap.
import type { Layout, NodeInfo, NodeState } from './protocol';
import { el as html } from './dom';
import type { RunState } from './state';
import {
  countsText, dominantStatus, glyphAt, GLYPHS, nodeSubtitle, STATUS_LABEL, truncate
} from './status';
import { NODE_STATES } from './states';
import {
  chooseOrientation, Direction, edgePath, fitView, GraphLayout, Item, layoutGraph, moreKey,
  neighbour, NODE_H, NODE_W, Orientation, Placement, statusCounts, View, zoomAt
} from './dagmodel';

const SVG_NS = 'http://www.w3.org/2000/svg';
/** Room for text in a node, right of the status disc (px). */
const TEXT_W = NODE_W - 50;
const LABEL_CHARS = 20;
const SUB_CHARS = 25;
/** Below this zoom, text is unreadable: hide it (and save the painting). */
const LOD_ZOOM = 0.45;
const CANVAS_MIN_H = 200;
const CANVAS_MAX_H = 520;

export interface DagViewOptions {
  /** A node was selected (click, Enter) or the selection was cleared (null). */
  onSelect?: (nodeId: string | null) => void;
  /** Generations wider than this collapse their tail into a "+N more" item. */
  collapseLimit?: number;
  /**
   * 'always': the wheel zooms (a panel that fills its area). 'engaged': only with
   * Ctrl/⌘ or after a click inside (a notebook cell, where the wheel scrolls the page).
   */
  wheelZoom?: 'always' | 'engaged';
  /**
   * The canvas fills a panel whose height CSS decides; otherwise (a notebook cell)
   * the canvas is as tall as the graph needs, within bounds.
   */
  fill?: boolean;
}

interface NodeEls {
  g: SVGGElement;
  /** Top-left corner: parts are placed in absolute coordinates, not by a transform. */
  x: number;
  y: number;
  title: SVGTitleElement;
  glyph: SVGPathElement;
  label: SVGTextElement;
  sub: SVGTextElement;
  fill: SVGRectElement;
  sig: string;
}

interface MoreEls {
  g: SVGGElement;
  x: number;
  y: number;
  title: SVGTitleElement;
  glyph: SVGPathElement;
  sub: SVGTextElement;
  segs: SVGGElement;
  sig: string;
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {},
                                                 cls?: string): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (cls) e.setAttribute('class', cls);
  return e;
}


/** A small inline SVG of a status glyph (legend, badges, detail pane). */
export function glyphIcon(status: NodeState, size = 14): SVGSVGElement {
  const s = svg('svg', { viewBox: '0 0 12 12', width: size, height: size, 'aria-hidden': 'true' },
                'cr-icon');
  const g = GLYPHS[status];
  s.append(svg('path', { d: g.d }, g.fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'));
  return s;
}

/**
 * Cuts text to a pixel width, so labels never run out of their node whatever the
 * glyph widths. Widths are summed from per-character measurements (canvas, cached):
 * no DOM layout, and linear in the text's length. Kerning is ignored, hence a margin.
 * Falls back to a character count where canvas is missing (tests).
 */
class TextFitter {
  private readonly ctx: CanvasRenderingContext2D | null;
  private readonly charW = new Map<string, number>();
  private readonly cache = new Map<string, string>();
  private readonly ellipsis: number;

  constructor(font: string, private readonly width: number, private readonly chars: number) {
    let ctx: CanvasRenderingContext2D | null = null;
    try {
      ctx = document.createElement('canvas').getContext('2d');
    } catch {
      ctx = null;
    }
    this.ctx = ctx;
    if (ctx) ctx.font = font;
    this.ellipsis = this.char('…');
  }

  private char(c: string): number {
    let w = this.charW.get(c);
    if (w === undefined) {
      w = this.ctx ? this.ctx.measureText(c).width : 7;
      this.charW.set(c, w);
    }
    return w;
  }

  fit(text: string): string {
    if (!this.ctx) return truncate(text, this.chars);
    let out = this.cache.get(text);
    if (out !== undefined) return out;
    const room = this.width - 2;
    let w = 0;
    let cut = -1; // the last index at which the text plus an ellipsis still fits
    for (let i = 0; i < text.length; i++) {
      if (w + this.ellipsis <= room) cut = i;
      w += this.char(text[i]);
    }
    out = w <= room ? text : text.slice(0, Math.max(1, cut)).trimEnd() + '…';
    if (this.cache.size > 5000) this.cache.clear();
    this.cache.set(text, out);
    return out;
  }
}

/** The status glyph, centred in the disc of an item whose corner is (x, y). */
function setGlyph(path: SVGPathElement, status: NodeState, x: number, y: number): void {
  path.setAttribute('d', glyphAt(status, x + GLYPH_X, y + GLYPH_Y));
  path.setAttribute('class', `cr-glyph ${GLYPHS[status].fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'}`);
}

type Part = [keyof SVGElementTagNameMap, string, Record<string, number>];

/**
 * A node's parts relative to its corner, in paint order. No part (nor the node) has
 * a transform: each would be a paint chunk of its own, and with thousands of nodes
 * the compositor's per-frame work grows with them.
 */
const NODE_PARTS: Part[] = [
  ['title', '', {}],
  ['rect', 'cr-halo', { x: -4, y: -4, width: NODE_W + 8, height: NODE_H + 8, rx: 11 }],
  ['rect', 'cr-card', { x: 0, y: 0, width: NODE_W, height: NODE_H, rx: 8 }],
  ['rect', 'cr-tint', { x: 0, y: 0, width: NODE_W, height: NODE_H, rx: 8 }],
  ['circle', 'cr-disc', { cx: 21, cy: 20, r: 11 }],
  ['path', 'cr-glyph', {}],
  ['text', 'cr-label', { x: 40, y: 21 }],
  ['text', 'cr-sub', { x: 40, y: 36 }],
  ['rect', 'cr-track', { x: 40, y: 42, width: TEXT_W - 2, height: 3, rx: 1.5 }],
  ['rect', 'cr-fill', { x: 40, y: 42, width: 0, height: 3, rx: 1.5 }]
];
const GLYPH_X = 15;
const GLYPH_Y = 14;
const PART = { title: 0, glyph: 5, label: 6, sub: 7, fill: 9 };

/** Parts moved to (x, y): positional attributes only, from the table (no DOM reads). */
function placeParts(g: SVGGElement, parts: Part[], x: number, y: number): void {
  const c = g.children;
  parts.forEach(([, , attrs], i) => {
    const el = c[i];
    if ('x' in attrs) el.setAttribute('x', String(attrs.x + x));
    if ('y' in attrs) el.setAttribute('y', String(attrs.y + y));
    if ('cx' in attrs) el.setAttribute('cx', String(attrs.cx + x));
    if ('cy' in attrs) el.setAttribute('cy', String(attrs.cy + y));
  });
}

function partsTemplate(parts: Part[], cls: string): SVGGElement {
  const g = svg('g', { tabindex: -1, role: 'button' }, cls);
  for (const [tag, c, attrs] of parts) g.append(svg(tag, attrs, c || undefined));
  return g;
}

/** Everything a node shows, computed once and applied either as markup or as DOM writes. */
interface NodeLook {
  sig: string;
  status: NodeState;
  progress: 'none' | 'value' | 'indeterminate';
  glyph: string;
  glyphClass: string;
  label: string;
  sub: string;
  fillWidth: number;
  title: string;
  aria: string;
}

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function esc(text: string): string {
  return text.replace(/[&<>"']/g, c => ESC[c]);
}

/**
 * A node's markup at (x, y): the initial SVG is parsed from one string, several
 * times faster than ~35 DOM calls per node. Part order is NODE_PARTS'.
 */
function nodeMarkup(id: string, x: number, y: number, look: NodeLook): string {
  const parts = NODE_PARTS.map(([tag, cls, attrs]) => {
    const at: string[] = cls ? [`class="${cls}"`] : [];
    for (const [k, v] of Object.entries(attrs)) {
      const off = k === 'x' || k === 'cx' ? x : k === 'y' || k === 'cy' ? y : 0;
      const val = cls === 'cr-fill' && k === 'width' ? look.fillWidth : v + off;
      at.push(`${k}="${val}"`);
    }
    if (tag === 'title') return `<title>${esc(look.title)}</title>`;
    if (cls === 'cr-glyph') return `<path class="${look.glyphClass}" d="${look.glyph}"/>`;
    if (cls === 'cr-label') return `<text ${at.join(' ')}>${esc(look.label)}</text>`;
    if (cls === 'cr-sub') return `<text ${at.join(' ')}>${esc(look.sub)}</text>`;
    return `<${tag} ${at.join(' ')}/>`;
  });
  const i = esc(id);
  return `<g class="cr-item cr-node" tabindex="-1" role="button" data-node-id="${i}" data-key="${i}" ` +
    `data-status="${look.status}" data-progress="${look.progress}" aria-label="${esc(look.aria)}">${parts.join('')}</g>`;
}

/** What the progress bar of a node shows, as a data attribute CSS styles. */
function progressMode(n: NodeInfo): 'none' | 'value' | 'indeterminate' {
  if (n.status === 'running') return n.progress === null ? 'indeterminate' : 'value';
  if ((n.status === 'paused' || n.status === 'waiting_approval') && n.progress !== null) return 'value';
  return 'none';
}

export class DagView {
  readonly element: HTMLDivElement;
  private readonly canvas: HTMLDivElement;
  private readonly svgEl: SVGSVGElement;
  private readonly viewport: SVGGElement;
  private readonly edgeSvg: SVGSVGElement;
  private readonly edgeViewport: SVGGElement;
  private readonly edgeLine: SVGPathElement;
  private readonly edgeHead: SVGPathElement;
  private readonly hiLine: SVGPathElement;
  private readonly hiHead: SVGPathElement;
  private readonly nodeLayer: SVGGElement;
  private readonly message: HTMLDivElement;
  private readonly hint: HTMLDivElement;
  private readonly legend: HTMLUListElement;
  private readonly legendCounts = new Map<NodeState, HTMLElement>();
  private readonly resize: ResizeObserver | null;

  private state: RunState | null = null;
  private layoutSrc: Layout | null = null;
  private layoutSig = '';
  private layout: GraphLayout | null = null;
  private readonly nodeEls = new Map<string, NodeEls>();
  private readonly moreEls = new Map<number, MoreEls>();
  private readonly expanded = new Set<number>();

  private readonly dirty = new Set<string>();
  private rebuild = false;
  private frame = 0;
  private view: View = { x: 0, y: 0, k: 1 };
  private userMoved = false;
  private engaged = false;
  private selected: string | null = null;
  private focusKey: string | null = null;
  private hintTimer: ReturnType<typeof setTimeout> | null = null;
  private resizeFrame = 0;
  private labelFit: TextFitter | null = null;
  private subFit: TextFitter | null = null;
  /** Build and patch timings (ms) and counts, for the harness and benchmarks. */
  readonly timings = { build: 0, builds: 0, patch: 0, patched: 0, patches: 0, patchTotal: 0, patchMax: 0 };

  constructor(private readonly opts: DagViewOptions = {}) {
    this.element = html('div', 'cr-graph');
    this.canvas = html('div', 'cr-canvas');
    this.svgEl = svg('svg', { role: 'group', 'aria-label': 'Workflow graph' }, 'cr-svg');
    this.viewport = svg('g', {}, 'cr-viewport');
    // Edges live in an SVG (a compositor layer) of their own, under the nodes: a node
    // that changes then never makes the browser redraw thousands of curves.
    this.edgeSvg = svg('svg', { 'aria-hidden': 'true' }, 'cr-svg cr-svg-edges');
    this.edgeViewport = svg('g', {}, 'cr-viewport');
    const edges = svg('g', {}, 'cr-edges');
    this.edgeLine = svg('path', {}, 'cr-edge-line');
    this.edgeHead = svg('path', {}, 'cr-edge-head');
    this.hiLine = svg('path', {}, 'cr-edge-line cr-edge-hi');
    this.hiHead = svg('path', {}, 'cr-edge-head cr-edge-hi');
    edges.append(this.edgeLine, this.edgeHead, this.hiLine, this.hiHead);
    this.nodeLayer = svg('g', {}, 'cr-nodes');
    this.edgeViewport.append(edges);
    this.edgeSvg.append(this.edgeViewport);
    this.viewport.append(this.nodeLayer);
    this.svgEl.append(this.viewport);
    this.message = html('div', 'cr-canvas-message');
    this.hint = html('div', 'cr-canvas-hint', 'Ctrl + scroll (⌘ on a Mac) to zoom · drag to pan');
    this.hint.hidden = true;
    this.canvas.append(this.edgeSvg, this.svgEl, this.toolbar(), this.message, this.hint);
    this.legend = this.buildLegend();
    this.element.append(this.canvas, this.legend);
    this.listen();
    this.resize = typeof ResizeObserver !== 'undefined'
      ? new ResizeObserver(() => this.onResize()) : null;
    this.resize?.observe(this.canvas);
  }

  // -- public API ---------------------------------------------------------------------

  /**
   * Show `state`. `changed` are the nodes whose documents changed; `full` redraws
   * every node (a snapshot). A new layout (nodes added) rebuilds the SVG.
   */
  update(state: RunState, changed: Iterable<string>, full = false): void {
    const layoutChanged = state.layout !== this.layoutSrc;
    this.state = state;
    if (layoutChanged || full) {
      const sig = layoutSignature(state);
      this.layoutSrc = state.layout;
      if (sig !== this.layoutSig || !this.layout) {
        this.layoutSig = sig;
        this.rebuild = true;
      } else {
        for (const id of state.nodes.keys()) this.dirty.add(id);
      }
    }
    for (const id of changed) this.dirty.add(id);
    this.schedule();
  }

  /** A text over the canvas (loading, empty), or null to clear it. */
  setMessage(text: string | null): void {
    this.message.textContent = text ?? '';
    this.message.hidden = !text;
  }

  get selectedId(): string | null {
    return this.selected;
  }

  /** Select a node; when `reveal`, expand its collapsed generation and bring it into view. */
  select(id: string | null, reveal = false): void {
    if (id === this.selected && !reveal) return;
    this.selected = id;
    if (id && reveal) this.reveal(id);
    this.applySelection();
    this.opts.onSelect?.(id);
  }

  fit(): void {
    if (!this.layout) return;
    const { clientWidth: w, clientHeight: h } = this.canvas;
    if (!w || !h) return;
    this.view = fitView(this.layout.width, this.layout.height, w, h);
    this.userMoved = false;
    this.applyView();
  }

  zoom(factor: number): void {
    const { clientWidth: w, clientHeight: h } = this.canvas;
    this.view = zoomAt(this.view, factor, w / 2, h / 2);
    this.userMoved = true;
    this.applyView();
  }

  dispose(): void {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.resizeFrame) cancelAnimationFrame(this.resizeFrame);
    if (this.hintTimer) clearTimeout(this.hintTimer);
    this.resize?.disconnect();
    this.element.remove();
  }

  // -- scheduling ---------------------------------------------------------------------

  private schedule(): void {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  private flush(): void {
    this.frame = 0;
    if (!this.state) return;
    if (this.rebuild) {
      this.rebuild = false;
      this.dirty.clear();
      this.build();
    } else if (this.dirty.size) {
      this.patch();
    }
    this.updateLegend();
  }

  // -- building -----------------------------------------------------------------------

  private build(): void {
    const t0 = performance.now();
    const st = this.state!;
    const limit = this.opts.collapseLimit ?? 40;
    // Every DOM read happens before the SVG changes: no forced layout of thousands of elements.
    const [vw, vh] = this.viewportSize();
    const orient = chooseOrientation(st.layout.generations, limit, this.expanded, vw, vh);
    this.makeFitters();
    const layout = layoutGraph(st.layout.generations, st.edges, limit, this.expanded, orient);
    this.layout = layout;
    this.nodeEls.clear();
    this.moreEls.clear();
    this.buildNodes(layout);
    this.drawEdges();
    this.canvas.classList.toggle('cr-many', layout.placed.size > 300);
    if (this.focusKey && !layout.placed.has(this.focusKey)) this.focusKey = null;
    this.setRoving(this.focusKey ?? layout.columns[0]?.[0]?.key ?? null, false);
    this.applySelection();
    const ch = this.sizeCanvas(vw, vh);
    // Fit from known sizes; the zoom (and level of detail) is set before the first paint.
    if (!this.userMoved) this.view = fitView(layout.width, layout.height, vw, ch);
    this.applyView();
    this.setMessage(st.nodes.size ? null : 'No steps yet: the plan appears here as soon as it is made.');
    this.timings.build = performance.now() - t0;
    this.timings.builds++;
  }

  /** Nodes from one parsed string; the few summary items with the DOM API. */
  private buildNodes(layout: GraphLayout): void {
    const nodes = this.state!.nodes;
    const placed = [...layout.placed.values()];
    const ids: string[] = [];
    const looks: NodeLook[] = [];
    let markup = '';
    for (const p of placed) {
      if (p.item.kind !== 'node') continue;
      const look = this.nodeLook(nodes.get(p.item.id)!, p.x, p.y);
      markup += nodeMarkup(p.item.id, p.x, p.y, look);
      ids.push(p.item.id);
      looks.push(look);
    }
    this.nodeLayer.innerHTML = markup; // parsed as SVG: the layer is an SVG element
    const kids = this.nodeLayer.children;
    ids.forEach((id, i) => {
      const g = kids[i] as SVGGElement;
      const p = layout.placed.get(id)!;
      const c = g.children;
      this.nodeEls.set(id, {
        g, x: p.x, y: p.y, title: c[PART.title] as SVGTitleElement, glyph: c[PART.glyph] as SVGPathElement,
        label: c[PART.label] as SVGTextElement, sub: c[PART.sub] as SVGTextElement,
        fill: c[PART.fill] as SVGRectElement, sig: looks[i].sig
      });
    });
    for (const p of placed) {
      if (p.item.kind === 'more') this.nodeLayer.append(this.buildMore(p));
      else if (p.item.kind === 'less') this.nodeLayer.append(this.buildLess(p));
    }
  }

  /** "+N more": the same parts as a node, the progress track replaced by status segments. */
  private buildMore(p: Placement): SVGGElement {
    const item = p.item as Extract<Item, { kind: 'more' }>;
    const parts = NODE_PARTS.slice(0, PART.fill - 1);
    const g = partsTemplate(parts, 'cr-item cr-more');
    placeParts(g, parts, p.x, p.y);
    g.dataset.key = item.key;
    g.dataset.summaryGen = String(item.gen);
    const c = g.children;
    c[PART.label].textContent = `+${item.hidden.length} more`;
    const els: MoreEls = {
      g, x: p.x, y: p.y, title: c[PART.title] as SVGTitleElement, glyph: c[PART.glyph] as SVGPathElement,
      sub: c[PART.sub] as SVGTextElement, segs: svg('g', {}, 'cr-segs'), sig: ''
    };
    g.append(els.segs);
    this.moreEls.set(item.gen, els);
    this.paintMore(els, item);
    return g;
  }

  private buildLess(p: Placement): SVGGElement {
    const item = p.item as Extract<Item, { kind: 'less' }>;
    const g = svg('g', { tabindex: -1, role: 'button' }, 'cr-item cr-less');
    g.dataset.key = item.key;
    g.setAttribute('aria-label', `Collapse this generation of ${item.count} steps`);
    const text = svg('text', { x: p.x + p.w / 2, y: p.y + p.h / 2 + 4, 'text-anchor': 'middle' }, 'cr-sub');
    text.textContent = this.layout?.orient === 'tb' ? `show fewer (${item.count})` : `show fewer (${item.count} steps)`;
    g.append(svg('rect', { x: p.x - 4, y: p.y - 4, width: p.w + 8, height: p.h + 8, rx: 10 }, 'cr-halo'),
             svg('rect', { x: p.x, y: p.y, width: p.w, height: p.h, rx: Math.min(p.w, p.h) / 2 }, 'cr-card'),
             text);
    return g;
  }

  private drawEdges(): void {
    const layout = this.layout!;
    let line = '';
    let head = '';
    for (const [a, b] of layout.edges) {
      const e = edgePath(layout.placed.get(a)!, layout.placed.get(b)!, layout.orient);
      line += e.line;
      head += e.head;
    }
    // All edges in two paths: one element instead of thousands.
    this.edgeLine.setAttribute('d', line);
    this.edgeHead.setAttribute('d', head);
  }

  /** Text is measured in the font the SVG really uses (the theme's UI font). */
  private makeFitters(): void {
    const family = getComputedStyle(this.svgEl).fontFamily || 'sans-serif';
    if (this.labelFit && this.fontFamily === family) return;
    this.fontFamily = family;
    this.labelFit = new TextFitter(`600 12.5px ${family}`, TEXT_W, LABEL_CHARS);
    this.subFit = new TextFitter(`11px ${family}`, TEXT_W, SUB_CHARS);
  }

  private fontFamily = '';

  /** The viewport a layout must fit: the canvas, or in a cell, its width and maximum height. */
  private viewportSize(): [number, number] {
    const w = this.canvas.clientWidth || 900;
    return [w, this.opts.fill ? this.canvas.clientHeight || CANVAS_MAX_H : CANVAS_MAX_H];
  }

  private orientation(): Orientation {
    const [vw, vh] = this.viewportSize();
    return chooseOrientation(this.state!.layout.generations, this.opts.collapseLimit ?? 40,
                             this.expanded, vw, vh);
  }

  /**
   * In a notebook cell the canvas is as tall as the graph needs, within bounds;
   * in a panel CSS decides. Returns the canvas height.
   */
  private sizeCanvas(w: number, panelH: number): number {
    if (this.opts.fill) return panelH;
    const layout = this.layout!;
    const k = Math.min(1, w / layout.width, CANVAS_MAX_H / layout.height);
    const h = Math.max(CANVAS_MIN_H, Math.min(CANVAS_MAX_H, Math.ceil(layout.height * k) + 8));
    this.element.style.setProperty('--cr-canvas-h', `${h}px`);
    return h;
  }

  // -- patching -----------------------------------------------------------------------

  private patch(): void {
    const t0 = performance.now();
    const st = this.state!;
    const layout = this.layout!;
    const summaries = new Set<number>();
    let n = 0;
    for (const id of this.dirty) {
      const els = this.nodeEls.get(id);
      const node = st.nodes.get(id);
      if (els && node) {
        this.paintNode(els, node);
        n++;
        continue;
      }
      const owner = layout.owner.get(id);
      const p = owner ? layout.placed.get(owner) : undefined;
      if (p?.item.kind === 'more') summaries.add(p.item.gen);
    }
    this.dirty.clear();
    for (const gen of summaries) {
      const p = layout.placed.get(moreKey(gen))!;
      this.paintMore(this.moreEls.get(gen)!, p.item as Extract<Item, { kind: 'more' }>);
    }
    const ms = performance.now() - t0;
    const t = this.timings;
    t.patch = ms;
    t.patched = n + summaries.size;
    t.patches++;
    t.patchTotal += ms;
    t.patchMax = Math.max(t.patchMax, ms);
  }

  /** What `n` looks like drawn at (x, y). Pure apart from text measuring. */
  private nodeLook(n: NodeInfo, x: number, y: number): NodeLook {
    const sub = nodeSubtitle(n);
    const mode = progressMode(n);
    const pct = n.progress ?? 0;
    const name = n.label === n.id ? n.label : `${n.label} (${n.id})`;
    const said = STATUS_LABEL[n.status];
    return {
      sig: `${n.status}|${sub}|${mode}|${pct}|${n.label}`,
      status: n.status,
      progress: mode,
      glyph: glyphAt(n.status, x + GLYPH_X, y + GLYPH_Y),
      glyphClass: `cr-glyph ${GLYPHS[n.status].fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'}`,
      label: this.labelFit!.fit(n.label),
      sub: this.subFit!.fit(sub),
      // Indeterminate: a fixed-width segment that CSS slides along the track.
      fillWidth: mode === 'indeterminate' ? 36 : Math.round((TEXT_W - 2) * Math.min(1, Math.max(0, pct))),
      title: `${name}\n${said}${sub !== said ? ` — ${sub}` : ''}`,
      aria: `${n.label}: ${sub}`
    };
  }

  private paintNode(els: NodeEls, n: NodeInfo): void {
    const look = this.nodeLook(n, els.x, els.y);
    if (look.sig === els.sig) return; // nothing visible changed (a cost update, say)
    els.sig = look.sig;
    const g = els.g;
    g.dataset.status = look.status;
    g.dataset.progress = look.progress;
    els.glyph.setAttribute('d', look.glyph);
    els.glyph.setAttribute('class', look.glyphClass);
    els.label.textContent = look.label;
    els.sub.textContent = look.sub;
    els.fill.setAttribute('width', String(look.fillWidth));
    els.title.textContent = look.title;
    g.setAttribute('aria-label', look.aria);
  }

  private paintMore(els: MoreEls, item: Extract<Item, { kind: 'more' }>): void {
    const counts = statusCounts(item.hidden, this.state!.nodes);
    const text = countsText(counts);
    if (text === els.sig) return;
    els.sig = text;
    const dom = dominantStatus(counts);
    els.g.dataset.status = dom;
    setGlyph(els.glyph, dom, els.x, els.y);
    els.sub.textContent = this.subFit!.fit(text);
    els.title.textContent = `${item.hidden.length} more steps in this generation — click to show them\n${text}`;
    els.g.setAttribute('aria-label', `${item.hidden.length} more steps: ${text}. Show them`);
    this.paintSegments(els, counts, item.hidden.length);
  }

  /** A stacked bar of the hidden nodes' statuses. */
  private paintSegments(els: MoreEls, counts: Partial<Record<NodeState, number>>, total: number): void {
    const width = TEXT_W - 2;
    let x = els.x + 40;
    const rects: SVGRectElement[] = [];
    for (const s of NODE_STATES) {
      const c = counts[s] ?? 0;
      if (!c) continue;
      const w = (width * c) / total;
      const r = svg('rect', { x: x.toFixed(1), y: els.y + 42, width: Math.max(1, w).toFixed(1), height: 3 }, 'cr-seg');
      r.dataset.status = s;
      rects.push(r);
      x += w;
    }
    els.segs.replaceChildren(...rects);
  }

  // -- legend -------------------------------------------------------------------------

  private buildLegend(): HTMLUListElement {
    const ul = html('ul', 'cr-legend');
    ul.setAttribute('aria-label', 'Step statuses');
    for (const s of NODE_STATES) {
      const li = html('li', 'cr-legend-item cr-zero');
      li.dataset.status = s;
      const count = html('span', 'cr-legend-count', '0');
      li.append(glyphIcon(s, 12), html('span', 'cr-legend-label', STATUS_LABEL[s]), count);
      this.legendCounts.set(s, count);
      ul.append(li);
    }
    return ul;
  }

  private updateLegend(): void {
    const counts = this.state?.run.counts ?? {};
    for (const [s, el] of this.legendCounts) {
      const c = String(counts[s] ?? 0);
      if (el.textContent !== c) {
        el.textContent = c;
        el.parentElement!.classList.toggle('cr-zero', c === '0');
      }
    }
  }

  // -- selection, focus, keyboard -------------------------------------------------------

  private applySelection(): void {
    for (const el of this.nodeLayer.querySelectorAll('.cr-selected')) {
      el.classList.remove('cr-selected');
      el.removeAttribute('aria-pressed');
    }
    const els = this.selected ? this.nodeEls.get(this.selected) : undefined;
    els?.g.classList.add('cr-selected');
    els?.g.setAttribute('aria-pressed', 'true');
    this.canvas.classList.toggle('cr-has-selection', !!els);
    this.drawHighlight(els ? this.selected! : null);
  }

  /** The selected node's incoming and outgoing edges, drawn over the others. */
  private drawHighlight(key: string | null): void {
    let line = '';
    let head = '';
    if (key && this.layout) {
      for (const [a, b] of this.layout.edges) {
        if (a !== key && b !== key) continue;
        const e = edgePath(this.layout.placed.get(a)!, this.layout.placed.get(b)!, this.layout.orient);
        line += e.line;
        head += e.head;
      }
    }
    this.hiLine.setAttribute('d', line);
    this.hiHead.setAttribute('d', head);
  }

  /** Expand the generation hiding `id`, and pan so that it is visible. */
  private reveal(id: string): void {
    const layout = this.layout;
    if (!layout) return;
    const owner = layout.owner.get(id);
    const p = owner ? layout.placed.get(owner) : undefined;
    if (p?.item.kind === 'more') {
      this.expanded.add(p.item.gen);
      this.rebuild = true;
      this.flush();
    }
    const q = this.layout?.placed.get(id);
    if (q) this.ensureVisible(q);
  }

  private ensureVisible(p: Placement): void {
    const { clientWidth: w, clientHeight: h } = this.canvas;
    const v = this.view;
    const x0 = p.x * v.k + v.x;
    const y0 = p.y * v.k + v.y;
    const x1 = (p.x + p.w) * v.k + v.x;
    const y1 = (p.y + p.h) * v.k + v.y;
    if (x0 >= 0 && y0 >= 0 && x1 <= w && y1 <= h) return;
    this.view = { ...v, x: w / 2 - (p.x + p.w / 2) * v.k, y: h / 2 - (p.y + p.h / 2) * v.k };
    this.userMoved = true;
    this.applyView();
  }

  /** Roving tabindex: one item is in the tab order; arrows move between items. */
  private setRoving(key: string | null, focus: boolean): void {
    const prev = this.focusKey ? this.itemEl(this.focusKey) : null;
    prev?.setAttribute('tabindex', '-1');
    this.focusKey = key;
    const el = key ? this.itemEl(key) : null;
    if (!el) return;
    el.setAttribute('tabindex', '0');
    if (focus) {
      el.focus({ preventScroll: true });
      const p = this.layout?.placed.get(key!);
      if (p) this.ensureVisible(p);
    }
  }

  private itemEl(key: string): SVGGElement | null {
    return this.nodeEls.get(key)?.g
      ?? this.nodeLayer.querySelector<SVGGElement>(`[data-key="${CSS.escape(key)}"]`);
  }

  private activate(key: string): void {
    const p = this.layout?.placed.get(key);
    if (!p) return;
    this.setRoving(key, false);
    if (p.item.kind === 'node') {
      this.select(p.item.id);
    } else {
      // Expand or collapse a generation; keep keyboard focus on the same column.
      const gen = p.item.gen;
      if (p.item.kind === 'more') this.expanded.add(gen);
      else this.expanded.delete(gen);
      this.rebuild = true;
      this.flush();
      const col = this.layout?.columns[p.col];
      const next = p.item.kind === 'more' ? col?.[p.row]?.key : col?.[col.length - 1]?.key;
      if (next) this.setRoving(next, true);
    }
  }

  private onKey(ev: KeyboardEvent): void {
    const item = (ev.target as Element).closest?.('[data-key]') as SVGGElement | null;
    const dirs: Record<string, Direction> = {
      ArrowLeft: 'left', ArrowRight: 'right', ArrowUp: 'up', ArrowDown: 'down'
    };
    if (item && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault();
      this.activate(item.dataset.key!);
    } else if (item && dirs[ev.key] && this.layout) {
      ev.preventDefault();
      const next = neighbour(this.layout, item.dataset.key!, dirs[ev.key]);
      if (next) this.setRoving(next, true);
    } else if (ev.key === 'Escape' && this.selected) {
      this.select(null);
    } else if (ev.key === '+' || ev.key === '=') {
      this.zoom(1.25);
    } else if (ev.key === '-') {
      this.zoom(0.8);
    } else if (ev.key === '0') {
      this.fit();
    }
  }

  // -- zoom and pan -------------------------------------------------------------------

  private toolbar(): HTMLDivElement {
    const bar = html('div', 'cr-zoombar');
    const button = (text: string, label: string, fn: () => void) => {
      const b = html('button', 'cr-zoom-btn', text);
      b.type = 'button';
      b.title = label;
      b.setAttribute('aria-label', label);
      b.addEventListener('click', fn);
      return b;
    };
    bar.append(button('−', 'Zoom out (-)', () => this.zoom(0.8)),
               button('+', 'Zoom in (+)', () => this.zoom(1.25)),
               button('Fit', 'Fit the whole graph in view (0)', () => this.fit()));
    return bar;
  }

  private applyView(): void {
    const v = this.view;
    const t = `translate(${v.x.toFixed(1)} ${v.y.toFixed(1)}) scale(${v.k.toFixed(4)})`;
    this.viewport.setAttribute('transform', t);
    this.edgeViewport.setAttribute('transform', t);
    this.canvas.classList.toggle('cr-lod', v.k < LOD_ZOOM);
  }

  /** Keep the whole graph in view while the reader has not zoomed or panned. */
  private onResize(): void {
    if (!this.layout || this.userMoved || this.resizeFrame) return;
    this.resizeFrame = requestAnimationFrame(() => {
      this.resizeFrame = 0;
      if (!this.layout || !this.state) return;
      if (this.orientation() !== this.layout.orient) this.build();
      else this.fit();
    });
  }

  private listen(): void {
    const el = this.svgEl;
    el.addEventListener('keydown', ev => this.onKey(ev));
    el.addEventListener('click', ev => {
      if (this.dragged) return;
      const item = (ev.target as Element).closest?.('[data-key]') as SVGGElement | null;
      if (item) this.activate(item.dataset.key!);
    });
    el.addEventListener('wheel', ev => this.onWheel(ev), { passive: false });
    el.addEventListener('pointerdown', ev => this.onPointerDown(ev));
    this.canvas.addEventListener('pointerleave', () => {
      this.engaged = false;
    });
  }

  private onWheel(ev: WheelEvent): void {
    const always = this.opts.wheelZoom === 'always';
    if (!always && !ev.ctrlKey && !ev.metaKey && !this.engaged) {
      this.showHint();
      return; // let the page scroll
    }
    ev.preventDefault();
    const r = this.svgEl.getBoundingClientRect();
    const factor = Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015));
    this.view = zoomAt(this.view, factor, ev.clientX - r.left, ev.clientY - r.top);
    this.userMoved = true;
    this.applyView();
  }

  private showHint(): void {
    this.hint.hidden = false;
    if (this.hintTimer) clearTimeout(this.hintTimer);
    this.hintTimer = setTimeout(() => {
      this.hint.hidden = true;
    }, 1600);
  }

  private dragged = false;

  private onPointerDown(ev: PointerEvent): void {
    if (ev.button !== 0) return;
    this.engaged = true;
    this.dragged = false;
    const start = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y };
    const el = this.svgEl;
    const move = (e: PointerEvent) => {
      const dx = e.clientX - start.x;
      const dy = e.clientY - start.y;
      if (!this.dragged && Math.hypot(dx, dy) < 4) return; // a click, not a drag
      if (!this.dragged) {
        this.dragged = true;
        el.setPointerCapture(ev.pointerId);
        el.classList.add('cr-panning');
      }
      this.view = { ...this.view, x: start.vx + dx, y: start.vy + dy };
      this.userMoved = true;
      this.applyView();
    };
    const up = () => {
      el.removeEventListener('pointermove', move);
      el.removeEventListener('pointerup', up);
      el.removeEventListener('pointercancel', up);
      el.classList.remove('cr-panning');
      // The click that follows a drag must not select; clear the flag after it.
      setTimeout(() => {
        this.dragged = false;
      }, 0);
    };
    el.addEventListener('pointermove', move);
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', up);
  }
}

/** Generations and edge count: equal signatures need no new SVG (a snapshot after a reconnect). */
function layoutSignature(st: RunState): string {
  return `${st.edges.length}|${st.layout.generations.map(g => g.join('\u0001')).join('\u0002')}`;
}
