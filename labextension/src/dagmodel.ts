// The DAG view's geometry, without the DOM: which items each generation shows
// (collapsing wide ones), where they go, and which edges join them. Pure, so the
// rules are unit-tested and a re-layout costs no DOM reads.
import type { EdgeInfo, NodeInfo, NodeState } from './protocol';

export const NODE_W = 188;
export const NODE_H = 52;
/** The "show fewer" item: short in left→right, narrow in top→bottom. */
export const LESS_H = 30;
export const LESS_W = 150;
export const PAD = 20;

/** Generations as columns (left→right) or as rows (top→bottom). */
export type Orientation = 'lr' | 'tb';

/** Space between generations, and between items of one generation. */
const GAP_RANK: Record<Orientation, number> = { lr: 72, tb: 44 };
const GAP_SLOT: Record<Orientation, number> = { lr: 14, tb: 16 };

export type Item =
  | { kind: 'node'; key: string; id: string; gen: number }
  /** The summary of a collapsed generation's hidden tail: "+N more". */
  | { kind: 'more'; key: string; gen: number; hidden: string[] }
  /** At the end of an expanded wide generation: collapse it again. */
  | { kind: 'less'; key: string; gen: number; count: number };

export function moreKey(gen: number): string {
  return `more:${gen}`;
}

export function lessKey(gen: number): string {
  return `less:${gen}`;
}

/**
 * The items each generation shows. A generation with more than `limit` nodes shows
 * its first `limit - 1` (declaration order, so the picture is stable while statuses
 * change) and one summary item for the rest, unless it was expanded.
 */
export function collapseGenerations(gens: string[][], limit: number,
                                    expanded: ReadonlySet<number>): Item[][] {
  return gens.map((ids, gen) => {
    const nodes = (list: string[]): Item[] => list.map(id => ({ kind: 'node', key: id, id, gen }));
    if (ids.length <= limit) return nodes(ids);
    if (expanded.has(gen)) {
      return [...nodes(ids), { kind: 'less', key: lessKey(gen), gen, count: ids.length }];
    }
    const keep = Math.max(1, limit - 1);
    return [...nodes(ids.slice(0, keep)), { kind: 'more', key: moreKey(gen), gen, hidden: ids.slice(keep) }];
  });
}

export interface Placement {
  item: Item;
  x: number;
  y: number;
  w: number;
  h: number;
  /** Generation index, and index within it. */
  col: number;
  row: number;
}

export interface GraphLayout {
  orient: Orientation;
  columns: Item[][];
  /** Item key -> where it is drawn. */
  placed: Map<string, Placement>;
  /** Node id -> key of the item that shows it (itself, or its generation's summary). */
  owner: Map<string, string>;
  /** Item-to-item edges (keys), without duplicates or self-loops. */
  edges: Array<[string, string]>;
  width: number;
  height: number;
}

function itemSize(item: Item, orient: Orientation): [number, number] {
  if (item.kind !== 'less') return [NODE_W, NODE_H];
  return orient === 'lr' ? [NODE_W, LESS_H] : [LESS_W, NODE_H];
}

/**
 * Generations one after the other along the main axis, each centred on the widest
 * one across it. Computed in (along, across) coordinates, then mapped to (x, y).
 */
export function layoutGraph(gens: string[][], edges: EdgeInfo[], limit: number,
                            expanded: ReadonlySet<number>, orient: Orientation = 'lr'): GraphLayout {
  const columns = collapseGenerations(gens, limit, expanded);
  const lr = orient === 'lr';
  const across = (it: Item) => itemSize(it, orient)[lr ? 1 : 0];
  const rankDepth = lr ? NODE_W : NODE_H;
  const span = (col: Item[]) => columnSpan(col, orient);
  const { inner, width, height } = extent(columns, orient);
  const placed = new Map<string, Placement>();
  const owner = new Map<string, string>();
  columns.forEach((col, c) => {
    let a = PAD + (inner - span(col)) / 2;
    const along = PAD + c * (rankDepth + GAP_RANK[orient]);
    col.forEach((item, row) => {
      const [w, h] = itemSize(item, orient);
      const x = lr ? along : a;
      const y = lr ? a : along;
      placed.set(item.key, { item, x, y, w, h, col: c, row });
      if (item.kind === 'node') owner.set(item.id, item.key);
      if (item.kind === 'more') for (const id of item.hidden) owner.set(id, item.key);
      a += across(item) + GAP_SLOT[orient];
    });
  });
  return { orient, columns, placed, owner, edges: itemEdges(edges, owner), width, height };
}

/** A generation's size across the main axis. */
function columnSpan(col: Item[], orient: Orientation): number {
  const i = orient === 'lr' ? 1 : 0;
  return col.reduce((s, it) => s + itemSize(it, orient)[i], 0) + GAP_SLOT[orient] * Math.max(0, col.length - 1);
}

/** The graph's size, and the widest generation's span, without placing anything. */
function extent(columns: Item[][], orient: Orientation): { inner: number; width: number; height: number } {
  const lr = orient === 'lr';
  let inner = lr ? NODE_H : NODE_W;
  for (const col of columns) inner = Math.max(inner, columnSpan(col, orient));
  const rankDepth = lr ? NODE_W : NODE_H;
  const length = 2 * PAD + columns.length * rankDepth + Math.max(0, columns.length - 1) * GAP_RANK[orient];
  const breadth = 2 * PAD + inner;
  return { inner, width: lr ? length : breadth, height: lr ? breadth : length };
}

/**
 * The orientation that shows the whole graph largest in a `vw`×`vh` viewport
 * (left→right unless top→bottom is clearly better): a pipeline in a 900 px notebook
 * cell reads at 100 % top→bottom, a wide DAG reads better left→right.
 */
export function chooseOrientation(gens: string[][], limit: number, expanded: ReadonlySet<number>,
                                  vw: number, vh: number): Orientation {
  const columns = collapseGenerations(gens, limit, expanded);
  const scale = (o: Orientation) => {
    const { width, height } = extent(columns, o);
    return fitView(width, height, vw, vh).k;
  };
  return scale('tb') > scale('lr') * 1.1 ? 'tb' : 'lr';
}

/** Node edges mapped onto the items that show their ends; one edge per item pair. */
export function itemEdges(edges: EdgeInfo[], owner: Map<string, string>): Array<[string, string]> {
  // Pairs are keyed by numbers (an index per item), not strings: tens of thousands of
  // edges are mapped in every layout, and string keys were most of its cost.
  const index = new Map<string, number>();
  const num = (key: string) => {
    let i = index.get(key);
    if (i === undefined) index.set(key, (i = index.size));
    return i;
  };
  const seen = new Set<number>();
  const out: Array<[string, string]> = [];
  for (const e of edges) {
    const a = owner.get(e.source);
    const b = owner.get(e.target);
    if (!a || !b || a === b) continue;
    const k = num(a) * 2 ** 26 + num(b);
    if (seen.has(k)) continue;
    seen.add(k);
    out.push([a, b]);
  }
  return out;
}

/** One edge as a curve from the exit side of `a` to the entry side of `b`, with an arrowhead. */
export function edgePath(a: Placement, b: Placement, orient: Orientation = 'lr'): { line: string; head: string } {
  const r = (v: number) => Math.round(v * 10) / 10;
  if (orient === 'tb') {
    const x1 = a.x + a.w / 2;
    const y1 = a.y + a.h;
    const x2 = b.x + b.w / 2;
    const y2 = b.y - 2;
    const dy = Math.max(18, Math.min(70, (y2 - y1) * 0.5));
    return {
      line: `M${r(x1)} ${r(y1)}C${r(x1)} ${r(y1 + dy)} ${r(x2)} ${r(y2 - dy)} ${r(x2)} ${r(y2 - 5)}`,
      head: `M${r(x2)} ${r(y2)}l-3.6 -6.5h7.2z`
    };
  }
  const x1 = a.x + a.w;
  const y1 = a.y + a.h / 2;
  const x2 = b.x - 2;
  const y2 = b.y + b.h / 2;
  const dx = Math.max(24, Math.min(90, (x2 - x1) * 0.5));
  return {
    line: `M${r(x1)} ${r(y1)}C${r(x1 + dx)} ${r(y1)} ${r(x2 - dx)} ${r(y2)} ${r(x2 - 5)} ${r(y2)}`,
    head: `M${r(x2)} ${r(y2)}l-6.5 -3.6v7.2z`
  };
}

/** Status counts of a set of nodes (a summary item's hidden nodes). */
export function statusCounts(ids: Iterable<string>,
                             nodes: Map<string, NodeInfo>): Partial<Record<NodeState, number>> {
  const out: Partial<Record<NodeState, number>> = {};
  for (const id of ids) {
    const s = nodes.get(id)?.status;
    if (s) out[s] = (out[s] ?? 0) + 1;
  }
  return out;
}

export type Direction = 'left' | 'right' | 'up' | 'down';

/**
 * The item keyboard navigation moves to from `key`, or null at an edge of the graph.
 * Arrows follow the picture: across generations along the main axis, within one across it.
 */
export function neighbour(layout: GraphLayout, key: string, dir: Direction): string | null {
  const p = layout.placed.get(key);
  if (!p) return null;
  const lr = layout.orient === 'lr';
  const alongRanks = lr ? dir === 'left' || dir === 'right' : dir === 'up' || dir === 'down';
  const step = dir === 'left' || dir === 'up' ? -1 : 1;
  if (!alongRanks) {
    const next = layout.columns[p.col][p.row + step];
    return next ? next.key : null;
  }
  const col = layout.columns[p.col + step];
  if (!col || !col.length) return null;
  // The item of the adjacent generation closest across the main axis.
  const mid = lr ? p.y + p.h / 2 : p.x + p.w / 2;
  let best = col[0].key;
  let dist = Infinity;
  for (const it of col) {
    const q = layout.placed.get(it.key)!;
    const d = Math.abs((lr ? q.y + q.h / 2 : q.x + q.w / 2) - mid);
    if (d < dist) {
      dist = d;
      best = it.key;
    }
  }
  return best;
}

export interface View {
  x: number;
  y: number;
  k: number;
}

/**
 * The transform that shows all of a `w`×`h` graph in a `vw`×`vh` viewport, never
 * above 100 %, keeping `margin` screen pixels clear on each side.
 */
export function fitView(w: number, h: number, vw: number, vh: number, maxK = 1, margin = 6): View {
  const k = Math.max(0.02, Math.min(maxK, (vw - 2 * margin) / w, (vh - 2 * margin) / h));
  return { k, x: (vw - w * k) / 2, y: (vh - h * k) / 2 };
}

/** Zoom by `factor` around the viewport point (px, py), within [minK, maxK]. */
export function zoomAt(v: View, factor: number, px: number, py: number,
                       minK = 0.05, maxK = 2.5): View {
  const k = Math.max(minK, Math.min(maxK, v.k * factor));
  const f = k / v.k;
  return { k, x: px - (px - v.x) * f, y: py - (py - v.y) * f };
}
