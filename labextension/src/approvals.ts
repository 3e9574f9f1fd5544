// What a run waits on a human for, as cards in the run view: approvals (who asks and
// when, the question, an optional comment, Approve and Reject) and questions (asks.ts).
// A card lives as long as its request is pending, across updates, so a comment or an
// answer being typed is never lost.
import type { PendingApproval } from './protocol';
import type { RunState } from './state';
import { questionCard } from './asks';
import { button, el, glyphIcon, setText } from './dom';
import { clockTime } from './status';

export type HumanAction = 'approve' | 'reject' | 'answer';

export interface ApprovalCardsOptions {
  /** Send the answer (`payload`: an approval's comment, a question's text); the button is
   *  disabled while it is in flight, a refusal shown in `error`. */
  answer: (a: PendingApproval, action: HumanAction, b: HTMLButtonElement, error: HTMLElement,
           payload: Record<string, string | null>) => void;
  /** Whether an answer to this request is in flight. */
  busy: (a: PendingApproval) => boolean;
  /** Show the asking step in the graph. */
  showStep: (nodeId: string) => void;
}

interface ApprovalCard {
  el: HTMLElement;
  controls: (HTMLButtonElement | HTMLInputElement)[];
  node: HTMLButtonElement;
}

export class ApprovalCards {
  readonly element = el('div', 'cr-approvals');
  private readonly cards = new Map<string, ApprovalCard>();

  constructor(private readonly opts: ApprovalCardsOptions) {}

  /** One card per pending approval of `st`; answered ones go. */
  render(st: RunState): void {
    const pending = st.run.pending_approvals;
    const ids = new Set(pending.map(a => a.approval_id));
    for (const [id, card] of this.cards) {
      if (!ids.has(id)) {
        card.el.remove();
        this.cards.delete(id);
      }
    }
    for (const a of pending) {
      let card = this.cards.get(a.approval_id);
      if (!card) {
        card = a.kind === 'question'
          ? questionCard(a, (text, b, err) => this.opts.answer(a, 'answer', b, err, { text }),
                         this.opts.showStep)
          : this.card(a);
        this.cards.set(a.approval_id, card);
        this.element.append(card.el);
      }
      const label = st.nodes.get(a.node_id)?.label ?? a.node_id;
      setText(card.node, label);
      const busy = this.opts.busy(a);
      for (const c of card.controls) c.disabled = busy;
    }
    this.element.hidden = !pending.length;
  }

  private card(a: PendingApproval): ApprovalCard {
    const card = el('div', 'cr-banner cr-banner-warn cr-approval');
    card.dataset.approvalId = a.approval_id;
    card.dataset.approvalNode = a.node_id; // not data-node-id: that names graph nodes only
    card.setAttribute('role', 'group');
    const head = el('div', 'cr-approval-head');
    const node = el('button', 'cr-link', a.node_id);
    node.type = 'button';
    node.title = `Show step ${a.node_id}`;
    node.addEventListener('click', () => this.opts.showStep(a.node_id));
    head.append(glyphIcon('waiting_approval', 14), el('strong', '', 'Approval needed'),
                el('span', 'cr-muted', ' · step '), node,
                el('span', 'cr-muted', ` · asked ${clockTime(a.requested_at)}`));
    const prompt = el('div', 'cr-approval-prompt', a.prompt);
    const form = el('div', 'cr-approval-form');
    const comment = el('input', 'cr-input');
    comment.type = 'text';
    comment.placeholder = 'Comment (optional)';
    comment.setAttribute('aria-label', `Comment on the approval for ${a.node_id}`);
    const error = el('div', 'cr-cmd-error');
    error.setAttribute('role', 'alert');
    error.hidden = true;
    const answer = (action: 'approve' | 'reject', b: HTMLButtonElement) => {
      const text = comment.value.trim();
      this.opts.answer(a, action, b, error, { comment: text || null });
    };
    const approve = button('cr-btn cr-btn-primary', 'Approve', `Approve: ${a.prompt}`, glyphIcon('completed', 12));
    approve.dataset.action = 'approve';
    approve.addEventListener('click', () => answer('approve', approve));
    const reject = button('cr-btn cr-btn-danger', 'Reject', `Reject: ${a.prompt}`, glyphIcon('failed', 12));
    reject.dataset.action = 'reject';
    reject.addEventListener('click', () => answer('reject', reject));
    comment.addEventListener('keydown', ev => {
      if (ev.key === 'Enter' && !approve.disabled) answer('approve', approve);
    });
    form.append(comment, approve, reject);
    card.setAttribute('aria-label', `Approval needed for step ${a.node_id}`);
    card.append(head, prompt, form, error);
    return { el: card, controls: [approve, reject], node };
  }
}
