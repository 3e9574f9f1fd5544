// The "Workflow runs" sidebar: every run in the store, live, newest first.
import { Widget } from '@lumino/widgets';
import type { Connection, ConnectionInfo } from './connection';
import type { RunInfo, WorkflowState } from './protocol';
import { el } from './dom';
import { formatCost, formatDuration, RunFilter, runDuration, visibleRuns } from './runlist';
import { connectionAttr, connectionLabel } from './runview';
import { SETTLED_WORKFLOW_STATES, WORKFLOW_STATES } from './states';
import { storeDownText } from './status';

/**
 * Where each state sits in the filter menu: runs at work first, then how runs ended,
 * then runs not started. Presentation only: the states are the generated ones, and a
 * state added to the engine fails to compile here until it has a place.
 */
const MENU_RANK: Record<WorkflowState, number> = {
  executing: 0, waiting_approval: 1, pausing: 2, paused: 3, cancelling: 4,
  completed: 5, failed: 6, cancelled: 7, planning: 8, draft: 9
};
const MENU_STATES = [...WORKFLOW_STATES].sort((a, b) => MENU_RANK[a] - MENU_RANK[b]);

export interface RunsPanelOptions {
  connection: Connection;
  /** Open a run in the main area. */
  open: (run: RunInfo) => void;
  /** Delete a settled run (after asking); the row leaves when the server says run_deleted. */
  remove: (run: RunInfo) => void;
}


export class RunsPanel extends Widget {
  private runs = new Map<string, RunInfo>();
  private filter: RunFilter = { state: '', query: '' };
  private readonly list = el('ul', 'cmbagent-runs-list');
  private readonly badge = el('span', 'cmbagent-badge');
  private readonly empty = el('div', 'cmbagent-runs-empty');
  private readonly storeNote = el('div', 'cmbagent-runs-store');
  private selected: string | null = null;
  private readonly disposers: Array<() => void> = [];
  private ticker: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly opts: RunsPanelOptions) {
    super();
    this.id = 'cmbagent-runs';
    this.addClass('cmbagent-runs');
    this.title.caption = 'Workflow runs';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Workflow runs');

    const head = el('div', 'cmbagent-runs-head');
    head.append(el('h2', 'cmbagent-runs-title', 'Workflow runs'), this.badge);
    const tools = el('div', 'cmbagent-runs-tools');
    const search = el('input', 'cmbagent-runs-search');
    search.type = 'search';
    search.placeholder = 'Search';
    search.setAttribute('aria-label', 'Search runs by name');
    search.addEventListener('input', () => {
      this.filter = { ...this.filter, query: search.value };
      this.render();
    });
    const state = el('select', 'cmbagent-runs-state');
    state.setAttribute('aria-label', 'Filter runs by state');
    state.append(new Option('All states', ''), ...MENU_STATES.map(s => new Option(s.replace('_', ' '), s)));
    state.addEventListener('change', () => {
      this.filter = { ...this.filter, state: state.value };
      this.render();
    });
    tools.append(search, state);
    this.empty.textContent = 'No runs yet. Start a workflow from a notebook or a script.';
    this.storeNote.setAttribute('role', 'status');
    this.storeNote.hidden = true;
    this.node.append(head, this.storeNote, tools, this.empty, this.list);

    const conn = opts.connection;
    this.disposers.push(conn.onInfo(info => this.showConnection(info)));
    this.showConnection(conn.info());
    this.disposers.push(conn.followRuns((runs, changed) => {
      this.runs = new Map(runs);
      if (changed) this.renderRow(changed);
      else this.render();
    }));
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  /** The run selected in the list (commands act on it). */
  get selectedRun(): RunInfo | null {
    return this.selected ? this.runs.get(this.selected) ?? null : null;
  }

  /** The state of a run known to the list. */
  runState(runId: string): string | null {
    return this.runs.get(runId)?.state ?? null;
  }

  private showConnection(info: ConnectionInfo): void {
    const state = connectionAttr('socket', info);
    this.node.dataset.connection = state;
    this.badge.dataset.connection = state;
    this.badge.textContent = connectionLabel('socket', info);
    this.badge.title = info.lastError ? `last error: ${info.lastError}` : 'connection to the server';
    const since = info.storeDownSince;
    this.node.dataset.store = since ? 'unavailable' : 'available';
    this.storeNote.hidden = !since;
    if (since) this.storeNote.textContent = `${storeDownText(since, 'list')}.`;
  }

  private tick(): void {
    const info = this.opts.connection.info();
    if (info.state !== 'live') this.showConnection(info);
    const now = Date.now();
    for (const li of this.list.querySelectorAll<HTMLElement>('li[data-run-id]')) {
      const r = this.runs.get(li.dataset.runId!);
      const dur = li.querySelector('.cmbagent-run-duration');
      if (r && dur && !r.finished_at) dur.textContent = formatDuration(runDuration(r, now));
    }
  }

  private render(): void {
    const rows = visibleRuns(this.runs.values(), this.filter);
    this.list.replaceChildren(...rows.map(r => this.row(r)));
    this.empty.hidden = rows.length > 0;
    if (this.runs.size && !rows.length) this.empty.textContent = 'No run matches the filter.';
  }

  private renderRow(run: RunInfo): void {
    const old = this.list.querySelector<HTMLElement>(`li[data-run-id="${CSS.escape(run.id)}"]`);
    const shown = visibleRuns([run], this.filter).length > 0;
    if (old && shown) old.replaceWith(this.row(run));
    else this.render(); // a new run, or one entering/leaving the filter
  }

  private row(r: RunInfo): HTMLElement {
    const li = el('li', 'cmbagent-run-row');
    li.dataset.runId = r.id;
    li.dataset.state = r.state;
    li.tabIndex = 0;
    li.setAttribute('role', 'button');
    li.setAttribute('aria-label', `${r.name} ${r.id.slice(0, 8)}, ${r.state.replace('_', ' ')}, open`);
    if (r.id === this.selected) li.classList.add('cmbagent-selected');
    const top = el('div', 'cmbagent-run-top');
    const name = el('span', 'cmbagent-run-name', r.name);
    name.title = `${r.name} — ${r.id}`;
    const state = el('span', `cmbagent-state cmbagent-state-${r.state}`, r.state.replace('_', ' '));
    top.append(name, state);
    const bar = el('div', 'cmbagent-run-progress');
    const fill = el('div', 'cmbagent-run-progress-fill');
    fill.style.width = `${r.total ? (100 * r.done) / r.total : 0}%`;
    bar.append(fill);
    bar.setAttribute('role', 'progressbar');
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', String(r.total));
    bar.setAttribute('aria-valuenow', String(r.done));
    const meta = el('div', 'cmbagent-run-meta');
    const started = r.started_at ?? r.created_at;
    // Runs of one workflow share a name: the short id and the start time tell them apart.
    const shortId = el('span', 'cmbagent-run-id', r.id.slice(0, 8));
    shortId.title = `Run id ${r.id}`;
    meta.append(
      shortId,
      el('span', 'cmbagent-run-count', `${r.done}/${r.total}`),
      el('span', 'cmbagent-run-start', new Date(started).toLocaleString([], {
        month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
        hour12: false })),
      el('span', 'cmbagent-run-duration', formatDuration(runDuration(r, Date.now()))),
      el('span', 'cmbagent-run-cost', formatCost(r.cost_usd))
    );
    if (r.pending_approvals.length) {
      meta.append(el('span', 'cmbagent-run-attention', 'needs approval'));
    }
    if (SETTLED_WORKFLOW_STATES.has(r.state)) {
      // Only a settled run can be deleted (the store refuses one that executes).
      const del = el('button', 'cmbagent-run-delete', 'Delete');
      del.type = 'button';
      del.dataset.action = 'delete';
      del.setAttribute('aria-label', `Delete run ${r.name}`);
      del.title = 'Delete this run: its events, results and files';
      del.addEventListener('click', ev => {
        ev.stopPropagation();
        this.opts.remove(r);
      });
      del.addEventListener('keydown', ev => ev.stopPropagation());
      meta.append(del);
    }
    li.append(top, bar, meta);
    const open = () => {
      this.selected = r.id;
      for (const other of this.list.querySelectorAll('.cmbagent-selected')) {
        other.classList.remove('cmbagent-selected');
      }
      li.classList.add('cmbagent-selected');
      this.opts.open(r);
    };
    li.addEventListener('click', open);
    li.addEventListener('keydown', ev => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        open();
      }
    });
    return li;
  }

  dispose(): void {
    if (this.isDisposed) return;
    for (const d of this.disposers) d();
    if (this.ticker) clearInterval(this.ticker);
    super.dispose();
  }
}
