"""The 2,000-node figures in Chromium: python dev/measure.py [nodes] [seconds] [css]. Prints one JSON line.

Importable (benchmarks/widget_render.py uses it): ``ensure_built()``, ``harness_url()``,
``launch()``, ``open_harness()``, ``cpu_metrics()`` and ``measure()``.
"""
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1100, "height": 1000}


def ensure_built(force: bool = False) -> bool:
    """Bundle dev/harness.js (node dev/build.mjs) when it is missing or older than a source
    it bundles (dev/*.ts, src/*.ts, build.mjs). Returns True if it (re)built."""
    out = HERE / "harness.js"
    sources = [*HERE.glob("*.ts"), *(HERE.parent / "src").glob("*.ts"), HERE / "build.mjs"]
    if not force and out.exists() and out.stat().st_mtime >= max(s.stat().st_mtime for s in sources):
        return False
    subprocess.run(["node", str(HERE / "build.mjs")], cwd=HERE.parent, check=True,
                   stdout=sys.stderr, stderr=sys.stderr)
    return True


def harness_url(nodes: int, **params) -> str:
    """dev/harness.html with ``?nodes=N`` and any other URL parameters (see harness.ts)."""
    return (HERE / "harness.html").as_uri() + "?" + urlencode({"nodes": nodes, **params})


def launch(p):
    """Headless Chromium (the system's), as every dev script runs it."""
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


OBSERVE = """
window.__loaf = [];
new PerformanceObserver(l => { for (const e of l.getEntries()) window.__loaf.push(
  {start: e.startTime, duration: e.duration, blocking: e.blockingDuration,
   render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0}); })
  .observe({type: 'long-animation-frame', buffered: true});
"""


def open_harness(browser, url: str, init_scripts=(OBSERVE,), css=None):
    """A new page at ``url`` with ``init_scripts`` run before the harness, and a CDP
    session with Performance metrics enabled: ``(page, cdp)``."""
    page = browser.new_page(viewport=VIEWPORT)
    for script in init_scripts:
        page.add_init_script(script)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto(url)
    if css:  # extra CSS, for experiments
        page.add_style_tag(content=css)
    return page, cdp


def cpu_metrics(cdp) -> dict:
    """Chromium's cumulative Performance metrics (ScriptDuration, LayoutDuration, ... in s)."""
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def measure(nodes: int = 2000, seconds: float = 8, css=None) -> dict:
    """The dev figures (first render, then ``seconds`` of streaming after a 2 s warm-up)."""
    with sync_playwright() as p:
        b = launch(p)
        try:
            page, cdp = open_harness(b, harness_url(nodes), css=css)
            return _measure(page, cdp, nodes, seconds)
        finally:
            b.close()


def _measure(page, cdp, nodes, seconds):
    page.wait_for_function("document.querySelectorAll('.cr-item').length > 100", timeout=30000)
    page.wait_for_timeout(300)
    first = page.evaluate("""() => {
      const h = window.__harness, s = h.view.stats();
      const big = window.__loaf.filter(f => f.duration > 50);
      return { buildJs: s.build, visibleItems: document.querySelectorAll('.cr-item').length,
               domNodes: document.querySelectorAll('.cr-svg *').length,
               buildFrame: big.length ? Math.max(...big.map(f => f.duration)) : null };
    }""")
    page.wait_for_timeout(2000)  # let the stream reach its pace
    before = page.evaluate("""() => { const h = window.__harness; h.frames.reset(); window.__loaf = [];
      return { emitted: h.server.emitted, t: performance.now(), s: h.view.stats() }; }""")
    m0 = cpu_metrics(cdp)
    page.wait_for_timeout(seconds * 1000)
    m1 = cpu_metrics(cdp)
    after = page.evaluate("""() => { const h = window.__harness;
      return { emitted: h.server.emitted, t: performance.now(), s: h.view.stats(), frames: h.frames.summary(),
               loaf: window.__loaf.length, loafMax: Math.max(0, ...window.__loaf.map(f => f.duration)),
               done: h.server.st.run.done, total: h.server.st.run.total }; }""")
    dt = (after["t"] - before["t"]) / 1000
    patches = after["s"]["patches"] - before["s"]["patches"]
    per_s = lambda k: round((m1.get(k, 0) - m0.get(k, 0)) / dt * 1000, 1)  # ms of CPU per second
    out = {
        "nodes": nodes,
        "first_render": {"build_js_ms": round(first["buildJs"], 1), "longest_frame_ms": first["buildFrame"],
                         "visible_items": first["visibleItems"], "svg_elements": first["domNodes"]},
        "stream": {
            "seconds": round(dt, 1),
            "events_per_s": round((after["emitted"] - before["emitted"]) / dt, 1),
            "flushes_per_s": round(patches / dt, 1),
            "patch_js_ms_mean": round((after["s"]["patchTotal"] - before["s"]["patchTotal"]) / max(1, patches), 3),
            "patch_js_ms_max": round(after["s"]["patchMax"], 2),
            "frame_ms": {k: round(v, 1) for k, v in after["frames"].items()},
            "long_frames_over_50ms": after["loaf"], "longest_frame_ms": round(after["loafMax"], 1),
            "cpu_ms_per_s": {"script": per_s("ScriptDuration"), "style": per_s("RecalcStyleDuration"),
                             "layout": per_s("LayoutDuration"), "task": per_s("TaskDuration")},
        },
        "progress": f'{after["done"]}/{after["total"]}',
    }
    return out


if __name__ == "__main__":
    ensure_built()
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                             float(sys.argv[2]) if len(sys.argv) > 2 else 8,
                             sys.argv[3] if len(sys.argv) > 3 else None)))
