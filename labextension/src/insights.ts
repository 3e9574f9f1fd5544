// What a researcher looks at besides the graph: the console, the timeline, cost, files
// and plots, and metrics, as tabs of the run view's main area. One feed fills their
// models from the run's events; a view opened late first reads the log back (the last
// HISTORY_CAP events, in pages), holding live events until it has, so every model sees
// the events in seq order once. What the models hold is bounded (console.ts LINE_CAP,
// metricchart.ts SERIES_CAP); only the visible tab renders.
import type { Transport } from './connection';
import type { Envelope, RunState } from './state';
import { ConsoleModel, ConsoleView } from './console';
import { CostModel, CostView } from './costview';
import { el } from './dom';
import { FileLinks, FilesView } from './files';
import { MetricModel, MetricsView } from './metricchart';
import { TimelineModel, TimelineView } from './timeline';

export const TABS = ['graph', 'console', 'timeline', 'cost', 'files', 'metrics'] as const;
export type TabId = typeof TABS[number];
const TAB_LABEL: Record<TabId, string> = {
  graph: 'Graph', console: 'Console', timeline: 'Timeline', cost: 'Cost', files: 'Files & plots',
  metrics: 'Metrics'
};
/** Events read back for a view opened on a run already under way. */
export const HISTORY_CAP = 20000;
const PAGE = 5000;

/**
 * Read the log back up to `upTo` (its last HISTORY_CAP events, PAGE at a time) into the
 * feed; stops early when the log has no more (trimmed, unreachable).
 */
export async function readBack(history: NonNullable<Transport['history']>, runId: string, upTo: number,
                               feed: InsightsFeed): Promise<void> {
  let after = Math.max(0, upTo - HISTORY_CAP);
  while (after < upTo) {
    const page = await history(runId, after, Math.min(PAGE, upTo - after)).catch(() => []);
    if (!page.length) break;
    for (const ev of page) if (ev.seq <= upTo) feed.add(ev);
    after = page[page.length - 1].seq;
  }
  feed.lastSeq = Math.max(feed.lastSeq, upTo);
}

/** The models of a run's insights, fed one event at a time, in seq order, once each. */
export class InsightsFeed {
  readonly console = new ConsoleModel();
  readonly timeline = new TimelineModel();
  readonly cost = new CostModel();
  readonly metrics = new MetricModel();
  /** Bumped when a file is recorded. */
  filesVersion = 0;
  lastSeq = 0;

  add(ev: Envelope): void {
    if (ev.seq <= this.lastSeq) return;
    this.lastSeq = ev.seq;
    switch (ev.event_type) {
      case 'step_output': this.console.add(ev); break;
      case 'cost_update': this.cost.add(ev); break;
      case 'metric_update': this.metrics.add(ev); break;
      case 'file_created': case 'file_updated': this.filesVersion++; break;
      case 'step_started': case 'step_completed': case 'step_failed': case 'step_retry_started':
      case 'dag_node_status_changed':
        this.timeline.apply(ev);
        break;
      default:
        break;
    }
  }
}

export interface InsightsOptions extends FileLinks {
  runId: string;
  transport: Transport;
  nodeLabel: (id: string) => string;
  select: (id: string) => void;
  live: () => boolean;
  /** The tab shown changed (the run view shows the graph or hides it). */
  onTab: (tab: TabId) => void;
}

export class Insights {
  readonly feed = new InsightsFeed();
  readonly tabs: HTMLElement;
  readonly panels: HTMLElement;
  readonly console: ConsoleView;
  readonly timeline: TimelineView;
  private readonly cost: CostView;
  private readonly files: FilesView;
  private readonly metrics: MetricsView;
  private readonly buttons = new Map<TabId, HTMLButtonElement>();
  private readonly panelOf = new Map<TabId, HTMLElement>();
  private active: TabId = 'graph';
  /** Live events held while the log is read back (null: not reading). */
  private held: Envelope[] | null = null;
  private started = false;
  historyNote = '';

  constructor(private readonly opts: InsightsOptions) {
    const common = { nodeLabel: opts.nodeLabel, select: opts.select };
    this.console = new ConsoleView(this.feed.console, common);
    this.timeline = new TimelineView(this.feed.timeline, { ...common, live: opts.live });
    this.cost = new CostView(this.feed.cost, common);
    this.files = new FilesView({ ...common, fileUrl: opts.fileUrl, openFile: opts.openFile });
    this.metrics = new MetricsView(this.feed.metrics, common);
    this.tabs = el('div', 'cr-tabs');
    this.tabs.setAttribute('role', 'tablist');
    this.tabs.setAttribute('aria-label', 'Run views');
    this.panels = el('div', 'cr-tab-panels');
    const views: Partial<Record<TabId, HTMLElement>> = {
      console: this.console.element, timeline: this.timeline.element, cost: this.cost.element,
      files: this.files.element, metrics: this.metrics.element
    };
    for (const id of TABS) {
      const b = el('button', 'cr-tab', TAB_LABEL[id]);
      b.type = 'button';
      b.id = `cr-tab-${id}-${opts.runId}`;
      b.dataset.tab = id;
      b.setAttribute('role', 'tab');
      b.addEventListener('click', () => this.show(id));
      b.addEventListener('keydown', e => this.onKey(e, id));
      this.buttons.set(id, b);
      this.tabs.append(b);
      const view = views[id];
      if (view) {
        const panel = el('div', 'cr-tab-panel');
        panel.dataset.tab = id;
        panel.setAttribute('role', 'tabpanel');
        panel.setAttribute('aria-labelledby', b.id);
        panel.append(view);
        this.panelOf.set(id, panel);
        this.panels.append(panel);
      }
    }
    this.show('graph', false);
  }

  get tab(): TabId {
    return this.active;
  }

  dispose(): void {
    this.timeline.dispose();
  }

  show(tab: TabId, focus = true): void {
    this.active = tab;
    for (const [id, b] of this.buttons) {
      const on = id === tab;
      b.setAttribute('aria-selected', String(on));
      b.tabIndex = on ? 0 : -1;
    }
    for (const [id, p] of this.panelOf) p.hidden = id !== tab;
    this.panels.hidden = tab === 'graph';
    if (focus) this.buttons.get(tab)!.focus();
    this.opts.onTab(tab);
  }

  private onKey(e: KeyboardEvent, id: TabId): void {
    const i = TABS.indexOf(id);
    const to = e.key === 'ArrowRight' ? TABS[(i + 1) % TABS.length]
      : e.key === 'ArrowLeft' ? TABS[(i + TABS.length - 1) % TABS.length]
        : e.key === 'Home' ? TABS[0] : e.key === 'End' ? TABS[TABS.length - 1] : null;
    if (!to) return;
    e.preventDefault();
    this.show(to);
  }

  /** A snapshot arrived: the first one of a run under way starts reading the log back. */
  onSnapshot(st: RunState): void {
    this.feed.timeline.syncNodes(st.nodes, this.started);
    if (this.started) return;
    this.started = true;
    if (st.seq === 0) return;
    const history = this.opts.transport.history;
    if (!history) {
      this.feed.lastSeq = st.seq;
      this.feed.timeline.syncNodes(st.nodes, true);
      this.historyNote = 'Output and history from before this view opened are not available here.';
      return;
    }
    this.held = [];
    if (st.seq > HISTORY_CAP) this.historyNote = `Showing the last ${HISTORY_CAP.toLocaleString()} events' worth of history.`;
    void readBack(history.bind(this.opts.transport), this.opts.runId, st.seq, this.feed).finally(() => {
      const held = this.held ?? [];
      this.held = null;
      for (const ev of held) this.feed.add(ev);
      this.feed.timeline.syncNodes(st.nodes, true); // bars for what the log read did not reach
      this.feed.console.version++;
      this.onLoaded?.();
    });
  }

  /** Called once the log has been read back (the run view schedules a render). */
  onLoaded: (() => void) | null = null;

  /** Live events (already applied to the state). */
  onEvents(events: Envelope[]): void {
    if (this.held) this.held.push(...events);
    else for (const ev of events) this.feed.add(ev);
  }

  /** Render the visible tab; `st` for the steps' names and files, `selected` the step in focus. */
  render(st: RunState, selected: string | null): void {
    switch (this.active) {
      case 'console': {
        const ids = [...st.nodes.values()].filter(n => (n.output_lines ?? 0) > 0 || n.id === selected).map(n => n.id);
        this.console.setScopes(ids);
        this.console.render();
        break;
      }
      case 'timeline':
        this.feed.timeline.syncNodes(st.nodes);
        this.timeline.setSelected(selected);
        this.timeline.render();
        break;
      case 'cost': this.cost.render(); break;
      case 'files': this.files.render(st, this.feed.filesVersion); break;
      case 'metrics': this.metrics.render(selected); break;
      default: break;
    }
  }
}
