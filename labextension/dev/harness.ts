// The run view without Jupyter: a fake server plays a scripted run through the real
// follower and reducer. URL parameters:
//   ?scenario=cmb (default) | ?nodes=2000   what to play
//   &fail=1          camb_neff fails for good (retry it from the detail pane)
//   &autoapprove=1   the fit approves itself
//   &theme=dark      JupyterLab dark theme variables (theme=none: no --jp-* variables at all)
//   &layout=panel    fill the window like the main-area panel (default: a ~900 px notebook cell)
//   &kind=comm       pretend to be the kernel-comm fallback
//   &speed=2         play faster
//   &executor_lost=1 the executor dies after a few seconds
//   &rate=200        steer the executor's speed so that ~200 events/s are emitted
//   &view=list       benchmarks/widget_render.py's baseline: a plain list, not the run view
//   &lines=1000      ~1,000 output lines a second from the running steps (step_output)
import { FakeExecutor, FakeServer, FakeTransport, StepDef } from './fake';
import { FrameSlicer } from '../src/dagslices';
import { bigSteps, cmbSteps } from './scenarios';
import { RunView } from '../src/runview';
import type { Update } from '../src/follower';
import type { NodeInfo } from '../src/protocol';
import type { RunState } from '../src/state';
import { SETTLED_WORKFLOW_STATES } from '../src/states';

const params = new URLSearchParams(location.search);
const big = Number(params.get('nodes') || 0);
const speed = Number(params.get('speed') || 1);
// light | dark (JupyterLab's variables) | none (no --jp-* variables: VS Code, Colab)
const theme = ['dark', 'none'].includes(params.get('theme') ?? '') ? params.get('theme')! : 'light';
const panel = params.get('layout') === 'panel';
const rate = Number(params.get('rate') || 0);
const listView = params.get('view') === 'list';
const linesPerS = Number(params.get('lines') || 0);
/** Makes the big plan's steps in slices of a few ms, one per frame. */
const maker = new FrameSlicer(6);

document.documentElement.dataset.theme = theme;
if (theme !== 'none') document.body.dataset.jpThemeLight = String(theme === 'light');
document.body.classList.toggle('panel-layout', panel);

const ROOT = '/home/user/cmb/';

/** A TT power spectrum drawn on a canvas, as the "plot" file's image. */
function spectrumPng(): string {
  const c = document.createElement('canvas');
  c.width = 600;
  c.height = 340;
  const g = c.getContext('2d')!;
  g.fillStyle = '#fff';
  g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = '#999';
  g.lineWidth = 1;
  g.strokeRect(60, 20, 520, 270);
  g.fillStyle = '#333';
  g.font = '13px sans-serif';
  g.fillText('ℓ', 318, 325);
  g.save();
  g.translate(22, 170);
  g.rotate(-Math.PI / 2);
  g.fillText('D_ℓ^TT [μK²]', -40, 0);
  g.restore();
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd'];
  const shapes = [1, 1.04, 0.93, 1.02];
  shapes.forEach((s, k) => {
    g.strokeStyle = colors[k];
    g.lineWidth = 1.6;
    g.beginPath();
    for (let x = 0; x <= 520; x++) {
      const ell = 2 + (x / 520) * 2500;
      const peaks = Math.exp(-ell / (1400 * s)) * (0.55 + 0.45 * Math.cos((ell - 220 * s) / (95 * s) * Math.PI / 1.6) ** 2);
      const rise = Math.min(1, ell / 200);
      const y = 285 - 250 * peaks * (0.35 + 0.65 * rise);
      if (x === 0) g.moveTo(60 + x, y);
      else g.lineTo(60 + x, y);
    }
    g.stroke();
  });
  g.fillStyle = '#333';
  ['ΛCDM', 'wCDM', 'Σmν = 0.3 eV', 'N_eff = 3.9'].forEach((t, k) => {
    g.fillStyle = colors[k];
    g.fillRect(440, 34 + k * 18, 14, 3);
    g.fillStyle = '#333';
    g.fillText(t, 460, 40 + k * 18);
  });
  return c.toDataURL('image/png');
}

let png: string | null = null;
const blobs = new Map<string, string>();

/** Like page.ts's fileUrl: only files under the served root get a URL. */
function fileUrl(path: string): string | null {
  if (!path.startsWith(ROOT)) return null;
  if (path.endsWith('.png')) return (png ??= spectrumPng());
  if (!blobs.has(path)) {
    blobs.set(path, URL.createObjectURL(new Blob([`# ${path}\n# (harness stand-in for the real file)\n`], { type: 'text/plain' })));
  }
  return blobs.get(path)!;
}

/**
 * The baseline of benchmarks/widget_render.py (`?view=list`): the same server, executor,
 * transport and RunFollower as the run view, drawn as one plain <div> per node (in a
 * scrolling box) whose textContent is set, at once, on every update that touches the node.
 * No SVG, no layout, no per-frame batching. `timings` has the run view's shape.
 */
class ListView {
  readonly timings = { build: 0, builds: 0, patch: 0, patched: 0, patches: 0, patchTotal: 0, patchMax: 0 };
  state: RunState | null = null;
  readonly element = document.createElement('div');
  private readonly rows = new Map<string, HTMLDivElement>();

  constructor(host: HTMLElement, runId: string, transport: FakeTransport) {
    this.element.className = 'harness-list';
    this.element.style.cssText = 'max-height: 640px; overflow: auto; font: 12px monospace;';
    host.append(this.element);
    transport.follow(runId, u => this.onUpdate(u));
  }

  stats(): ListView['timings'] {
    return { ...this.timings };
  }

  private text(n: NodeInfo): string {
    return `${n.label} (${n.id}): ${n.status} ${Math.round((n.progress ?? 0) * 100)}%`;
  }

  private onUpdate(u: Update): void {
    if (!u.state) return;
    this.state = u.state;
    const t0 = performance.now();
    const t = this.timings;
    if (u.snapshot || this.rows.size !== u.state.nodes.size) {
      this.rows.clear();
      const rows: HTMLDivElement[] = [];
      for (const n of u.state.nodes.values()) {
        const row = document.createElement('div');
        row.textContent = this.text(n);
        this.rows.set(n.id, row);
        rows.push(row);
      }
      this.element.replaceChildren(...rows);
      t.build = performance.now() - t0;
      t.builds++;
      return;
    }
    let n = 0;
    for (const id of u.nodes) {
      const node = u.state.nodes.get(id);
      const row = this.rows.get(id);
      if (node && row) {
        row.textContent = this.text(node);
        n++;
      }
    }
    const ms = performance.now() - t0;
    t.patch = ms;
    t.patched = n;
    t.patches++;
    t.patchTotal += ms;
    t.patchMax = Math.max(t.patchMax, ms);
  }
}

/**
 * `?rate=R`: every 500 ms, scale the executor's speed (all its sleeps) towards R events/s
 * emitted, measured over the last 2 s. The events and their order stay the fake
 * executor's; only its clock runs faster or slower.
 */
function pace(server: FakeServer, executor: FakeExecutor, target: number): void {
  const seen: Array<[number, number]> = [];
  const timer = setInterval(() => {
    const state = server.st.run.state;
    if (SETTLED_WORKFLOW_STATES.has(state)) {
      clearInterval(timer);
      return;
    }
    const now = performance.now();
    seen.push([now, server.emitted]);
    while (now - seen[0][0] > 2000) seen.shift();
    if (state !== 'executing' || now - seen[0][0] < 1000) return;
    const observed = (server.emitted - seen[0][1]) / ((now - seen[0][0]) / 1000);
    const factor = Math.min(1.2, Math.max(0.85, (target / Math.max(1, observed)) ** 0.3));
    executor.speed = Math.min(50, Math.max(0.05, executor.speed * factor));
  }, 500);
}

/**
 * `?lines=L`: ~L output lines a second from the running steps, batched as engine/output.py
 * does (one step_output event per step every 200 ms).
 */
function firehose(server: FakeServer, perSecond: number): void {
  let n = 0;
  const timer = setInterval(() => {
    if (SETTLED_WORKFLOW_STATES.has(server.st.run.state)) {
      clearInterval(timer);
      return;
    }
    // The first 5 running steps, without a copy of every node (20,000 of them, 5 times a second).
    const running: NodeInfo[] = [];
    for (const x of server.st.nodes.values()) if (x.status === 'running' && running.push(x) === 5) break;
    if (!running.length) return;
    const each = Math.max(1, Math.round(perSecond / 5 / running.length));
    for (const node of running) {
      const lines = [];
      for (let i = 0; i < each; i++, n++) {
        lines.push(n % 50 === 0 ? { stream: 'log', level: 'WARNING', text: `tile: residual ${n} above threshold` }
          : { stream: 'stdout', text: `[${node.id}] iteration ${n}: \x1b[32mok\x1b[0m chi2=${(1 + (n % 97) / 100).toFixed(2)}` });
      }
      server.emit('step_output', { node_id: node.id, attempt: node.attempt, lines });
    }
  }, 200);
}

function start(): { view: RunView | ListView; transport: FakeTransport; executor: FakeExecutor; server: FakeServer } {
  const runId = big ? 'b16e5d2a-2000-4c1f-9e0d-7a1f3c9b2d41' : '5f3c9a1e-8b2d-4e6f-a7c1-0d9e8b7a6c5f';
  const name = big ? `Tile reduction (${big} steps)` : 'CMB power spectrum: ΛCDM and extensions';
  const description = big ? 'A large random layered DAG streaming status events' : 'TT spectra for four cosmologies, a joint fit, a figure and a report';
  const server = new FakeServer(runId, name, description);
  const transport = new FakeTransport(params.get('kind') === 'comm' ? 'comm' : 'socket', server);
  const executor = new FakeExecutor(server, big ? 75 : 6, speed);
  transport.executor = executor;
  const host = document.getElementById('host')!;
  if (panel) host.classList.add('cmbagent-run-panel');
  const view = listView ? new ListView(host, runId, transport) : new RunView(host, { runId, transport, fileUrl });
  if (rate > 0) pace(server, executor, rate);
  if (linesPerS > 0) firehose(server, linesPerS);
  setTimeout(() => {
    if (!big) {
      executor.start(cmbSteps({ hardFailure: params.get('fail') === '1',
                                autoApprove: params.get('autoapprove') === '1' }), { name, description });
      return;
    }
    // The big plan is made a few milliseconds a frame (the page is measured from its start).
    const steps: StepDef[] = [];
    const make = bigSteps(big);
    const collect = (function* () {
      for (const step of make) yield steps.push(step);
    })();
    // Then the plan, in a task of its own (the server's 20,000-step dag_created).
    maker.start(collect, () => setTimeout(() => executor.start(steps, { name, description }), 0));
  }, 400);
  if (params.get('executor_lost') === '1') setTimeout(() => executor.loseExecutor(), 9000 / speed);
  return { view, transport, executor, server };
}

function toolbar(h: ReturnType<typeof start>): void {
  const bar = document.getElementById('bar')!;
  const link = (text: string, q: string) => {
    const a = document.createElement('a');
    a.textContent = text;
    a.href = `?${q}`;
    return a;
  };
  const btn = (text: string, fn: () => void) => {
    const b = document.createElement('button');
    b.textContent = text;
    b.addEventListener('click', fn);
    return b;
  };
  const keep = (extra: string) => {
    const p = new URLSearchParams(location.search);
    const [k, v] = extra.split('=');
    p.set(k, v);
    return p.toString();
  };
  bar.append(
    link('CMB run', `theme=${theme}`), link('… with a failure', `fail=1&theme=${theme}`),
    link('2,000 nodes', `nodes=2000&theme=${theme}`),
    link(theme === 'dark' ? 'light theme' : 'dark theme', keep(`theme=${theme === 'dark' ? 'light' : 'dark'}`)),
    link(panel ? 'notebook cell' : 'main-area panel', keep(`layout=${panel ? 'cell' : 'panel'}`)),
    btn('drop 4 s (replay)', () => h.transport.disconnect(4000, 'replay')),
    btn('drop 4 s (snapshot)', () => h.transport.disconnect(4000, 'snapshot')),
    btn('offline 6 s', () => h.transport.disconnect(6000, 'replay', 'offline')),
    btn('lose executor', () => h.executor.loseExecutor())
  );
}

/** Frame times while events stream (for the 2,000-node measurements). */
function frameStats() {
  const frames: number[] = [];
  let last = performance.now();
  const loop = (t: number) => {
    frames.push(t - last);
    last = t;
    if (frames.length > 50000) frames.shift(); // ~14 min at 60 fps
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
  return {
    reset: () => {
      frames.length = 0;
    },
    summary: () => {
      const s = [...frames].sort((a, b) => a - b);
      const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0;
      return { frames: s.length, mean: s.reduce((a, b) => a + b, 0) / (s.length || 1), p50: q(0.5), p95: q(0.95), max: s[s.length - 1] ?? 0 };
    }
  };
}

const h = start();
toolbar(h);
(window as any).__harness = { ...h, frames: frameStats() };
