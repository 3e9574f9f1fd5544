// What to do when the process that ran a run is gone: continue it from a kernel that
// defines the workflow, with `wf.resume("<id>")` (a copy button puts that in the
// clipboard). Shown by the run view's alert and its step details, in the widget and the
// sidebar alike.
import type { RunInfo } from './protocol';
import { button, el } from './dom';

/**
 * The call that continues `runId` in a kernel that defines the workflow as `wf`; with
 * `rerun`, the step to run again (with what follows it) of a run that completed.
 */
export function resumeCall(runId: string, rerun?: string): string {
  const again = rerun === undefined ? '' : `, rerun=[${JSON.stringify(rerun)}]`;
  return `wf.resume(${JSON.stringify(runId)}${again})`;
}

/** Whether the run's process is known to be gone (recorded by the store as executor_lost). */
export function processGone(run: RunInfo | null): boolean {
  return !!run && (run.reason === 'executor_lost' || run.last_error?.code === 'executor_lost');
}

/** The hint: a sentence, the call in code, and a button that copies it. */
export function resumeHint(runId: string, lead: string, rerun?: string): HTMLElement {
  const box = el('div', 'cr-resume-hint');
  box.dataset.hint = 'resume';
  const call = resumeCall(runId, rerun);
  const code = el('code', 'cr-resume-call', call);
  const copy = button('cr-btn', 'Copy', `Copy ${call}`);
  copy.dataset.action = 'copy-resume';
  const done = el('span', 'cr-muted cr-resume-copied');
  done.setAttribute('role', 'status');
  copy.addEventListener('click', () => {
    void copyText(call).then(ok => { done.textContent = ok ? 'copied' : 'select the text and copy it'; });
  });
  box.append(el('span', '', lead), el('span', '', ' In a kernel that defines the workflow (as wf), run '),
             code, copy, done);
  return box;
}

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
