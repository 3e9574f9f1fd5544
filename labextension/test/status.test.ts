import { describe, expect, it } from 'vitest';
import type { NodeInfo, WorkflowState } from '../src/protocol';
import { COMMAND_RUN_STATES, NODE_STATES, WORKFLOW_STATES } from '../src/states';
import {
  countsText, dominantStatus, formatCount, GLYPHS, glyphAt, isLegal, isSettled, metricSummary, nodeSubtitle,
  progressText, RUN_ACTIONS, storeDownText, truncate
} from '../src/status';

function node(patch: Partial<NodeInfo> = {}): NodeInfo {
  return {
    id: 'n', label: 'n', description: '', deps: [], retries: 0, position: 0, status: 'pending',
    attempt: 0, progress: null, progress_message: null, started_at: null, finished_at: null,
    error: null, result_preview: null, cost_usd: 0, input_tokens: 0, output_tokens: 0,
    last_message: null, files: [], metrics: {}, approval: null, ...patch
  };
}

// The table itself is generated from engine/states.py (tests/test_contracts.py fails when
// src/states.ts is stale): these tests check what the buttons make of it.
describe('run command legality', () => {
  it('offers each run button exactly in the run states the engine accepts it in', () => {
    for (const action of RUN_ACTIONS) {
      for (const s of WORKFLOW_STATES) {
        expect(isLegal(action, s), `${action} in ${s}`).toBe(COMMAND_RUN_STATES[action].includes(s));
      }
    }
    expect(isLegal('pause', 'executing')).toBe(true);
    expect(isLegal('resume', 'paused')).toBe(true);
    expect(isLegal('resume', 'executing')).toBe(false);
  });

  it('allows nothing in final or transitional states, nor without a state', () => {
    for (const s of ['completed', 'cancelled', 'cancelling', 'failed'] as WorkflowState[]) {
      expect(RUN_ACTIONS.some(a => isLegal(a, s)), s).toBe(false);
    }
    expect(isLegal('pause', null)).toBe(false);
  });

  it('stops the clock only for settled runs', () => {
    expect(WORKFLOW_STATES.filter(isSettled)).toEqual(['completed', 'failed', 'cancelled']);
  });
});

describe('progress text', () => {
  it('says what did not complete, so a failed run never reads as nearly done', () => {
    expect(progressText({ completed: 4, skipped: 3, failed: 1 }, 7, 8)).toBe('7 / 8 done · 1 failed, 3 skipped');
    expect(progressText({ completed: 2, pending: 6 }, 2, 8)).toBe('2 / 8 done');
  });
});

describe('glyphs', () => {
  it('start with a single absolute moveto and move by rewriting it alone', () => {
    for (const s of NODE_STATES) {
      const d = GLYPHS[s].d;
      expect(d.startsWith('M'), s).toBe(true);
      // No other absolute command: the rest is relative, so it moves with the moveto.
      expect(/[MLHVCSQTA]/.test(d.slice(1)), s).toBe(false);
    }
    expect(glyphAt('completed', 100, 50)).toBe('M102.4 56.3l2.5 2.5 4.7-5.4');
  });
});

describe('status summaries', () => {
  it('shows a group by its most urgent status', () => {
    expect(dominantStatus({ completed: 30, running: 2 })).toBe('running');
    expect(dominantStatus({ completed: 30, running: 2, failed: 1 })).toBe('failed');
    expect(dominantStatus({ completed: 5 })).toBe('completed');
    expect(dominantStatus({})).toBe('pending');
  });

  it('lists counts in legend order', () => {
    expect(countsText({ completed: 3, pending: 1, waiting_approval: 2 })).toBe('1 pending · 2 needs approval · 3 completed');
  });
});

describe('node subtitles', () => {
  it('describes what a node is doing or how it ended', () => {
    expect(nodeSubtitle(node({ status: 'running', progress: 0.42 }))).toBe('running · 42%');
    expect(nodeSubtitle(node({ status: 'running', progress: 0.5, progress_message: 'k-bin 3' }))).toBe('50% · k-bin 3');
    expect(nodeSubtitle(node({ status: 'retrying', attempt: 1, retries: 2 }))).toBe('retrying · attempt 2 of 3');
    // Re-runs go on counting: never "3 of 2".
    expect(nodeSubtitle(node({ status: 'retrying', attempt: 2, retries: 1 }))).toBe('retrying · attempt 3, counting re-runs (2 allowed each time)');
    expect(nodeSubtitle(node({ status: 'failed', error: { type: 'ValueError', message: 'x' } }))).toBe('failed · ValueError');
    expect(nodeSubtitle(node({ status: 'completed', started_at: '2024-01-01T00:00:00Z',
                               finished_at: '2024-01-01T00:00:12Z' }))).toBe('completed · 12s');
    expect(nodeSubtitle(node({ status: 'waiting_approval' }))).toBe('needs approval');
  });
});

describe('formatting', () => {
  it('truncates with an ellipsis only when needed', () => {
    expect(truncate('short', 10)).toBe('short');
    expect(truncate('a rather long label', 10)).toBe('a rather…');
  });

  it('counts tokens compactly', () => {
    expect(formatCount(950)).toBe('950');
    expect(formatCount(1840)).toBe('1.84k');
    expect(formatCount(96500)).toBe('96.5k');
    expect(formatCount(4_560_000)).toBe('4.56M');
  });
});

describe('store status', () => {
  it('says since when the run store does not answer, in local clock time', () => {
    const since = '2030-01-01T14:02:11+00:00';
    const clock = new Date(since).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit',
                                                           second: '2-digit', hour12: false });
    expect(storeDownText(since)).toBe(`Run store not answering since ${clock} — the view catches up by itself`);
    expect(storeDownText(since, 'list')).toContain('the list catches up by itself');
  });
});

describe('metric hover text', () => {
  it('gives the last value with its step and unit, then min and max over every value', () => {
    expect(metricSummary(1931.9, { min: 1900.2, max: 2288.3, count: 4, step: 3, unit: null }))
      .toBe('last 1931.9 (step 3) · min 1900.2 · max 2288.3 over 4 values');
    expect(metricSummary(67.43, { min: 67.43, max: 67.43, count: 1, step: null, unit: 'km/s/Mpc' }))
      .toBe('last 67.43 km/s/Mpc · the only value');
    expect(metricSummary(2, undefined)).toBe('last 2 · the only value');
  });
});
