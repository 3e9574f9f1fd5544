// Where the Jupyter server is, as seen from a page it served.
export interface ServerInfo {
  /** e.g. "http://host:8888/user/x/" — always ends with "/". */
  baseUrl: string;
  /** ws(s)://... of the cmbagent socket. */
  wsUrl: string;
  token: string;
}

function join(base: string, path: string): string {
  return base.replace(/\/+$/, '/') + path.replace(/^\/+/, '');
}

export function serverInfoFrom(baseUrl: string, wsBase: string | null, token: string): ServerInfo {
  const abs = new URL(baseUrl, typeof location !== 'undefined' ? location.href : 'http://localhost/');
  const base = abs.href.endsWith('/') ? abs.href : abs.href + '/';
  const ws = wsBase ? new URL(wsBase, base).href : base.replace(/^http/, 'ws');
  return { baseUrl: base, wsUrl: join(ws, 'cmbagent/api/ws'), token };
}

/** The server info of a JupyterLab 4 / Notebook 7 page, or null elsewhere (VS Code, Colab). */
export function pageServerInfo(): ServerInfo | null {
  if (typeof document === 'undefined') return null;
  const el = document.getElementById('jupyter-config-data');
  if (!el?.textContent) return null;
  try {
    const cfg = JSON.parse(el.textContent);
    if (typeof cfg.baseUrl !== 'string') return null;
    return serverInfoFrom(cfg.baseUrl, cfg.wsUrl || null, cfg.token || '');
  } catch {
    return null;
  }
}

/** A path as the server's contents see it (relative to its root), if it is under the root. */
export function serverPath(rootDir: string | null, path: string): string | null {
  if (!rootDir || !path.startsWith('/')) return null;
  const root = rootDir.endsWith('/') ? rootDir : rootDir + '/';
  if (!path.startsWith(root)) return null;
  const rel = path.slice(root.length);
  if (!rel || rel.split('/').some(p => p === '..' || p === '')) return null;
  return rel;
}

/** The /files/ URL of a path under the server's root directory, else null (never served). */
export function fileUrl(baseUrl: string, rootDir: string | null, path: string): string | null {
  const rel = serverPath(rootDir, path);
  return rel === null ? null : join(baseUrl, 'files/' + rel.split('/').map(encodeURIComponent).join('/'));
}

/** Is the cmbagent server extension serving this page's server? */
export async function extensionAvailable(info: ServerInfo): Promise<boolean> {
  try {
    const headers: Record<string, string> = {};
    if (info.token) headers.Authorization = `token ${info.token}`;
    const r = await fetch(join(info.baseUrl, 'cmbagent/api/schema'), { headers, credentials: 'same-origin' });
    return r.ok;
  } catch {
    return false;
  }
}
