import { describe, expect, it } from 'vitest';
import {
  chooseOrientation, collapseGenerations, fitView, itemEdges, layoutGraph, moreKey, neighbour,
  NODE_H, NODE_W, statusCounts, zoomAt
} from '../src/dagmodel';
import type { NodeInfo } from '../src/protocol';

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe('collapsing wide generations', () => {
  it('leaves generations up to the limit alone', () => {
    const cols = collapseGenerations([ids('a', 40)], 40, new Set());
    expect(cols[0]).toHaveLength(40);
    expect(cols[0].every(it => it.kind === 'node')).toBe(true);
  });

  it('shows the first limit-1 nodes and one summary of the rest', () => {
    const gen = ids('a', 100);
    const [col] = collapseGenerations([gen], 40, new Set());
    expect(col).toHaveLength(40);
    expect(col.slice(0, 39).map(it => (it as any).id)).toEqual(gen.slice(0, 39));
    const more = col[39];
    expect(more.kind).toBe('more');
    expect(more.kind === 'more' && more.hidden).toEqual(gen.slice(39));
    expect(more.key).toBe(moreKey(0));
  });

  it('shows everything, and a way back, once expanded', () => {
    const [, col] = collapseGenerations([['x'], ids('a', 100)], 40, new Set([1]));
    expect(col).toHaveLength(101);
    expect(col[100]).toMatchObject({ kind: 'less', gen: 1, count: 100 });
  });
});

describe('layout', () => {
  const gens = [['plan'], ['c0', 'c1', 'c2', 'c3'], ['fit'], ['plot'], ['report']];
  const edges = [
    ...['c0', 'c1', 'c2', 'c3'].map(c => ({ source: 'plan', target: c })),
    ...['c0', 'c1', 'c2', 'c3'].map(c => ({ source: c, target: 'fit' })),
    { source: 'fit', target: 'plot' }, { source: 'plot', target: 'report' }
  ];

  it('puts generations in columns (lr) or rows (tb), centred across', () => {
    const lr = layoutGraph(gens, edges, 40, new Set(), 'lr');
    expect(lr.placed.get('c0')!.x).toBeGreaterThan(lr.placed.get('plan')!.x);
    expect(lr.placed.get('c0')!.x).toBe(lr.placed.get('c3')!.x);
    const tb = layoutGraph(gens, edges, 40, new Set(), 'tb');
    expect(tb.placed.get('c0')!.y).toBeGreaterThan(tb.placed.get('plan')!.y);
    expect(tb.placed.get('c0')!.y).toBe(tb.placed.get('c3')!.y);
    const plan = tb.placed.get('plan')!;
    expect(plan.x + NODE_W / 2).toBeCloseTo(tb.width / 2); // centred on the widest row
    expect(tb.edges).toHaveLength(10);
  });

  it('reads a pipeline top→bottom in a notebook cell and a wide DAG left→right', () => {
    expect(chooseOrientation(gens, 40, new Set(), 900, 520)).toBe('tb');
    const wide = Array.from({ length: 25 }, (_, g) => ids(`g${g}_`, 80));
    expect(chooseOrientation(wide, 40, new Set(), 900, 520)).toBe('lr');
  });

  it('routes edges of hidden nodes to their summary, once per item pair', () => {
    const big = [['root'], ids('a', 50)];
    const e = big[1].map(t => ({ source: 'root', target: t }));
    const l = layoutGraph(big, e, 40, new Set());
    expect(l.owner.get('a45')).toBe(moreKey(1));
    expect(l.edges.filter(([, b]) => b === moreKey(1))).toHaveLength(1);
    expect(l.edges).toHaveLength(40);
  });

  it('drops edges inside one summary', () => {
    const owner = new Map([['x', 'more:1'], ['y', 'more:1'], ['z', 'z']]);
    expect(itemEdges([{ source: 'x', target: 'y' }, { source: 'x', target: 'z' }], owner)).toEqual([['more:1', 'z']]);
  });
});

describe('keyboard navigation', () => {
  const gens = [['a'], ['b0', 'b1', 'b2'], ['c']];
  it('follows the picture in either orientation', () => {
    const lr = layoutGraph(gens, [], 40, new Set(), 'lr');
    expect(neighbour(lr, 'a', 'right')).toBe('b1'); // the nearest across
    expect(neighbour(lr, 'b1', 'down')).toBe('b2');
    expect(neighbour(lr, 'b2', 'down')).toBeNull();
    expect(neighbour(lr, 'a', 'left')).toBeNull();
    const tb = layoutGraph(gens, [], 40, new Set(), 'tb');
    expect(neighbour(tb, 'a', 'down')).toBe('b1');
    expect(neighbour(tb, 'b1', 'right')).toBe('b2');
    expect(neighbour(tb, 'c', 'up')).toBe('b1');
  });
});

describe('view transforms', () => {
  it('fits without magnifying past 100 %', () => {
    expect(fitView(500, 200, 1000, 800).k).toBe(1);
    const v = fitView(4000, 1000, 1000, 500, 1, 0);
    expect(v.k).toBeCloseTo(0.25);
    expect(v.x).toBeCloseTo(0);
    expect(v.y).toBeCloseTo(125);
  });

  it('zooms around the pointer, within bounds', () => {
    const v = zoomAt({ x: 0, y: 0, k: 1 }, 2, 100, 50);
    expect(v).toEqual({ k: 2, x: -100, y: -50 });
    expect(zoomAt({ x: 0, y: 0, k: 2 }, 100, 0, 0).k).toBe(2.5);
    expect(zoomAt({ x: 0, y: 0, k: 0.1 }, 0.01, 0, 0).k).toBe(0.05);
  });
});

describe('status counts', () => {
  it('counts the statuses of the given nodes', () => {
    const nodes = new Map<string, NodeInfo>(
      [['a', 'running'], ['b', 'completed'], ['c', 'completed']].map(([id, status]) => [id, { id, status } as NodeInfo]));
    expect(statusCounts(['a', 'b', 'c', 'missing'], nodes)).toEqual({ running: 1, completed: 2 });
  });
});

it('keeps node geometry stable (the CSS and tests rely on it)', () => {
  expect([NODE_W, NODE_H]).toEqual([188, 52]);
});
