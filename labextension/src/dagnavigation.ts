// How the reader moves around the DAG view: pan (drag), zoom (the wheel, keys, the
// zoom buttons) and the keyboard (one item in the tab order, arrows between items,
// Enter or Space to activate one, Escape to clear the selection). It draws nothing:
// it moves the layers' transform, and tells the view which item was activated.
import { Direction, fitView, GraphLayout, neighbour, Placement, View, zoomAt } from './dagmodel';
import { el as html } from './dom';

/** Below this zoom, text is unreadable: hide it (and save the painting). */
const LOD_ZOOM = 0.45;

/** What the navigation needs from the view that draws the graph. */
export interface DagNavigationHost {
  /** The layout drawn now, if any. */
  layout(): GraphLayout | null;
  /** The element drawn for an item. */
  itemEl(key: string): SVGGElement | null;
  /** An item was clicked, or Enter or Space pressed on it. */
  activate(key: string): void;
  /** Escape: clear the selection, if any. */
  escape(): void;
}

export interface DagNavigationElements {
  /** The box the graph is seen through: its size, the level-of-detail class. */
  canvas: HTMLDivElement;
  /** Where input arrives (the nodes' SVG). */
  surface: SVGSVGElement;
  /** What the view transform moves (the nodes' and the edges' viewports). */
  layers: SVGGElement[];
}

export class DagNavigation {
  /** The zoom and pan buttons, and the hint a wheel that does not zoom shows. */
  readonly toolbar: HTMLDivElement;
  readonly hint: HTMLDivElement;
  private view: View = { x: 0, y: 0, k: 1 };
  private userMoved = false;
  private engaged = false;
  private dragged = false;
  private focusKey: string | null = null;
  /** The focus was to move to an item not drawn yet (a build in progress). */
  private focusPending = false;
  private hintTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly host: DagNavigationHost, private readonly els: DagNavigationElements,
              private readonly wheelZoom: 'always' | 'engaged' = 'engaged') {
    this.toolbar = this.buildToolbar();
    this.hint = html('div', 'cr-canvas-hint', 'Ctrl + scroll (⌘ on a Mac) to zoom · drag to pan');
    this.hint.hidden = true;
    this.listen();
  }

  /** Whether the reader has zoomed or panned since the last fit (their view is kept). */
  get moved(): boolean {
    return this.userMoved;
  }

  /** Fit the whole graph in the canvas. */
  fit(): void {
    const layout = this.host.layout();
    if (!layout) return;
    const { clientWidth: w, clientHeight: h } = this.els.canvas;
    if (!w || !h) return;
    this.view = fitView(layout.width, layout.height, w, h);
    this.userMoved = false;
    this.applyView();
  }

  /**
   * After a new layout: fit it into a canvas of w × h (known sizes, no DOM reads) unless
   * the reader has moved the view, and put the focus back on an item that still exists.
   */
  placeLayout(layout: GraphLayout, w: number, h: number): void {
    if (this.focusKey && !layout.placed.has(this.focusKey)) this.focusKey = null;
    this.focus(this.focusKey ?? layout.columns[0]?.[0]?.key ?? null, false);
    if (!this.userMoved) this.view = fitView(layout.width, layout.height, w, h);
    this.applyView();
  }

  /**
   * Pan so that `p` is in view, if it is not; with `minK`, also zoom in to at least that
   * scale (a step found by name must be readable, not a speck in a fitted 20,000-node graph).
   */
  ensureVisible(p: Placement, minK = 0): void {
    const { clientWidth: w, clientHeight: h } = this.els.canvas;
    const v = this.view.k < minK ? { ...this.view, k: minK } : this.view;
    const x0 = p.x * v.k + v.x;
    const y0 = p.y * v.k + v.y;
    const x1 = (p.x + p.w) * v.k + v.x;
    const y1 = (p.y + p.h) * v.k + v.y;
    if (v === this.view && x0 >= 0 && y0 >= 0 && x1 <= w && y1 <= h) return;
    this.view = { ...v, x: w / 2 - (p.x + p.w / 2) * v.k, y: h / 2 - (p.y + p.h / 2) * v.k };
    this.userMoved = true;
    this.applyView();
  }

  /** The item in the tab order (drawn or not yet). */
  get focused(): string | null {
    return this.focusKey;
  }

  /**
   * Roving tabindex: one item is in the tab order; arrows move between items. An item
   * not drawn yet gets it (and the focus, with `move`) when it is drawn.
   */
  focus(key: string | null, move: boolean): void {
    const prev = this.focusKey ? this.host.itemEl(this.focusKey) : null;
    prev?.setAttribute('tabindex', '-1');
    this.focusKey = key;
    const el = key ? this.host.itemEl(key) : null;
    this.focusPending = !el && move;
    if (!el) return;
    el.setAttribute('tabindex', '0');
    if (move) {
      el.focus({ preventScroll: true });
      const p = this.host.layout()?.placed.get(key!);
      if (p) this.ensureVisible(p);
    }
  }

  /** A slice of a build drew `keys`: the focused item may be among them. */
  itemsDrawn(keys: string[]): void {
    if (this.focusKey && keys.includes(this.focusKey)) this.focus(this.focusKey, this.focusPending);
  }

  dispose(): void {
    if (this.hintTimer) clearTimeout(this.hintTimer);
  }

  // -- zoom and pan -------------------------------------------------------------------

  private zoom(factor: number): void {
    const { clientWidth: w, clientHeight: h } = this.els.canvas;
    this.view = zoomAt(this.view, factor, w / 2, h / 2);
    this.userMoved = true;
    this.applyView();
  }

  private buildToolbar(): HTMLDivElement {
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
    for (const layer of this.els.layers) layer.setAttribute('transform', t);
    this.els.canvas.classList.toggle('cr-lod', v.k < LOD_ZOOM);
  }

  private listen(): void {
    const el = this.els.surface;
    el.addEventListener('keydown', ev => this.onKey(ev));
    el.addEventListener('click', ev => {
      if (this.dragged) return;
      const item = (ev.target as Element).closest?.('[data-key]') as SVGGElement | null;
      if (item) this.host.activate(item.dataset.key!);
    });
    el.addEventListener('wheel', ev => this.onWheel(ev), { passive: false });
    el.addEventListener('pointerdown', ev => this.onPointerDown(ev));
    this.els.canvas.addEventListener('pointerleave', () => {
      this.engaged = false;
    });
  }

  private onWheel(ev: WheelEvent): void {
    const always = this.wheelZoom === 'always';
    if (!always && !ev.ctrlKey && !ev.metaKey && !this.engaged) {
      this.showHint();
      return; // let the page scroll
    }
    ev.preventDefault();
    const r = this.els.surface.getBoundingClientRect();
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

  private onPointerDown(ev: PointerEvent): void {
    if (ev.button !== 0) return;
    this.engaged = true;
    this.dragged = false;
    const start = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y };
    const el = this.els.surface;
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

  // -- keyboard -------------------------------------------------------------------------

  private onKey(ev: KeyboardEvent): void {
    const item = (ev.target as Element).closest?.('[data-key]') as SVGGElement | null;
    const dirs: Record<string, Direction> = {
      ArrowLeft: 'left', ArrowRight: 'right', ArrowUp: 'up', ArrowDown: 'down'
    };
    const layout = this.host.layout();
    if (item && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault();
      this.host.activate(item.dataset.key!);
    } else if (item && dirs[ev.key] && layout) {
      ev.preventDefault();
      const next = neighbour(layout, item.dataset.key!, dirs[ev.key]);
      if (next) this.focus(next, true);
    } else if (ev.key === 'Escape') {
      this.host.escape();
    } else if (ev.key === '+' || ev.key === '=') {
      this.zoom(1.25);
    } else if (ev.key === '-') {
      this.zoom(0.8);
    } else if (ev.key === '0') {
      this.fit();
    }
  }
}
