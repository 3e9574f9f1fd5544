// One node of the DAG as SVG: its parts (placed in absolute coordinates), what it shows
// (its look, computed once per change) and the markup a build parses. The DAG view
// draws with these; its "+N more" summary items reuse the parts.
import type { NodeInfo, NodeState } from './protocol';
import { NODE_H, NODE_W } from './dagmodel';
import { svg } from './dom';
import { glyphAt, GLYPHS, nodeSubtitle, STATUS_LABEL } from './status';
import { TextFitter } from './textfit';

/** Room for text in a node, right of the status disc (px). */
export const TEXT_W = NODE_W - 50;
const LABEL_CHARS = 20;
const SUB_CHARS = 25;

/** The two text fitters a node's lines are cut with. */
export interface NodeFitters {
  label: TextFitter;
  sub: TextFitter;
}

/** Fitters measuring in `family`, the font the SVG really uses (the theme's UI font). */
export function nodeFitters(family: string): NodeFitters {
  return {
    label: new TextFitter(`600 12.5px ${family}`, TEXT_W, LABEL_CHARS),
    sub: new TextFitter(`11px ${family}`, TEXT_W, SUB_CHARS)
  };
}

/** The status glyph, centred in the disc of an item whose corner is (x, y). */
export function setGlyph(path: SVGPathElement, status: NodeState, x: number, y: number): void {
  path.setAttribute('d', glyphAt(status, x + GLYPH_X, y + GLYPH_Y));
  path.setAttribute('class', `cr-glyph ${GLYPHS[status].fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'}`);
}

export type Part = [keyof SVGElementTagNameMap, string, Record<string, number>];

/**
 * A node's parts relative to its corner, in paint order. No part (nor the node) has
 * a transform: each would be a paint chunk of its own, and with thousands of nodes
 * the compositor's per-frame work grows with them.
 */
export const NODE_PARTS: Part[] = [
  ['title', '', {}],
  ['rect', 'cr-halo', { x: -4, y: -4, width: NODE_W + 8, height: NODE_H + 8, rx: 11 }],
  ['rect', 'cr-card', { x: 0, y: 0, width: NODE_W, height: NODE_H, rx: 8 }],
  ['rect', 'cr-tint', { x: 0, y: 0, width: NODE_W, height: NODE_H, rx: 8 }],
  ['circle', 'cr-disc', { cx: 21, cy: 20, r: 11 }],
  ['path', 'cr-glyph', {}],
  ['text', 'cr-label', { x: 40, y: 21 }],
  ['text', 'cr-sub', { x: 40, y: 36 }],
  ['rect', 'cr-track', { x: 40, y: 42, width: TEXT_W - 2, height: 3, rx: 1.5 }],
  ['rect', 'cr-fill', { x: 40, y: 42, width: 0, height: 3, rx: 1.5 }]
];
const GLYPH_X = 15;
const GLYPH_Y = 14;
/** Indices in NODE_PARTS of the parts that change. */
export const PART = { title: 0, glyph: 5, label: 6, sub: 7, fill: 9 };

/** Parts moved to (x, y): positional attributes only, from the table (no DOM reads). */
export function placeParts(g: SVGGElement, parts: Part[], x: number, y: number): void {
  const c = g.children;
  parts.forEach(([, , attrs], i) => {
    const el = c[i];
    if ('x' in attrs) el.setAttribute('x', String(attrs.x + x));
    if ('y' in attrs) el.setAttribute('y', String(attrs.y + y));
    if ('cx' in attrs) el.setAttribute('cx', String(attrs.cx + x));
    if ('cy' in attrs) el.setAttribute('cy', String(attrs.cy + y));
  });
}

export function partsTemplate(parts: Part[], cls: string): SVGGElement {
  const g = svg('g', { tabindex: -1, role: 'button' }, cls);
  for (const [tag, c, attrs] of parts) g.append(svg(tag, attrs, c || undefined));
  return g;
}

/** Everything a node shows, computed once and applied either as markup or as DOM writes. */
export interface NodeLook {
  sig: string;
  status: NodeState;
  progress: 'none' | 'value' | 'indeterminate';
  glyph: string;
  glyphClass: string;
  label: string;
  sub: string;
  fillWidth: number;
  title: string;
  aria: string;
}

const ESC: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function esc(text: string): string {
  return text.replace(/[&<>"']/g, c => ESC[c]);
}

/**
 * A node's markup at (x, y): the initial SVG is parsed from one string, several
 * times faster than ~35 DOM calls per node. Part order is NODE_PARTS'.
 */
export function nodeMarkup(id: string, x: number, y: number, look: NodeLook): string {
  const parts = NODE_PARTS.map(([tag, cls, attrs]) => {
    const at: string[] = cls ? [`class="${cls}"`] : [];
    for (const [k, v] of Object.entries(attrs)) {
      const off = k === 'x' || k === 'cx' ? x : k === 'y' || k === 'cy' ? y : 0;
      const val = cls === 'cr-fill' && k === 'width' ? look.fillWidth : v + off;
      at.push(`${k}="${val}"`);
    }
    if (tag === 'title') return `<title>${esc(look.title)}</title>`;
    if (cls === 'cr-glyph') return `<path class="${look.glyphClass}" d="${look.glyph}"/>`;
    if (cls === 'cr-label') return `<text ${at.join(' ')}>${esc(look.label)}</text>`;
    if (cls === 'cr-sub') return `<text ${at.join(' ')}>${esc(look.sub)}</text>`;
    return `<${tag} ${at.join(' ')}/>`;
  });
  const i = esc(id);
  return `<g class="cr-item cr-node" tabindex="-1" role="button" data-node-id="${i}" data-key="${i}" ` +
    `data-status="${look.status}" data-progress="${look.progress}" aria-label="${esc(look.aria)}">${parts.join('')}</g>`;
}

/** What the progress bar of a node shows, as a data attribute CSS styles. */
function progressMode(n: NodeInfo): 'none' | 'value' | 'indeterminate' {
  if (n.status === 'running') return n.progress === null ? 'indeterminate' : 'value';
  if ((n.status === 'paused' || n.status === 'waiting_approval') && n.progress !== null) return 'value';
  return 'none';
}

/** What `n` looks like drawn at (x, y). Pure apart from text measuring. */
export function nodeLook(n: NodeInfo, x: number, y: number, fit: NodeFitters): NodeLook {
  const sub = nodeSubtitle(n);
  const mode = progressMode(n);
  const pct = n.progress ?? 0;
  const name = n.label === n.id ? n.label : `${n.label} (${n.id})`;
  const said = STATUS_LABEL[n.status];
  return {
    sig: `${n.status}|${sub}|${mode}|${pct}|${n.label}`,
    status: n.status,
    progress: mode,
    glyph: glyphAt(n.status, x + GLYPH_X, y + GLYPH_Y),
    glyphClass: `cr-glyph ${GLYPHS[n.status].fill ? 'cr-glyph-fill' : 'cr-glyph-stroke'}`,
    label: fit.label.fit(n.label),
    sub: fit.sub.fit(sub),
    // Indeterminate: a fixed-width segment that CSS slides along the track.
    fillWidth: mode === 'indeterminate' ? 36 : Math.round((TEXT_W - 2) * Math.min(1, Math.max(0, pct))),
    title: `${name}\n${said}${sub !== said ? ` — ${sub}` : ''}`,
    aria: `${n.label}: ${sub}`
  };
}
