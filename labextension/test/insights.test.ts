import { describe, expect, it } from 'vitest';
import { ansiSpans, ConsoleModel, LINE_CAP, NODE_RINGS, plainText, Ring, streamTag } from '../src/console';
import { CostModel } from '../src/costview';
import { isImage } from '../src/files';
import { HISTORY_CAP, InsightsFeed, readBack } from '../src/insights';
import { MetricModel, pushPoint, SERIES_CAP } from '../src/metricchart';
import { fileUrl, serverPath } from '../src/page';
import type { Envelope } from '../src/state';
import { tickStep, TimelineModel } from '../src/timeline';

const T0 = Date.parse('2024-05-01T12:00:00+00:00');
const at = (s: number) => new Date(T0 + s * 1000).toISOString();

function ev(seq: number, event_type: string, data: Record<string, unknown>, t = 0): Envelope {
  return { run_id: 'r', seq, id: `id${seq}`, event_type, timestamp: at(t), data } as any;
}

const out = (seq: number, node: string, texts: string[], extra: Record<string, unknown> = {}) =>
  ev(seq, 'step_output', { node_id: node, attempt: 1, lines: texts.map(text => ({ stream: 'stdout', text })), ...extra }) as any;

const move = (seq: number, node: string, from: string, to: string, t: number, attempt = 1) =>
  ev(seq, 'dag_node_status_changed', { node_id: node, old_status: from, new_status: to, attempt }, t) as any;

describe('console model', () => {
  it('holds the last LINE_CAP lines of the run, oldest first', () => {
    const ring = new Ring(3);
    for (let i = 0; i < 5; i++) ring.push({ seq: i, nodeId: 'a', attempt: 1, stream: 'stdout', level: null, text: `${i}` });
    expect(ring.toArray().map(l => l.text)).toEqual(['2', '3', '4']);
    expect(ring.total).toBe(5);
    expect(ring.at(0).text).toBe('2');

    const m = new ConsoleModel();
    let seq = 0;
    for (let i = 0; i < 12; i++) m.add(out(++seq, 'a', Array.from({ length: 500 }, (_, k) => `a${i * 500 + k}`)));
    const lines = m.lines(null);
    expect(lines.length).toBe(LINE_CAP);
    expect(lines[0].text).toBe(`a${6000 - LINE_CAP}`);
    expect(lines[lines.length - 1].text).toBe('a5999');
    expect(m.run.total).toBe(6000);
  });

  it('keeps each step its own lines, and the steps written to last', () => {
    const m = new ConsoleModel();
    m.add(out(1, 'a', ['a1']));
    m.add(out(2, 'b', ['b1', 'b2']));
    m.add(out(3, 'a', ['a2']));
    expect(m.lines('a').map(l => l.text)).toEqual(['a1', 'a2']);
    expect(m.lines('b').map(l => l.text)).toEqual(['b1', 'b2']);
    expect(m.lines(null).map(l => l.nodeId)).toEqual(['a', 'b', 'b', 'a']);
    for (let i = 0; i < NODE_RINGS + 5; i++) m.add(out(10 + i, `n${i}`, ['x']));
    // 'a' lost its own ring (least recently written); its lines still come from the run's
    expect(m.lines('a').map(l => l.text)).toEqual(['a1', 'a2']);
  });

  it('splits an entry of consecutive lines joined by newlines', () => {
    const m = new ConsoleModel();
    m.add(ev(1, 'step_output', { node_id: 'a', attempt: 1, lines: [
      { stream: 'stdout', text: 'one\ntwo\nthree' }, { stream: 'log', level: 'INFO', text: 'rec' }] }) as any);
    expect(m.lines('a').map(l => [l.stream, l.text])).toEqual([
      ['stdout', 'one'], ['stdout', 'two'], ['stdout', 'three'], ['log', 'rec']]);
  });

  it('shows a partial line (a progress bar) until the next event replaces it', () => {
    const m = new ConsoleModel();
    m.add(out(1, 'a', [], { partial: { stream: 'stderr', text: ' 40%|████' } }));
    expect(m.lines('a').map(l => l.text)).toEqual([' 40%|████']);
    m.add(out(2, 'a', ['100%|████████|'], {}));
    expect(m.lines('a').map(l => l.text)).toEqual(['100%|████████|']);
  });

  it('tags each line with its stream or level', () => {
    const base = { seq: 1, nodeId: 'a', attempt: 1, text: '' };
    expect(streamTag({ ...base, stream: 'stdout', level: null })).toBe('out');
    expect(streamTag({ ...base, stream: 'stderr', level: null })).toBe('err');
    expect(streamTag({ ...base, stream: 'log', level: 'WARNING' })).toBe('warning');
    expect(streamTag({ ...base, stream: 'warning', level: 'DeprecationWarning' })).toBe('warning');
    expect(streamTag({ ...base, stream: 'dropped', level: null })).toBe('dropped');
  });
});

describe('ANSI escapes', () => {
  it('become styled spans, never visible codes', () => {
    expect(ansiSpans('plain')).toEqual([{ text: 'plain', cls: '' }]);
    expect(ansiSpans('\x1b[1;31mERR\x1b[0m done')).toEqual([
      { text: 'ERR', cls: 'cr-ansi-fg-1 cr-ansi-bold' }, { text: ' done', cls: '' }]);
    expect(ansiSpans('\x1b[92mok\x1b[39m')).toEqual([{ text: 'ok', cls: 'cr-ansi-fg-10' }]);
    // cursor movement, 256 colours, OSC titles: removed
    const spans = ansiSpans('\x1b[2K\x1b[38;5;208mx\x1b]0;title\x07y\x1b[1Az');
    expect(spans.map(s => s.text).join('')).toBe('xyz');
    expect(plainText('\x1b[32mgreen\x1b[0m <b>')).toBe('green <b>');
  });
});

describe('timeline model', () => {
  it('draws one bar per attempt and a segment per running, paused, approval and backoff stretch', () => {
    const m = new TimelineModel();
    m.apply(move(1, 'fit', 'pending', 'running', 0));
    m.apply(move(2, 'fit', 'running', 'paused', 2));
    m.apply(move(3, 'fit', 'paused', 'running', 3));
    m.apply(move(4, 'fit', 'running', 'retrying', 5));
    m.apply(move(5, 'fit', 'retrying', 'running', 6, 2));
    m.apply(move(6, 'fit', 'running', 'waiting_approval', 7, 2));
    m.apply(move(7, 'fit', 'waiting_approval', 'running', 9, 2));
    m.apply(move(8, 'fit', 'running', 'completed', 10, 2));
    const r = m.rows.get('fit')!;
    const s = (t: number) => T0 + t * 1000;
    expect(r.attempts).toEqual([
      { n: 1, start: s(0), end: s(5), outcome: 'retrying' },
      { n: 2, start: s(6), end: s(10), outcome: 'completed' }]);
    expect(r.segments.map(x => [x.kind, (x.start - T0) / 1000, ((x.end ?? 0) - T0) / 1000])).toEqual([
      ['running', 0, 2], ['paused', 2, 3], ['running', 3, 5], ['retrying', 5, 6], ['running', 6, 7],
      ['waiting_approval', 7, 9], ['running', 9, 10]]);
    expect([m.first, m.last]).toEqual([s(0), s(10)]);
  });

  it('has a row for every step, in declaration order, with bars from the snapshot for what it did not see', () => {
    const m = new TimelineModel();
    const node = (id: string, position: number, started: string | null, finished: string | null, status = 'completed') =>
      ({ id, position, started_at: started, finished_at: finished, status, attempt: started ? 1 : 0 }) as any;
    const nodes = new Map([['b', node('b', 1, at(1), null, 'running')], ['a', node('a', 0, at(0), at(2))],
                           ['c', node('c', 2, null, null, 'pending')]]);
    m.syncNodes(nodes, true);
    expect(m.order).toEqual(['a', 'b', 'c']);
    expect(m.rows.get('a')!.attempts).toEqual([{ n: 1, start: T0, end: T0 + 2000, outcome: 'completed' }]);
    expect(m.rows.get('b')!.attempts[0].end).toBeNull();
    expect(m.rows.get('c')!.attempts).toEqual([]);
  });

  it('picks round tick intervals', () => {
    expect(tickStep(3)).toBe(5);
    expect(tickStep(1200)).toBe(2000);
    expect(tickStep(50 * 60000)).toBe(3600000);
  });
});

describe('cost model', () => {
  it('adds up by model, agent and step, with cumulative curves', () => {
    const m = new CostModel();
    m.add(ev(1, 'cost_update', { node_id: 'plan', model: 'gpt', agent: 'planner', input_tokens: 100, output_tokens: 10, usd: 0.01 }, 0) as any);
    m.add(ev(2, 'cost_update', { node_id: 'fit', model: 'gpt', input_tokens: 50, output_tokens: 5, usd: 0.02 }, 1) as any);
    m.add(ev(3, 'cost_update', { node_id: 'fit', model: 'o3', agent: 'researcher', input_tokens: 10, output_tokens: 1, usd: 0.5 }, 2) as any);
    expect(m.byModel.get('gpt')).toEqual({ usd: 0.03, input: 150, output: 15, calls: 2 });
    expect(m.byAgent.get('(not named)')!.calls).toBe(1);
    expect(m.byStep.get('fit')!.usd).toBeCloseTo(0.52);
    expect(m.usd.map(p => p.y)).toEqual([0.01, 0.03, 0.53]);
    expect(m.tokens.map(p => p.y)).toEqual([110, 165, 176]);
  });
});

describe('metric series', () => {
  it('plot against the metric step, else the index, and stay bounded', () => {
    const m = new MetricModel();
    m.add(ev(1, 'metric_update', { node_id: 'fit', name: 'chi2', value: 3, step: 10 }) as any);
    m.add(ev(2, 'metric_update', { node_id: 'fit', name: 'chi2', value: 2, step: 20 }) as any);
    m.add(ev(3, 'metric_update', { node_id: 'fit', name: 'H0', value: 67.4 }) as any);
    m.add(ev(4, 'metric_update', { node_id: 'fit', name: 'H0', value: 67.3 }) as any);
    expect(m.series.get('fit')!.get('chi2')).toEqual([{ x: 10, y: 3 }, { x: 20, y: 2 }]);
    expect(m.series.get('fit')!.get('H0')).toEqual([{ x: 0, y: 67.4 }, { x: 1, y: 67.3 }]);
    const pts: Array<{ x: number; y: number }> = [];
    for (let i = 0; i < 10 * SERIES_CAP; i++) pushPoint(pts, { x: i, y: i });
    expect(pts.length).toBeLessThanOrEqual(SERIES_CAP);
    expect(pts[pts.length - 1].x).toBe(10 * SERIES_CAP - 1);
    expect(pts.every((p, i) => i === 0 || p.x > pts[i - 1].x)).toBe(true);
  });
});

describe('the feed', () => {
  it('takes each event once, in seq order, and ignores what it already has', () => {
    const f = new InsightsFeed();
    f.add(out(1, 'a', ['one']));
    f.add(out(1, 'a', ['one']));
    f.add(out(2, 'a', ['two']));
    f.add(ev(3, 'file_created', { node_id: 'a', path: '/x.png' }));
    expect(f.console.lines(null).map(l => l.text)).toEqual(['one', 'two']);
    expect(f.filesVersion).toBe(1);
  });

  it('reads the log back in pages, the last HISTORY_CAP events at most', async () => {
    const log = Array.from({ length: HISTORY_CAP + 3000 }, (_, i) => out(i + 1, 'a', [`l${i + 1}`]));
    const asked: Array<[number, number]> = [];
    const history = async (_r: string, after: number, limit: number) => {
      asked.push([after, limit]);
      return log.slice(after, after + limit);
    };
    const f = new InsightsFeed();
    await readBack(history, 'r', log.length - 10, f);
    expect(asked[0][0]).toBe(log.length - 10 - HISTORY_CAP);
    expect(f.console.run.total).toBe(HISTORY_CAP);
    expect(f.console.lines(null).at(-1)!.text).toBe(`l${log.length - 10}`);
    expect(f.lastSeq).toBe(log.length - 10);
    f.add(log[log.length - 11]); // seq log.length - 10: already read, not again
    expect(f.console.run.total).toBe(HISTORY_CAP);
  });
});

describe('files', () => {
  it('serves only paths under the server root, and knows its images', () => {
    expect(serverPath('/home/u', '/home/u/plots/cl.png')).toBe('plots/cl.png');
    expect(serverPath('/home/u', '/etc/passwd')).toBeNull();
    expect(serverPath('/home/u', '/home/u/../x')).toBeNull();
    expect(fileUrl('http://h/lab/', '/home/u', '/home/u/a b.png')).toBe('http://h/lab/files/a%20b.png');
    expect(isImage({ mime: 'image/svg+xml' })).toBe(true);
    expect(isImage({ mime: 'application/pdf' })).toBe(false);
    expect(isImage({ mime: null })).toBe(false);
  });
});
