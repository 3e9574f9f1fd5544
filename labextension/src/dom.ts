// Tiny DOM helpers for the run view (no framework: the widget bundle stays small).

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
