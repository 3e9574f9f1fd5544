// Bundle the harness: node dev/build.mjs [--watch]. Open dev/harness.html afterwards
// (an IIFE bundle, so file:// works; so does `python -m http.server`).
import { build, context } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const options = {
  entryPoints: [join(here, 'harness.ts')],
  outfile: join(here, 'harness.js'),
  bundle: true,
  format: 'iife',
  target: 'es2020',
  sourcemap: 'inline',
  logLevel: 'info',
};
if (process.argv.includes('--watch')) {
  await (await context(options)).watch();
} else {
  await build(options);
}
