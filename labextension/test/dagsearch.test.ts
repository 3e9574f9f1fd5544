import { describe, expect, it } from 'vitest';
import { findNodes, MAX_MATCHES } from '../src/dagsearch';
import type { NodeInfo } from '../src/protocol';

const node = (id: string, label: string, status: NodeInfo['status'] = 'pending') =>
  ({ id, label, status }) as unknown as NodeInfo;

const NODES = [
  node('g00_000', 'fetch tile 0.0'),
  node('g01_004', 'fit tile 1.4', 'running'),
  node('fit', 'Fit H0 and Ωm', 'completed'),
  node('g02_010', 'refit tile 2.10', 'failed'),
  node('report', 'Write "report.md"')
];
const ids = (q: string) => findNodes(NODES, q).matches.map(n => n.id);

describe('finding nodes by name or id', () => {
  it('an empty query finds nothing', () => {
    expect(findNodes(NODES, '   ')).toEqual({ matches: [], total: 0 });
  });

  it('matches label or id, case-insensitively', () => {
    expect(ids('G01_004')).toEqual(['g01_004']);
    expect(ids('REPORT.MD')).toEqual(['report']);
    expect(ids('tile 2.1')).toEqual(['g02_010']);
  });

  it('puts an exact match first, then prefixes, then the rest in run order', () => {
    expect(ids('fit')).toEqual(['fit', 'g01_004', 'g02_010']);
  });

  it('needs every word, in any order', () => {
    expect(ids('tile fetch')).toEqual(['g00_000']);
    expect(ids('tile nothing')).toEqual([]);
  });

  it('lists at most the limit but counts every match', () => {
    const many = Array.from({ length: 20000 }, (_, i) => node(`n${i}`, `step ${i}`));
    const r = findNodes(many, 'step');
    expect(r.matches).toHaveLength(MAX_MATCHES);
    expect(r.total).toBe(20000);
    expect(findNodes(many, 'n19999').matches.map(n => n.id)).toEqual(['n19999']);
  });

});
