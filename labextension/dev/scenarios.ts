// Scripted runs for the harness: a CMB power-spectrum analysis (plan → 4 CAMB runs →
// fit → plot → report, with progress, agents, costs, a failure + retry and an
// approval), and a big random layered DAG streaming ~200 status events a second.
import type { StepCtx, StepDef } from './fake';

export interface CmbOptions {
  /** camb_neff fails for good (its retry is left to the user). */
  hardFailure: boolean;
  autoApprove: boolean;
}

const ROOT = '/home/user/cmb';

const COSMOLOGIES: Array<{ id: string; label: string; desc: string; sigma8: number; ms: number }> = [
  { id: 'camb_lcdm', label: 'CAMB ΛCDM', desc: 'Planck 2018 best-fit ΛCDM', sigma8: 0.8111, ms: 5200 },
  { id: 'camb_wcdm', label: 'CAMB wCDM (w = −1.3)', desc: 'Phantom dark energy, PPF', sigma8: 0.8457, ms: 4300 },
  { id: 'camb_mnu', label: 'CAMB massive neutrinos Σmν = 0.3 eV', desc: 'Three degenerate massive neutrinos', sigma8: 0.7593, ms: 6400 },
  { id: 'camb_neff', label: 'CAMB N_eff = 3.9', desc: 'Extra relativistic species', sigma8: 0.8204, ms: 5600 }
];

async function camb(ctx: StepCtx, c: typeof COSMOLOGIES[number], opts: CmbOptions): Promise<string> {
  ctx.message('engineer', `Setting up CAMB for ${c.desc}: lmax = 2500, lensing on, accuracy boost 1.2.`);
  ctx.cost('gpt-4.1', 1840, 312, 0.0061, 'engineer');
  ctx.output([['stdout', `CAMB 1.5.4 — ${c.desc}`], ['stdout', '\x1b[1mparameters\x1b[0m: H0=67.36 ombh2=0.02237 omch2=0.1200 tau=0.0544'],
              ['log', 'camb: using HMcode-2020 for the non-linear P(k)', 'INFO']]);
  const steps = 8;
  for (let i = 1; i <= steps; i++) {
    await ctx.sleep(c.ms / steps);
    ctx.progress(i / steps, i < steps ? `transfer functions, k-bin ${i * 64} of ${steps * 64}` : 'lensed C_ℓ');
    const bar = '█'.repeat(i * 2).padEnd(16, ' ');
    ctx.output([['stdout', `k-bin ${i * 64}/${steps * 64}: \x1b[32mconverged\x1b[0m in ${(c.ms / steps / 1000).toFixed(2)} s`]],
               `transfer: ${Math.round((100 * i) / steps)}%|${bar}| ${i * 64}/${steps * 64}`);
    if (i === 4 && c.id === 'camb_mnu') {
      ctx.output([['warning', 'camb/results.py:412: UserWarning: massive neutrinos: accuracy_boost < 2 may bias P(k) at k > 5 h/Mpc', 'UserWarning']]);
    }
    if (c.id === 'camb_wcdm' && ctx.attempt === 1 && i === 3) {
      ctx.output([['stderr', '\x1b[31mCAMBError\x1b[0m: w = -1.3 crosses the phantom divide; set dark_energy_model="ppf"']]);
      throw Object.assign(new Error('w = -1.3 crosses the phantom divide; set dark_energy_model="ppf"'), { name: 'CAMBError' });
    }
    if (c.id === 'camb_neff' && opts.hardFailure && ctx.attempt === 1 && i === 5) {
      throw Object.assign(new Error('Helium fraction from BBN is out of the tabulated range for N_eff = 3.9 (YHe table ends at N_eff = 3.8)'), { name: 'ValueError' });
    }
  }
  ctx.output([['stdout', `σ8 = ${c.sigma8}; lensed C_ℓ written`]]);
  ctx.metric('sigma8', c.sigma8);
  ctx.metric('chi2_planck', 2764.3 + (c.sigma8 - 0.81) * 900);
  ctx.file(`${ROOT}/out/cl_${c.id.slice(5)}.dat`, 'text/plain', 160_412, 'Lensed TT, EE, TE, BB spectra');
  ctx.file(`/tmp/camb-scratch/${c.id}/params.ini`, 'text/plain', 3_121, 'CAMB parameter file (scratch, not served)');
  return `{'ell': array([2, ..., 2500]), 'TT': array(shape=(2499,)), 'sigma8': ${c.sigma8}}`;
}

async function plan(ctx: StepCtx): Promise<string> {
  ctx.thinking('planner', 'The user wants to compare the CMB temperature power spectrum across extensions of ΛCDM. The cheapest informative set is: ΛCDM baseline, a wCDM with phantom w, massive neutrinos and extra radiation. Each is an independent CAMB run, so they can go in parallel; then a joint fit against Planck TT, one figure, one report.');
  await ctx.sleep(900);
  ctx.progress(0.3, 'reading the request');
  ctx.toolCall('planner', 'search_literature', { query: 'Planck 2018 cosmological parameters TT,TE,EE+lowE+lensing', max_results: 3 },
               { hits: ['arXiv:1807.06209', 'arXiv:1907.12875', 'arXiv:2007.04997'] });
  ctx.cost('gpt-4.1', 5210, 640, 0.0187, 'planner');
  await ctx.sleep(1100);
  ctx.progress(0.8, 'writing the plan');
  ctx.message('planner', 'Plan: run CAMB for 4 cosmologies in parallel (ΛCDM, wCDM with w = −1.3, Σmν = 0.3 eV, N_eff = 3.9), fit H0 and Ωm to Planck 2018 TT, plot the spectra with residuals, and write a short report.');
  ctx.cost('gpt-4.1-mini', 2280, 455, 0.0023, 'planner');
  await ctx.sleep(500);
  return "['camb_lcdm', 'camb_wcdm', 'camb_mnu', 'camb_neff'] -> fit_params -> plot_spectra -> report";
}

async function fit(ctx: StepCtx, opts: CmbOptions): Promise<string> {
  ctx.message('researcher', 'Fitting H0 and Ωm to Planck 2018 TT (ℓ = 30–2500) with an MCMC, 4 chains.');
  for (let i = 1; i <= 6; i++) {
    await ctx.sleep(700);
    ctx.progress(i / 10, `MCMC: ${i * 2000} of 12000 samples, R−1 = ${(0.4 / i).toFixed(3)}`);
    ctx.metric('gelman_rubin_r_minus_1', 0.4 / i, undefined, i * 2000);
    ctx.metric('log_likelihood', -1381 - 40 / i + i * 0.8, undefined, i * 2000);
    ctx.output([['log', `mcmc: ${i * 2000} samples, acceptance 0.${23 + i}`, 'INFO']]);
  }
  ctx.metric('H0', 67.36);
  ctx.metric('Omega_m', 0.3153);
  ctx.cost('o3', 3900, 820, 0.0344, 'researcher');
  const prompt = 'Best fit: H0 = 67.36 ± 0.54 km/s/Mpc, Ωm = 0.315 ± 0.007 (R−1 = 0.067). Accept this fit and go on to the plots?';
  const ok = opts.autoApprove ? (await ctx.sleep(1500), true) : await ctx.approve(prompt);
  if (!ok) return 'None  # fit rejected by the user';
  for (let i = 7; i <= 10; i++) {
    await ctx.sleep(350);
    ctx.progress(i / 10, 'writing chains');
  }
  ctx.file(`${ROOT}/out/chains.h5`, 'application/x-hdf5', 48_203_776, 'MCMC chains');
  return "{'H0': 67.36, 'Omega_m': 0.3153, 'chi2_min': 2761.9}";
}

async function plot(ctx: StepCtx): Promise<string> {
  ctx.message('engineer', 'Plotting D_ℓ^TT for the four models with Planck 2018 binned data and residuals.');
  await ctx.sleep(1400);
  ctx.progress(0.5, 'rendering TT panel');
  ctx.toolCall('engineer', 'execute_python', { code: "fig = plot_spectra(results, data='planck18_tt.txt')\nfig.savefig('plots/cl_tt.png', dpi=150)" },
               { stdout: 'saved plots/cl_tt.png (1500×900)' });
  ctx.file(`${ROOT}/plots/cl_tt.png`, 'image/png', 182_553, 'TT power spectra with Planck 2018 data');
  ctx.cost('gpt-4.1', 2630, 388, 0.0083, 'engineer');
  await ctx.sleep(900);
  return "Figure(1500x900, axes=2)";
}

async function report(ctx: StepCtx): Promise<string> {
  ctx.message('writer', 'Writing report.md: method, fit results, figure, caveats (ΛCDM preferred; wCDM Δχ² = +31).');
  await ctx.sleep(1600);
  ctx.progress(0.6, 'drafting');
  ctx.cost('claude-sonnet', 6120, 1490, 0.0298, 'writer');
  await ctx.sleep(900);
  ctx.file(`${ROOT}/report.md`, 'text/markdown', 6_912, 'Analysis report');
  return `'${ROOT}/report.md'`;
}

export function cmbSteps(opts: CmbOptions): StepDef[] {
  const cambIds = COSMOLOGIES.map(c => c.id);
  return [
    { id: 'plan', label: 'Plan the analysis', description: 'A planning agent turns the request into steps.', fn: plan },
    ...COSMOLOGIES.map(c => ({
      id: c.id, label: c.label, description: `Compute lensed CMB spectra with CAMB: ${c.desc}.`,
      deps: ['plan'], retries: c.id === 'camb_wcdm' ? 2 : 0, retryDelay: 1.5,
      fn: (ctx: StepCtx) => camb(ctx, c, opts)
    })),
    { id: 'fit_params', label: 'Fit H0 and Ωm to Planck TT', description: 'MCMC fit of H0 and Ωm against Planck 2018 TT.',
      deps: cambIds, fn: (ctx: StepCtx) => fit(ctx, opts) },
    { id: 'plot_spectra', label: 'Plot C_ℓ^TT & residuals', description: 'D_ℓ^TT of the four models, with data and residuals.',
      deps: ['fit_params'], fn: plot },
    { id: 'report', label: 'Write "report.md"', description: 'A short report with the fit, the figure and caveats.',
      deps: ['plot_spectra'], fn: report }
  ];
}

/** A seeded PRNG (mulberry32): the same big DAG every time. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const VERBS = ['fetch', 'clean', 'calibrate', 'simulate', 'fit', 'reduce', 'validate', 'plot', 'stack', 'mask'];

/**
 * `n` nodes in ~√n/1.8 generations of varied width, each depending on 1–3 nodes of the
 * previous generation. Durations are set so a width of 120 gives ~200 events/s. One step
 * at a time, so that the page can make 20,000 of them in slices (harness.ts).
 */
export function* bigSteps(n: number, seed = 7): Generator<StepDef> {
  const rand = rng(seed);
  const gens = Math.max(2, Math.round(Math.sqrt(n) / 1.8));
  const sizes: number[] = [];
  let left = n;
  for (let g = 0; g < gens; g++) {
    const avg = left / (gens - g);
    const size = g === gens - 1 ? left : Math.max(1, Math.min(left - (gens - g - 1), Math.round(avg * (0.4 + rand() * 1.2))));
    sizes.push(size);
    left -= size;
  }
  let prev: string[] = [];
  for (const [g, size] of sizes.entries()) {
    const cur: string[] = [];
    for (let i = 0; i < size; i++) {
      const id = `g${String(g).padStart(2, '0')}_${String(i).padStart(3, '0')}`;
      const deps = new Set<string>();
      const k = prev.length ? 1 + Math.floor(rand() * 3) : 0;
      for (let j = 0; j < k; j++) deps.add(prev[Math.floor(rand() * prev.length)]);
      const verb = VERBS[Math.floor(rand() * VERBS.length)];
      const flaky = rand() < 0.015;
      const dur = 400 + rand() * 1200;
      cur.push(id);
      yield {
        id, label: `${verb} tile ${g}.${i}`, deps: [...deps], retries: 1, retryDelay: 0.8,
        fn: async ctx => {
          await ctx.sleep(dur / 2);
          ctx.progress(0.5, `${verb}: half done`);
          ctx.cost('small-model', 120, 30, 0.00004, verb);
          if (flaky && ctx.attempt === 1) throw Object.assign(new Error(`transient I/O error reading tile ${g}.${i}`), { name: 'OSError' });
          await ctx.sleep(dur / 2);
          return `tile(${g}, ${i})`;
        }
      };
    }
    prev = cur;
  }
}
