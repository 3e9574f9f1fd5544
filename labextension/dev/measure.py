"""The 2,000-node figures in Chromium: python dev/measure.py [nodes] [seconds]. Prints one JSON line."""
import json
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8
url = (Path(__file__).resolve().parent / "harness.html").as_uri() + f"?nodes={nodes}"

OBSERVE = """
window.__loaf = [];
new PerformanceObserver(l => { for (const e of l.getEntries()) window.__loaf.push(
  {start: e.startTime, duration: e.duration, blocking: e.blockingDuration,
   render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0}); })
  .observe({type: 'long-animation-frame', buffered: true});
"""

with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    page = b.new_page(viewport={"width": 1100, "height": 1000})
    page.add_init_script(OBSERVE)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto(url)
    if len(sys.argv) > 3:  # extra CSS, for experiments
        page.add_style_tag(content=sys.argv[3])
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
    m0 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    page.wait_for_timeout(seconds * 1000)
    m1 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
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
    print(json.dumps(out))
    b.close()
