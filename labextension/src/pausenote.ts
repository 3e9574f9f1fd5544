// While a run is pausing: what the pause waits for. No new step starts, but a running
// step stops only at its next ctx.checkpoint() or ctx.approve(): one inside a long call
// (a CAMB run, an LLM request) finishes that call first, so "pausing" can last a while.
import type { NodeInfo } from './protocol';
import type { RunState } from './state';
import { el, setText } from './dom';

/** How many step names the note spells out. */
const NAMED = 6;

/** "Pausing — 4 running steps finish their current call first: a, b, c, d." */
export function pausingText(labels: string[]): string {
  const n = labels.length;
  if (!n) return 'Pausing — no step is running: the run pauses now.';
  const names = labels.slice(0, NAMED).join(', ') + (n > NAMED ? ` and ${n - NAMED} more` : '');
  return n === 1
    ? `Pausing — 1 running step finishes its current call first: ${names}.`
    : `Pausing — ${n} running steps finish their current call first: ${names}.`;
}

export const PAUSE_HELP = 'No new step starts. A running step stops at its next ctx.checkpoint() '
  + 'or ctx.approve(); one that calls neither runs to its end.';

/** The steps a pause waits for: those running, in graph order. */
export function pauseWaitsFor(nodes: Iterable<NodeInfo>): NodeInfo[] {
  return [...nodes].filter(n => n.status === 'running').sort((a, b) => a.position - b.position);
}

/** The run view's "pausing" banner, shown only while the run is pausing. */
export class PauseNote {
  readonly element = el('div', 'cr-banner cr-banner-warn cr-pausing');
  private readonly text = el('div', 'cr-pausing-text');

  constructor() {
    this.element.setAttribute('role', 'status');
    this.element.hidden = true;
    this.element.append(this.text, el('div', 'cr-pausing-help', PAUSE_HELP));
  }

  render(st: RunState): void {
    const pausing = st.run.state === 'pausing';
    this.element.hidden = !pausing;
    if (!pausing) return;
    const waiting = pauseWaitsFor(st.nodes.values());
    this.element.dataset.waitingFor = waiting.map(n => n.id).join(' ');
    setText(this.text, pausingText(waiting.map(n => n.label)));
  }
}
