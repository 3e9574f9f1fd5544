// The DAG as SVG, one topological generation per column (left→right) or per row
// (top→bottom): whichever shows the whole graph larger in the space it has, so a
// pipeline reads at 100 % in a notebook cell and a wide DAG fits a panel. The SVG is
// built once per layout (new nodes, a snapshot, a generation expanded), in slices of a
// few milliseconds, one per frame (dagslices.ts), starting from the generation the
// reader is on: no long task even at 20,000 nodes, and the view pans, zooms and selects
// while it fills in. After that, updates touch only the nodes that changed, batched into
// one animation frame, so hundreds of events a second stay cheap. Wide generations
// collapse into "+N more"; the search box (dagsearch.ts) finds any node, collapsed or
// not, and selecting it expands its generation. Where things go is dagmodel.ts's (pure
// geometry), what a node shows dagnode.ts's, and moving around the graph (pan, zoom,
// keyboard focus) dagnavigation.ts's; this draws and selects.
import type { Layout, NodeInfo, NodeState } from './protocol';
import {
  chooseOrientation, edgePath, GraphLayout, Item, layoutGraph, moreKey, Orientation,
  Placement, statusCounts
} from './dagmodel';
import { DagNavigation } from './dagnavigation';
import { DagSearch } from './dagsearch';
import { chunks, columnOrder, FrameSlicer } from './dagslices';
import {
  NODE_PARTS, NodeFitters, nodeFitters, NodeLook, nodeLook, nodeMarkup, PART, partsTemplate,
  placeParts, setGlyph, TEXT_W
} from './dagnode';
import { el as html, glyphIcon, svg } from './dom';
import type { RunState } from './state';
import { NODE_STATES } from './states';
import { countsText, dominantStatus, STATUS_LABEL } from './status';

const CANVAS_MIN_H = 200;
const CANVAS_MAX_H = 520;
/** Items parsed per build step, and ms of building per frame (the rest is the browser's). */
const BUILD_CHUNK = 24;
const BUILD_BUDGET = 4;
/** The least zoom a step found by the search box is shown at: its text readable. */
const FOUND_ZOOM = 0.9;

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
  private readonly nav: DagNavigation;
  private readonly search: DagSearch;
  private readonly slicer = new FrameSlicer(BUILD_BUDGET);
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
  /** The state's layout object changed: compare it with the drawn one at the next frame. */
  private layoutCheck = false;
  private frame = 0;
  private selected: string | null = null;
  private resizeFrame = 0;
  private fitters: NodeFitters | null = null;
  private fontFamily = '';
  /**
   * Build and patch timings (ms) and counts, for the harness and benchmarks. `build`: the
   * last build, start to last slice; `slices`, `sliceMax`: its slices and the longest
   * task (the layout's, or a slice's);
   * `building`: 1 from a new layout's arrival until its build has filled the graph in.
   */
  readonly timings = { build: 0, builds: 0, building: 0, slices: 0, sliceMax: 0, patch: 0, patched: 0, patches: 0,
                       patchTotal: 0, patchMax: 0 };

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
    const host = {
      layout: () => this.layout,
      itemEl: (key: string) => this.itemEl(key),
      activate: (key: string) => this.activate(key),
      escape: () => {
        if (this.selected) this.select(null);
      }
    };
    const els = { canvas: this.canvas, surface: this.svgEl, layers: [this.viewport, this.edgeViewport] };
    this.nav = new DagNavigation(host, els, opts.wheelZoom);
    this.search = new DagSearch({
      nodes: () => this.state?.nodes ?? null,
      pick: id => this.select(id, true, FOUND_ZOOM)
    });
    this.svgEl.addEventListener('keydown', ev => {
      if (ev.key === '/' || (ev.key === 'f' && (ev.ctrlKey || ev.metaKey))) {
        ev.preventDefault();
        this.search.focus();
      }
    });
    this.canvas.append(this.edgeSvg, this.svgEl, this.nav.toolbar, this.search.element, this.message,
                       this.nav.hint);
    this.legend = this.buildLegend();
    this.element.append(this.canvas, this.legend);
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
    this.state = state;
    if (state.layout !== this.layoutSrc || full) {
      // Compared at the next frame: the generations of a new plan are computed when first
      // read (state.ts), and at 20,000 nodes they are not for the task that applied it.
      this.layoutSrc = state.layout;
      this.layoutCheck = true;
      this.timings.building = 1; // until the check finds the layout drawn, or the build ends
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

  /** Whether a build is still filling the graph in (slice by slice). */
  get building(): boolean {
    return this.slicer.running || this.layoutCheck || this.rebuild;
  }

  /**
   * Select a node; when `reveal`, expand its collapsed generation and bring it into view
   * (zoomed in to at least `minZoom`).
   */
  select(id: string | null, reveal = false, minZoom = 0): void {
    if (id === this.selected && !reveal) return;
    this.selected = id;
    if (id && reveal) this.reveal(id, minZoom);
    this.applySelection();
    this.opts.onSelect?.(id);
  }

  dispose(): void {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.slicer.cancel();
    if (this.resizeFrame) cancelAnimationFrame(this.resizeFrame);
    this.nav.dispose();
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
    if (this.layoutCheck && this.checkLayout()) {
      // A new layout, whose generations this frame computed: its geometry is the next one's.
      this.schedule();
    } else if (this.rebuild) {
      this.rebuild = false;
      this.dirty.clear();
      this.build();
    } else if (this.dirty.size) {
      this.patch();
    }
    this.updateLegend();
    this.search.refresh();
  }

  /**
   * Whether the state's layout differs from the one drawn (then a rebuild is due); if not
   * (a snapshot after a reconnect, say), every node is repainted instead.
   */
  private checkLayout(): boolean {
    this.layoutCheck = false;
    const st = this.state!;
    const sig = layoutSignature(st);
    if (sig !== this.layoutSig || !this.layout) {
      this.layoutSig = sig;
      this.rebuild = true;
      return true;
    }
    for (const id of st.nodes.keys()) this.dirty.add(id);
    this.timings.building = this.slicer.running ? 1 : 0;
    return false;
  }

  // -- building -----------------------------------------------------------------------

  /**
   * A new layout: geometry and the view transform now (so the reader can pan, zoom and
   * select at once); from the next frame, the edges, then the items in slices, from the
   * generation the reader is on (the focused or selected item's) outwards.
   */
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
    this.canvas.classList.toggle('cr-many', layout.placed.size > 300);
    const ch = this.sizeCanvas(vw, vh);
    // Fit from known sizes; the zoom (and level of detail) is set before the first paint.
    this.nav.placeLayout(layout, vw, ch);
    this.setMessage(st.nodes.size ? null : 'No steps yet: the plan appears here as soon as it is made.');
    const from = this.nav.focused ?? (this.selected ? layout.owner.get(this.selected) : undefined);
    const first = from ? layout.placed.get(from)?.col ?? 0 : 0;
    const items = columnOrder(layout.columns.length, first).flatMap(c => layout.columns[c]);
    const layoutMs = performance.now() - t0;
    this.timings.building = 1;
    this.slicer.start(this.buildSteps(layout, items), () => {
      const t = this.timings;
      t.build = performance.now() - t0;
      t.builds++;
      t.building = 0;
      t.slices = this.slicer.stats.slices;
      t.sliceMax = Math.max(this.slicer.stats.sliceMax, layoutMs);
    });
  }

  /** The old drawing stays until the first slice: no blank frame between two layouts. */
  private *buildSteps(layout: GraphLayout, items: Item[]): Generator<void> {
    this.nodeLayer.replaceChildren();
    this.drawEdges();
    this.applySelection();
    yield;
    for (const chunk of chunks(items, BUILD_CHUNK)) {
      this.buildItems(layout, chunk);
      yield;
    }
  }

  /**
   * Nodes from one parsed string; the few summary items with the DOM API. Each chunk is a
   * group of its own: when a node changes, the browser re-measures its group's few items
   * and the layer's groups, not every item of a 20,000-node graph.
   */
  private buildItems(layout: GraphLayout, items: Item[]): void {
    const nodes = this.state!.nodes;
    const ids: string[] = [];
    const looks: NodeLook[] = [];
    let markup = '';
    for (const item of items) {
      const node = item.kind === 'node' ? nodes.get(item.id) : undefined;
      if (!node) continue;
      const p = layout.placed.get(item.key)!;
      const look = nodeLook(node, p.x, p.y, this.fitters!);
      markup += nodeMarkup(node.id, p.x, p.y, look);
      ids.push(node.id);
      looks.push(look);
    }
    const chunk = svg('g', {}, 'cr-chunk');
    chunk.innerHTML = markup; // parsed as SVG: the group is an SVG element
    const kids = chunk.children;
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
    for (const item of items) {
      const p = layout.placed.get(item.key)!;
      if (item.kind === 'more') chunk.append(this.buildMore(p));
      else if (item.kind === 'less') chunk.append(this.buildLess(p));
    }
    this.nodeLayer.append(chunk);
    if (this.selected && ids.includes(this.selected)) this.applySelection();
    this.nav.itemsDrawn(items.map(it => it.key));
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
    if (this.fitters && this.fontFamily === family) return;
    this.fontFamily = family;
    this.fitters = nodeFitters(family);
  }

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
      // A summary not drawn yet (a build in progress) is painted when it is drawn.
      const els = this.moreEls.get(gen);
      const p = layout.placed.get(moreKey(gen))!;
      if (els) this.paintMore(els, p.item as Extract<Item, { kind: 'more' }>);
    }
    const ms = performance.now() - t0;
    const t = this.timings;
    t.patch = ms;
    t.patched = n + summaries.size;
    t.patches++;
    t.patchTotal += ms;
    t.patchMax = Math.max(t.patchMax, ms);
  }

  private paintNode(els: NodeEls, n: NodeInfo): void {
    const look = nodeLook(n, els.x, els.y, this.fitters!);
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
    els.sub.textContent = this.fitters!.sub.fit(text);
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

  // -- selection, activation --------------------------------------------------------

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
  private reveal(id: string, minZoom: number): void {
    const layout = this.layout;
    if (!layout) return;
    const owner = layout.owner.get(id);
    const p = owner ? layout.placed.get(owner) : undefined;
    // The node becomes the keyboard's item; a new build starts from its generation.
    this.nav.focus(id, false);
    if (p?.item.kind === 'more') {
      this.expanded.add(p.item.gen);
      this.rebuild = true;
      this.flush();
    }
    const q = this.layout?.placed.get(id);
    if (q) this.nav.ensureVisible(q, minZoom);
  }

  private itemEl(key: string): SVGGElement | null {
    return this.nodeEls.get(key)?.g
      ?? this.nodeLayer.querySelector<SVGGElement>(`[data-key="${CSS.escape(key)}"]`);
  }

  private activate(key: string): void {
    const p = this.layout?.placed.get(key);
    if (!p) return;
    this.nav.focus(key, false);
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
      if (next) this.nav.focus(next, true);
    }
  }

  /** Keep the whole graph in view while the reader has not zoomed or panned. */
  private onResize(): void {
    // Hidden (another tab of the run view shows): nothing to fit until shown again.
    if (!this.layout || this.nav.moved || this.resizeFrame || !this.element.clientWidth) return;
    this.resizeFrame = requestAnimationFrame(() => {
      this.resizeFrame = 0;
      if (!this.layout || !this.state) return;
      if (this.orientation() !== this.layout.orient) this.build();
      else this.nav.fit();
    });
  }
}

/** Generations and edge count: equal signatures need no new SVG (a snapshot after a reconnect). */
function layoutSignature(st: RunState): string {
  return `${st.edges.length}|${st.layout.generations.map(g => g.join('\u0001')).join('\u0002')}`;
}
