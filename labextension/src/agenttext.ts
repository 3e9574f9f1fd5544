// Agent text as a person reads it: paragraphs of plain text and fenced code blocks
// (```lang ... ```), built with textContent only. Whatever an agent writes, HTML
// included, shows as the characters it wrote: nothing it says is ever parsed as markup.
import { el } from './dom';

export type Segment = { kind: 'text'; text: string } | { kind: 'code'; lang: string; code: string };

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;

/** Split `text` into plain text and fenced code blocks; an unclosed fence runs to the end. */
export function parseAgentText(text: string): Segment[] {
  const out: Segment[] = [];
  let plain: string[] = [];
  let code: string[] | null = null;
  let fence = '';
  let lang = '';
  const flushPlain = () => {
    const t = plain.join('\n').replace(/^\n+|\s+$/g, '');
    if (t) out.push({ kind: 'text', text: t });
    plain = [];
  };
  for (const line of text.split('\n')) {
    const m = FENCE.exec(line);
    if (code === null) {
      if (m) {
        flushPlain();
        code = [];
        fence = m[1];
        lang = m[2];
      } else {
        plain.push(line);
      }
    } else if (m && m[1][0] === fence[0] && m[1].length >= fence.length && !m[2]) {
      out.push({ kind: 'code', lang, code: code.join('\n') });
      code = null;
    } else {
      code.push(line);
    }
  }
  if (code !== null) out.push({ kind: 'code', lang, code: code.join('\n') });
  flushPlain();
  return out;
}

/** `text` as paragraphs and code blocks, in an element of class `cls`. */
export function renderAgentText(text: string, cls = ''): HTMLElement {
  const box = el('div', `cr-agent-text ${cls}`.trim());
  for (const s of parseAgentText(text)) {
    if (s.kind === 'text') {
      box.append(el('p', 'cr-agent-para', s.text));
    } else {
      const pre = el('pre', 'cr-pre cr-code');
      if (s.lang) pre.dataset.lang = s.lang;
      pre.append(el('code', '', s.code));
      box.append(pre);
    }
  }
  return box;
}
