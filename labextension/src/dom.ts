// Tiny DOM helpers for the run view (no framework: the widget bundle stays small).
import type { NodeState } from './protocol';
import { GLYPHS } from './status';

const SVG_NS = 'http://www.w3.org/2000/svg';

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string,
                                                         text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A button with a visible label, an accessible name and (optionally) a leading icon. */
export function button(cls: string, label: string, ariaLabel: string, icon?: Element): HTMLButtonElement {
  const b = el('button', cls);
  b.type = 'button';
  b.setAttribute('aria-label', ariaLabel);
  if (icon) b.append(icon);
  b.append(el('span', 'cr-btn-label', label));
  return b;
}

/** Set text only when it differs: cheap to call on every update, no needless DOM writes. */
export function setText(node: Element, text: string): void {
  if (node.textContent !== text) node.textContent = text;
}

/** An SVG element with attributes and a class. */
export function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {},
                                                 cls?: string): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (cls) e.setAttribute('class', cls);
  return e;
}

/** A small inline SVG of a status glyph (legend, badges, detail pane). */
export function glyphIcon(status: NodeState, size = 14): SVGSVGElement {
  const s = svg('svg', { viewBox: '0 0 12 12', width: size, height: size, 'aria-hidden': 'true' },
                'cr-icon');
  const g = GLYPHS[status];
  s.append(svg('path', { d: g.d }, g.fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'));
  return s;
}

/** `fn`, run at most every `ms`: a call within that time runs it once, when the time is up. */
export function throttled(fn: () => void, ms: number): () => void {
  let last = -Infinity;
  let timer: ReturnType<typeof setTimeout> | null = null;
  const run = () => {
    timer = null;
    last = performance.now();
    fn();
  };
  return () => {
    if (timer) return;
    const wait = last + ms - performance.now();
    if (wait > 0) timer = setTimeout(run, wait);
    else run();
  };
}
