// JupyterLab plugin: the "Workflow runs" sidebar, run panels in the main area,
// notifications for approvals and failures, and palette commands for the selected run.
// It runs in Jupyter Notebook 7 too, whose shell is not JupyterLab's: there the runs
// panel is a left side panel and a run opens in the "down" area, since Notebook 7's
// main area holds the page's one document.
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, MainAreaWidget, Notification, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';
import { sharedConnection } from './connection';
import { extensionAvailable, fileUrl, pageServerInfo, serverPath } from './page';
import type { RunInfo, WorkflowState } from './protocol';
import { alertsFor } from './runlist';
import { RunView } from './runview';
import { RunsPanel } from './sidebar';
import { isLegal, RUN_ACTIONS } from './status';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><circle cx="5" cy="6" r="2.5"/><circle cx="5" cy="18" r="2.5"/>
<circle cx="19" cy="12" r="2.5"/><path d="M7.2 7.1l9.6 3.8-.5 1.3-9.6-3.8zm0 9.8l9.1-4.3.6 1.3-9.1 4.3z"/></g></svg>`;

const runsIcon = new LabIcon({ name: 'cmbagent:runs', svgstr: ICON_SVG });

class RunPanelContent extends Widget {
  private readonly view: RunView;

  constructor(readonly runId: string, view: (host: HTMLElement) => RunView) {
    super();
    this.addClass('cmbagent-run-panel');
    this.view = view(this.node);
  }

  dispose(): void {
    if (!this.isDisposed) this.view.dispose();
    super.dispose();
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'cmbagent-jupyter:plugin',
  description: 'Workflow runs, live: a sidebar listing every run, with the DAG view and controls.',
  autoStart: true,
  optional: [ILabShell, ICommandPalette],
  activate: async (app: JupyterFrontEnd, labShell: ILabShell | null, palette: ICommandPalette | null) => {
    const shell = app.shell;
    const runArea = labShell ? 'main' : 'down';
    const info = pageServerInfo();
    if (!info) return;
    if (!(await extensionAvailable(info))) {
      // No cmbagent server extension on this server: nothing to list (notebook widgets
      // fall back to their kernel's comm on their own).
      console.warn('cmbagent-jupyter: the cmbagent_jupyter server extension is not enabled');
      return;
    }
    const conn = sharedConnection(info.wsUrl, info.token, info.baseUrl);
    const panels = new Map<string, MainAreaWidget<RunPanelContent>>();

    // A recorded file opens in a main-area tab (JupyterLab's viewer for its type), from
    // run panels and from notebook widgets on this page alike (files.ts pageOpener).
    const openFile = (path: string): boolean => {
      const rel = serverPath(conn.rootDir, path);
      if (rel === null) return false;
      void app.commands.execute('docmanager:open', { path: rel });
      return true;
    };
    (globalThis as { __cmbagentOpenFile?: (path: string) => boolean }).__cmbagentOpenFile = openFile;

    const openRun = (run: Pick<RunInfo, 'id' | 'name'>) => {
      let panel = panels.get(run.id);
      if (!panel || panel.isDisposed) {
        const content = new RunPanelContent(run.id, host => new RunView(host, {
          runId: run.id, transport: conn, fileUrl: p => fileUrl(info.baseUrl, conn.rootDir, p), openFile
        }));
        panel = new MainAreaWidget({ content });
        panel.id = `cmbagent-run-${run.id}`;
        panel.title.label = run.name;
        panel.title.caption = `Workflow run ${run.name} (${run.id})`;
        panel.title.icon = runsIcon;
        panel.title.closable = true;
        panels.set(run.id, panel);
        panel.disposed.connect(() => panels.delete(run.id));
        // Notebook 7's down area opens at its content's minimum height: give it one.
        if (!labShell) content.node.style.minHeight = '45vh';
        shell.add(panel, runArea);
      }
      shell.activateById(panel.id);
    };

    const removeRun = async (run: RunInfo) => {
      const answer = await showDialog({
        title: 'Delete run?',
        body: `Delete “${run.name}” (${run.id}) with its events, results and files? This cannot be undone.`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
      });
      if (!answer.button.accept) return;
      const settings = ServerConnection.makeSettings();
      const url = `${settings.baseUrl}cmbagent/api/runs/${encodeURIComponent(run.id)}`;
      const r = await ServerConnection.makeRequest(url, { method: 'DELETE' }, settings);
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        Notification.error(`Could not delete ${run.name}: ${body.message ?? r.statusText}`, { autoClose: 8000 });
      }
    };
    const sidebar = new RunsPanel({ connection: conn, open: openRun, remove: run => void removeRun(run) });
    sidebar.title.icon = runsIcon;
    if (!labShell) sidebar.title.label = 'Workflow runs'; // Notebook 7's View menu lists side panels by label
    shell.add(sidebar, 'left', { rank: 600 });
    // JupyterLab shows the panel's tab in its left bar; Notebook 7 has no such bar: this
    // command (in the palette, Ctrl+Shift+C, in both) opens it.
    app.commands.addCommand('cmbagent:show-runs', {
      label: 'Show the workflow runs',
      execute: () => shell.activateById(sidebar.id)
    });
    palette?.addItem({ command: 'cmbagent:show-runs', category: 'Workflow runs' });

    // Notifications: a new approval request or question (withdrawn once answered), or a failed run.
    let initial = true;
    const known = new Map<string, RunInfo>();
    const approvalToasts = new Map<string, string>(); // approval_id -> notification id
    conn.followRuns((runs, changed) => {
      const batch = changed ? [changed] : [...runs.values()];
      for (const run of batch) {
        for (const alert of alertsFor(known.get(run.id), run, initial)) {
          const actions = [{ label: 'Open run', callback: () => openRun(run) }];
          if (alert.kind === 'approval') {
            const id = Notification.warning(
              alert.question ? `${run.name} asks: ${alert.prompt}` : `${run.name} needs approval: ${alert.prompt}`,
                                            { actions, autoClose: false });
            approvalToasts.set(alert.approvalId, id);
          } else {
            Notification.error(`${run.name} failed`, { actions, autoClose: 10000 });
          }
        }
        const pending = new Set(run.pending_approvals.map(a => a.approval_id));
        for (const a of known.get(run.id)?.pending_approvals ?? []) {
          const toast = approvalToasts.get(a.approval_id);
          if (toast && !pending.has(a.approval_id)) {
            Notification.dismiss(toast);
            approvalToasts.delete(a.approval_id);
          }
        }
        known.set(run.id, run);
      }
      initial = false;
    });

    // Commands act on the run in the current main-area panel, else the sidebar's selection.
    const currentRun = (): string | null => {
      const w = shell.currentWidget;
      if (w instanceof MainAreaWidget && w.content instanceof RunPanelContent) return w.content.runId;
      return sidebar.selectedRun?.id ?? null;
    };
    for (const action of RUN_ACTIONS) {
      const id = `cmbagent:${action}-run`;
      app.commands.addCommand(id, {
        label: `${action[0].toUpperCase()}${action.slice(1)} the selected workflow run`,
        isEnabled: () => {
          const runId = currentRun();
          return !!runId && isLegal(action, sidebar.runState(runId) as WorkflowState | null);
        },
        execute: async () => {
          const runId = currentRun();
          if (!runId) return;
          const ack = await conn.command(runId, action);
          if (!ack.ok) Notification.error(`Could not ${action} the run: ${ack.error}`, { autoClose: 8000 });
        }
      });
      palette?.addItem({ command: id, category: 'Workflow runs' });
    }
  }
};

export default plugin;
