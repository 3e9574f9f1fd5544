// Bundle the notebook widget's ESM (and its CSS) into the Python package, where
// anywidget loads them from: cmbagent_jupyter/static/widget.{js,css}.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, '..', 'cmbagent_jupyter', 'static');
await build({
  entryPoints: { widget: join(root, 'src', 'widget.ts') },
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  sourcemap: false,
  outdir: out,
  logLevel: 'warning',
});
await build({
  entryPoints: { widget: join(root, 'style', 'base.css') },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: 'warning',
});
console.log(`built ${out}/widget.js and widget.css`);
