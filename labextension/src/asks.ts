// A question a step asks (ctx.ask), as a card beside the approvals: who asks and when,
// the question as text, and either a text box with Answer or, when the step gave
// choices, one button per choice. Sent as the `answer` command.
import type { PendingApproval } from './protocol';
import { button, el, glyphIcon } from './dom';
import { clockTime } from './status';

export interface QuestionCardParts {
  el: HTMLElement;
  /** Every control that sends an answer: disabled while one is in flight. */
  controls: (HTMLButtonElement | HTMLInputElement)[];
  node: HTMLButtonElement;
}

/**
 * The card for `q` (a pending request of kind "question"). `send(text, button, error)`
 * sends the answer; `showStep` shows the asking step in the graph.
 */
export function questionCard(q: PendingApproval,
                             send: (text: string, b: HTMLButtonElement, error: HTMLElement) => void,
                             showStep: (nodeId: string) => void): QuestionCardParts {
  const card = el('div', 'cr-banner cr-banner-warn cr-approval cr-question');
  card.dataset.approvalId = q.approval_id;
  card.dataset.approvalNode = q.node_id;
  card.dataset.kind = 'question';
  card.setAttribute('role', 'group');
  card.setAttribute('aria-label', `Question from step ${q.node_id}`);
  const node = el('button', 'cr-link', q.node_id);
  node.type = 'button';
  node.title = `Show step ${q.node_id}`;
  node.addEventListener('click', () => showStep(q.node_id));
  const head = el('div', 'cr-approval-head');
  head.append(glyphIcon('waiting_approval', 14), el('strong', '', 'Question'),
              el('span', 'cr-muted', ' · step '), node,
              el('span', 'cr-muted', ` · asked ${clockTime(q.requested_at)}`));
  const prompt = el('div', 'cr-approval-prompt', q.prompt);
  const error = el('div', 'cr-cmd-error');
  error.setAttribute('role', 'alert');
  error.hidden = true;
  const form = el('div', 'cr-approval-form');
  const controls: (HTMLButtonElement | HTMLInputElement)[] = [];
  if (q.choices?.length) {
    for (const choice of q.choices) {
      const b = button('cr-btn', choice, `Answer “${choice}” to: ${q.prompt}`);
      b.dataset.action = 'answer';
      b.dataset.choice = choice;
      b.addEventListener('click', () => send(choice, b, error));
      controls.push(b);
      form.append(b);
    }
  } else {
    const text = el('input', 'cr-input');
    text.type = 'text';
    text.placeholder = 'Your answer';
    text.setAttribute('aria-label', `Answer to: ${q.prompt}`);
    const answer = button('cr-btn cr-btn-primary', 'Answer', `Send the answer to: ${q.prompt}`);
    answer.dataset.action = 'answer';
    const go = () => send(text.value, answer, error);
    answer.addEventListener('click', go);
    text.addEventListener('keydown', ev => {
      if (ev.key === 'Enter' && !answer.disabled) go();
    });
    controls.push(text, answer);
    form.append(text, answer);
  }
  card.append(head, prompt, form, error);
  return { el: card, controls, node };
}
