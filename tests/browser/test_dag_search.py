"""The DAG view at 20,000 nodes on labextension/dev's harness page (the product's RunView and
DagView, fed by the harness's fake server and executor): the graph is built in slices, and a
step hidden in a collapsed "+N more" generation is found by name from the search box, selected,
brought into view and drawn with its real status."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT, shot

sys.path.insert(0, str(ROOT / "labextension" / "dev"))
import measure  # noqa: E402  (labextension/dev/measure.py: bundles and locates the harness)

NODES = 20000

BUILT = f"""() => {{ const h = window.__harness; if (!h || !h.view.state) return false;
  const s = h.view.stats();
  return h.view.state.nodes.size === {NODES} && s.builds > 0 && !s.building; }}"""

# A step the view does not draw: the last of the widest generation (collapsed into "+N more").
HIDDEN = """() => { const gens = window.__harness.view.state.layout.generations;
  const wide = gens.reduce((a, b) => (b.length > a.length ? b : a));
  const id = wide[wide.length - 1];
  return { id, label: window.__harness.view.state.nodes.get(id).label, width: wide.length,
           drawn: !!document.querySelector(`[data-node-id="${id}"]`) }; }"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_find_a_collapsed_step_by_name_at_20000_nodes(page, theme):
    measure.ensure_built()
    page.goto(measure.harness_url(NODES, rate=500, theme=theme))
    page.wait_for_function(BUILT, timeout=120000, polling=200)
    stats = page.evaluate("() => window.__harness.view.stats()")
    assert stats["slices"] > 1, stats  # built over several frames, not in one task

    target = page.evaluate(HIDDEN)
    assert target["width"] > 40 and not target["drawn"], target

    # Keyboard: "/" on the graph goes to the search box.
    page.focus(".cr-item[tabindex='0']")
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.classList.contains('cr-search-input')")
    page.keyboard.type(target["label"])
    first = page.locator(".cr-search-option").first
    first.wait_for(timeout=10000)
    assert first.get_attribute("data-node-id") == target["id"]
    assert page.locator(".cr-search-input").get_attribute("aria-expanded") == "true"
    assert first.get_attribute("aria-selected") == "true"
    shot(page, f"dag-search-20000-list-{theme}")
    page.keyboard.press("Enter")

    sel = f'.cr-node[data-node-id="{target["id"]}"]'
    page.wait_for_selector(f"{sel}.cr-selected", timeout=20000)
    # Stop the stream, let the view catch up, then the drawn status must be the server's.
    page.evaluate("() => { window.__harness.server.frozen = true; }")
    page.wait_for_function("""() => { const h = window.__harness, f = h.transport.follower(h.server.runId);
      return f.state && f.state.seq >= h.server.st.seq; }""", timeout=20000, polling=50)
    page.wait_for_function(f"""() => {{ const g = document.querySelector('{sel}');
      return g && g.dataset.status === window.__harness.server.st.nodes.get('{target["id"]}').status; }}""",
                           timeout=10000, polling="raf")
    inside = page.evaluate(f"""() => {{ const g = document.querySelector('{sel} .cr-card').getBoundingClientRect();
      const c = document.querySelector('.cr-canvas').getBoundingClientRect();
      return g.left >= c.left && g.right <= c.right && g.top >= c.top && g.bottom <= c.bottom; }}""")
    assert inside, "the found step is panned into view"
    assert page.locator(".cr-node.cr-selected").count() == 1
    shot(page, f"dag-search-20000-found-{theme}")
