// The notebook widget's front end (an anywidget module). It talks to the server
// extension's WebSocket — so its buttons work while the kernel is busy, after a
// reload and from a second tab — and falls back to the widget's comm where no
// server extension serves the page.
import { CommModel, CommTransport } from './comm';
import { sharedConnection, Transport } from './connection';
import { extensionAvailable, fileUrl, pageServerInfo } from './page';
import { RunView } from './runview';

interface WidgetModel extends CommModel {
  get(name: 'run_id'): string;
}

async function transportFor(model: WidgetModel): Promise<{
  transport: Transport; files?: (path: string) => string | null; comm?: CommTransport;
}> {
  const info = pageServerInfo();
  if (info && (await extensionAvailable(info))) {
    const conn = sharedConnection(info.wsUrl, info.token, info.baseUrl);
    return { transport: conn, files: path => fileUrl(info.baseUrl, conn.rootDir, path) };
  }
  const comm = new CommTransport(model);
  return { transport: comm, comm };
}

export default {
  async render({ model, el }: { model: WidgetModel; el: HTMLElement }) {
    const { transport, files, comm } = await transportFor(model);
    const view = new RunView(el, { runId: model.get('run_id'), transport, fileUrl: files });
    return () => {
      view.dispose();
      comm?.dispose();
    };
  }
};
