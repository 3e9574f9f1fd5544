import { describe, expect, it } from 'vitest';
import type { NodeInfo } from '../src/protocol';
import { pauseWaitsFor, pausingText } from '../src/pausenote';

function node(id: string, status: NodeInfo['status'], position: number): NodeInfo {
  return {
    id, label: id, description: '', deps: [], retries: 0, position, status,
    attempt: 1, progress: null, progress_message: null, started_at: null, finished_at: null,
    error: null, result_preview: null, cost_usd: 0, input_tokens: 0, output_tokens: 0,
    last_message: null, files: [], metrics: {}, approval: null
  };
}

describe('the pausing note', () => {
  it('names the running steps the pause waits for, in graph order', () => {
    const nodes = [node('camb_b', 'running', 2), node('plan', 'completed', 0), node('camb_a', 'running', 1),
                   node('fit', 'pending', 5), node('camb_c', 'paused', 3), node('camb_d', 'running', 4)];
    const waiting = pauseWaitsFor(nodes).map(n => n.label);
    expect(waiting).toEqual(['camb_a', 'camb_b', 'camb_d']);
    expect(pausingText(waiting)).toBe(
      'Pausing — 3 running steps finish their current call first: camb_a, camb_b, camb_d.');
  });

  it('says one step, none, and cuts a long list', () => {
    expect(pausingText(['fit'])).toBe('Pausing — 1 running step finishes its current call first: fit.');
    expect(pausingText([])).toBe('Pausing — no step is running: the run pauses now.');
    const many = Array.from({ length: 9 }, (_, i) => `s${i}`);
    expect(pausingText(many)).toBe(
      'Pausing — 9 running steps finish their current call first: s0, s1, s2, s3, s4, s5 and 3 more.');
  });
});
