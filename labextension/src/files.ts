// Files and plots a step recorded with ctx.file: images as thumbnails that open full size,
// other files as links. Only paths the server serves (under its root) get a link or a
// thumbnail; opening prefers JupyterLab's own viewer (a main-area tab) when the page has
// one, else the browser opens Jupyter's /files/ URL in a new tab.
import type { FileInfo } from './protocol';
import type { RunState } from './state';
import { el } from './dom';
import { baseName, clockTime, formatBytes } from './status';

export interface FileLinks {
  /** The URL the browser can load a recorded file from, or null if it is not served. */
  fileUrl?: (path: string) => string | null;
  /** Open a file in the application (true: done); else the link's URL opens in a new tab. */
  openFile?: (path: string) => boolean;
}

const IMAGE_MIMES = ['image/png', 'image/jpeg', 'image/svg+xml', 'image/gif', 'image/webp'];

export function isImage(f: Pick<FileInfo, 'mime'>): boolean {
  return !!f.mime && IMAGE_MIMES.includes(f.mime);
}

/** The opener JupyterLab's plugin registers on the page (index.ts), for widgets too. */
export function pageOpener(): ((path: string) => boolean) | undefined {
  return (globalThis as { __cmbagentOpenFile?: (path: string) => boolean }).__cmbagentOpenFile;
}

/** A link to the file (text, or `content`), or plain text when the server does not serve it. */
export function fileLink(f: Pick<FileInfo, 'path'>, o: FileLinks, content?: Node, cls = 'cr-file-name'): HTMLElement {
  const url = o.fileUrl?.(f.path) ?? null;
  const name = baseName(f.path);
  if (!url) {
    const span = el('span', cls, content ? undefined : name);
    if (content) span.append(content);
    span.title = `${f.path} (not under the Jupyter server's root: not served)`;
    return span;
  }
  const a = el('a', cls, content ? undefined : name);
  if (content) a.append(content);
  a.href = url;
  a.target = '_blank';
  a.rel = 'noopener';
  a.title = `Open ${f.path}`;
  a.addEventListener('click', e => {
    const open = o.openFile ?? pageOpener();
    if (open && !e.ctrlKey && !e.metaKey && !e.shiftKey && open(f.path)) e.preventDefault();
  });
  return a;
}

/** A thumbnail of an image file that opens it full size, or null (not an image, not served). */
export function thumbnail(f: FileInfo, o: FileLinks): HTMLElement | null {
  const url = o.fileUrl?.(f.path) ?? null;
  if (!url || !isImage(f)) return null;
  const img = el('img', 'cr-thumb-img');
  // The timestamp busts the cache when the step rewrites the file (file_updated).
  img.src = /^(data|blob):/.test(url) ? url : `${url}${url.includes('?') ? '&' : '?'}v=${encodeURIComponent(f.timestamp)}`;
  img.alt = f.description || baseName(f.path);
  img.loading = 'lazy';
  return fileLink(f, o, img, 'cr-thumb');
}

export interface FilesViewOptions extends FileLinks {
  nodeLabel: (id: string) => string;
  select: (id: string) => void;
}

/** Shown at most, newest first. */
const GALLERY_CAP = 200;

/** Every file of the run: images as a gallery of thumbnails, the others as a list. */
export class FilesView {
  readonly element = el('section', 'cr-files-view');
  private shown = '';

  constructor(private readonly opts: FilesViewOptions) {
    this.element.setAttribute('aria-label', 'Files and plots');
  }

  render(st: RunState, version: number): void {
    const sig = `${st.runId}|${version}`;
    if (sig === this.shown) return;
    this.shown = sig;
    const all: Array<{ node: string; f: FileInfo }> = [];
    for (const n of st.nodes.values()) for (const f of n.files ?? []) all.push({ node: n.id, f });
    all.sort((a, b) => (a.f.timestamp < b.f.timestamp ? 1 : -1));
    if (!all.length) {
      this.element.replaceChildren(el('p', 'cr-muted cr-pad', 'No files yet: steps record them with ctx.file(path); images show here as thumbnails.'));
      return;
    }
    const gallery = el('div', 'cr-gallery');
    const list = el('ul', 'cr-files');
    for (const { node, f } of all.slice(0, GALLERY_CAP)) {
      const thumb = thumbnail(f, this.opts);
      const caption = el('div', 'cr-thumb-caption');
      const step = el('button', 'cr-link', this.opts.nodeLabel(node));
      step.type = 'button';
      step.title = `Select step ${node}`;
      step.addEventListener('click', () => this.opts.select(node));
      caption.append(fileLink(f, this.opts), el('span', 'cr-muted', ' · '), step);
      if (thumb) {
        const fig = el('figure', 'cr-thumb-card');
        fig.append(thumb, caption);
        if (f.description) fig.append(el('div', 'cr-muted cr-file-desc', f.description));
        gallery.append(fig);
      } else {
        const li = el('li', 'cr-file');
        const meta = [f.mime, formatBytes(f.size), clockTime(f.timestamp)].filter(Boolean).join(' · ');
        li.append(caption, el('span', 'cr-muted', meta ? ` ${meta}` : ''));
        li.append(el('div', 'cr-mono cr-muted cr-file-path', f.path));
        list.append(li);
      }
    }
    const parts: HTMLElement[] = [];
    if (gallery.childNodes.length) parts.push(el('div', 'cr-block-title', 'Plots'), gallery);
    if (list.childNodes.length) parts.push(el('div', 'cr-block-title', 'Other files'), list);
    if (all.length > GALLERY_CAP) parts.push(el('p', 'cr-muted', `The newest ${GALLERY_CAP} of ${all.length} files are shown.`));
    this.element.replaceChildren(...parts);
  }
}
