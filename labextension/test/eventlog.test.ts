import { describe, expect, it } from 'vitest';
import { callSummary, describeEvent, LogBook } from '../src/eventlog';
import type { Envelope } from '../src/state';
import { EVENT_TYPES } from './schema';

function ev(seq: number, event_type: string, data: Record<string, unknown> = {}): Envelope {
  return { run_id: 'r', seq, id: `id${seq}`, event_type, timestamp: '2024-05-01T12:00:00+00:00', data } as any;
}

const msg = (seq: number) => ev(seq, 'agent_message', { node_id: 'n', agent: 'engineer', message: `m${seq}` });
const seqs = (b: LogBook) => b.rows.map(r => (r.kind === 'event' ? r.seq : `gap ${r.from}-${r.to}`));

describe('which events the log lists', () => {
  it('keeps what a human reads, not the status churn', () => {
    expect(describeEvent(ev(1, 'step_progress', { node_id: 'n', progress: 0.5 }))).toBeNull();
    expect(describeEvent(ev(1, 'step_started', { node_id: 'n' }))).toBeNull();
    expect(describeEvent(ev(1, 'cost_update', { node_id: 'n' }))).toBeNull();
    const listed = [
      'agent_message', 'agent_thinking', 'agent_tool_call', 'file_created', 'file_updated',
      'step_failed', 'step_retry_started', 'approval_requested', 'approval_received',
      'question_asked', 'question_answered', 'error_occurred', 'workflow_started', 'workflow_state_changed', 'workflow_paused',
      'workflow_resumed', 'workflow_completed', 'workflow_failed', 'workflow_cancelled', 'run_reopened'
    ];
    const d = { node_id: 'n', agent: 'a', message: 'x', content: 'x', tool: 't', path: '/p/f.png', prompt: 'p', question: 'q', answer: 'a',
                approved: true, code: 'c', old_state: 'executing', new_state: 'paused', attempt: 1,
                error: { type: 'E', message: 'boom', traceback: 'tb' } };
    for (const t of EVENT_TYPES) expect(describeEvent(ev(1, t, d)) !== null, t).toBe(listed.includes(t));
    expect(describeEvent(ev(1, 'from_a_newer_server', d))).toBeNull();
  });

  it('words entries readably', () => {
    expect(describeEvent(ev(3, 'step_failed', { node_id: 'fit', attempt: 2, error: { type: 'ValueError', message: 'bad', traceback: 'Traceback…' } })))
      .toMatchObject({ seq: 3, nodeId: 'fit', tone: 'error', text: 'failed (attempt 2): ValueError: bad', body: 'Traceback…' });
    expect(describeEvent(ev(4, 'workflow_paused', { old_state: 'pausing', new_state: 'paused' }))!.text).toBe('run pausing → paused');
    expect(describeEvent(ev(5, 'approval_received', { node_id: 'n', approved: false, comment: 'redo' }))!.text).toBe('rejected: “redo”');
    const thinking = describeEvent(ev(6, 'agent_thinking', { node_id: 'n', agent: 'planner', content: 'hmm' }))!;
    expect(thinking).toMatchObject({ text: 'thinking…', body: 'hmm', agent: 'planner' }); // collapsed behind a toggle
    const file = describeEvent(ev(7, 'file_created', { node_id: 'n', path: '/home/u/plots/cl.png', mime: 'image/png' }))!;
    expect(file.text).toBe('wrote cl.png');
    expect(file.file).toEqual({ path: '/home/u/plots/cl.png', mime: 'image/png' });
  });
});

it('summarises tool calls on one line', () => {
  expect(callSummary('execute_python', { code: 'x = 1\nprint(x)', timeout: 30 }))
    .toBe('execute_python(code="x = 1 …", timeout=30)');
  expect(callSummary('search', { query: 'a'.repeat(200) }).length).toBeLessThan(110);
});

describe('LogBook', () => {
  it('lists each seq once, ignoring replays', () => {
    const b = new LogBook();
    b.onSnapshot(0);
    b.onEvents([msg(1), msg(2)]);
    const change = b.onEvents([msg(2), msg(3)]);
    expect(seqs(b)).toEqual([1, 2, 3]);
    expect(change.added.map(r => (r as any).seq)).toEqual([3]);
  });

  it('after a snapshot behind the log, keeps rows up to it and continues without doubles', () => {
    const b = new LogBook();
    b.onSnapshot(0);
    b.onEvents([msg(1), msg(2), msg(3), msg(4)]);
    const change = b.onSnapshot(2);
    expect(change.removed.map(r => (r as any).seq)).toEqual([3, 4]);
    expect(seqs(b)).toEqual([1, 2]);
    b.onEvents([msg(3), msg(4), msg(5)]);
    expect(seqs(b)).toEqual([1, 2, 3, 4, 5]);
  });

  it('a snapshot at the same seq changes nothing', () => {
    const b = new LogBook();
    b.onSnapshot(0);
    b.onEvents([msg(1), msg(2)]);
    expect(b.onSnapshot(2)).toEqual({ added: [], removed: [] });
    expect(seqs(b)).toEqual([1, 2]);
  });

  it('marks events it never saw one by one, and never lists them afterwards', () => {
    const b = new LogBook();
    b.onSnapshot(0);
    b.onEvents([msg(1)]);
    b.onSnapshot(9); // reconnected with a snapshot
    b.onEvents([msg(8), msg(9), msg(10)]);
    expect(seqs(b)).toEqual([1, 'gap 2-9', 10]);
  });

  it('backfills what happened before the view opened, each seq once, newest kept', () => {
    const b = new LogBook(4);
    b.onSnapshot(10);
    b.onEvents([msg(11)]);
    b.backfill([msg(6), ev(7, 'step_progress', { node_id: 'n' }), msg(8), msg(9), msg(10), msg(11)]);
    expect(seqs(b)).toEqual([8, 9, 10, 11]); // 11 was already listed; progress is not logged
    const c = new LogBook(50);
    c.onSnapshot(10);
    c.backfill([msg(9), msg(10)]);
    expect(seqs(c)).toEqual(['gap 1-8', 9, 10]); // the older part stays summarised
  });

  it('says what happened before the view opened', () => {
    const b = new LogBook();
    b.onSnapshot(120);
    expect(b.rows).toEqual([{ kind: 'gap', key: 'gap-1-120', from: 1, to: 120, initial: true }]);
    expect(new LogBook().onSnapshot(0).added).toEqual([]);
  });

  it('keeps the last `cap` rows; rows added and dropped at once never show', () => {
    const b = new LogBook(5);
    b.onSnapshot(0);
    b.onEvents([1, 2, 3, 4].map(msg));
    const change = b.onEvents([5, 6, 7, 8, 9, 10].map(msg));
    expect(seqs(b)).toEqual([6, 7, 8, 9, 10]);
    expect(change.removed.map(r => (r as any).seq)).toEqual([1, 2, 3, 4]);
    expect(change.added.map(r => (r as any).seq)).toEqual([6, 7, 8, 9, 10]);
  });

  it('advances past events it does not list', () => {
    const b = new LogBook();
    b.onSnapshot(0);
    b.onEvents([ev(1, 'step_progress', { node_id: 'n' }), msg(2)]);
    expect(b.lastSeq).toBe(2);
    expect(seqs(b)).toEqual([2]);
  });
});
