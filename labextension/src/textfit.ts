// Text cut to fit a node, measured without DOM layout (thousands of labels per build).
import { truncate } from './status';

/**
 * Cuts text to a pixel width, so labels never run out of their node whatever the
 * glyph widths. Widths are summed from per-character measurements (canvas, cached):
 * no DOM layout, and linear in the text's length. Kerning is ignored, hence a margin.
 * Falls back to a character count where canvas is missing (tests).
 */
export class TextFitter {
  private readonly ctx: CanvasRenderingContext2D | null;
  private readonly charW = new Map<string, number>();
  private readonly cache = new Map<string, string>();
  private readonly ellipsis: number;

  constructor(font: string, private readonly width: number, private readonly chars: number) {
    let ctx: CanvasRenderingContext2D | null = null;
    try {
      ctx = document.createElement('canvas').getContext('2d');
    } catch {
      ctx = null;
    }
    this.ctx = ctx;
    if (ctx) ctx.font = font;
    this.ellipsis = this.char('…');
  }

  private char(c: string): number {
    let w = this.charW.get(c);
    if (w === undefined) {
      w = this.ctx ? this.ctx.measureText(c).width : 7;
      this.charW.set(c, w);
    }
    return w;
  }

  fit(text: string): string {
    if (!this.ctx) return truncate(text, this.chars);
    let out = this.cache.get(text);
    if (out !== undefined) return out;
    const room = this.width - 2;
    let w = 0;
    let cut = -1; // the last index at which the text plus an ellipsis still fits
    for (let i = 0; i < text.length; i++) {
      if (w + this.ellipsis <= room) cut = i;
      w += this.char(text[i]);
    }
    out = w <= room ? text : text.slice(0, Math.max(1, cut)).trimEnd() + '…';
    if (this.cache.size > 5000) this.cache.clear();
    this.cache.set(text, out);
    return out;
  }
}
