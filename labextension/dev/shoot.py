"""Screenshots of the harness with Playwright: python dev/shoot.py [names...]."""
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
OUT = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def url(q):
    return (HERE / "harness.html").as_uri() + "?" + q


def shoot(page, name, selector="#host"):
    OUT.mkdir(parents=True, exist_ok=True)
    page.locator(selector).screenshot(path=str(OUT / f"{name}.png"))
    print("wrote", OUT / f"{name}.png")


def scenario(b, name, q, wait, act=None, viewport=(1100, 1000), selector="#host", full=False):
    page = b.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url(q))
    wait(page)
    if act:
        act(page)
    if full:
        OUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT / f"{name}.png"))
        print("wrote", OUT / f"{name}.png")
    else:
        shoot(page, name, selector)
    if errors:
        print("ERRORS", name, errors)
    page.close()


def main(only):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        jobs = {
            "cmb-running-light": ("speed=1", lambda pg: pg.wait_for_selector('[data-node-id=camb_wcdm][data-status=retrying]', timeout=30000),
                                  lambda pg: (pg.click('[data-node-id=camb_wcdm]'), pg.wait_for_timeout(400))),
            "cmb-running-dark": ("speed=1&theme=dark", lambda pg: pg.wait_for_selector('[data-node-id=camb_wcdm][data-status=retrying]', timeout=30000),
                                 lambda pg: (pg.click('[data-node-id=camb_wcdm]'), pg.wait_for_timeout(400))),
            "cmb-approval-light": ("speed=3", lambda pg: pg.wait_for_selector('button[data-action=approve]', timeout=60000),
                                   lambda pg: (pg.click('[data-node-id=fit_params]'), pg.wait_for_timeout(400))),
            "cmb-approval-dark": ("speed=3&theme=dark", lambda pg: pg.wait_for_selector('button[data-action=approve]', timeout=60000),
                                  lambda pg: (pg.click('[data-node-id=fit_params]'), pg.wait_for_timeout(400))),
            "cmb-failed-light": ("speed=3&fail=1", lambda pg: pg.wait_for_selector('.cmbagent-run[data-state=failed]', timeout=60000),
                                 lambda pg: (pg.click('[data-node-id=camb_neff]'), pg.click('.cr-traceback summary'), pg.wait_for_timeout(400))),
            "cmb-failed-dark": ("speed=3&fail=1&theme=dark", lambda pg: pg.wait_for_selector('.cmbagent-run[data-state=failed]', timeout=60000),
                                lambda pg: (pg.click('[data-node-id=camb_neff]'), pg.click('.cr-traceback summary'), pg.wait_for_timeout(400))),
            "cmb-done-light": ("speed=4&autoapprove=1", lambda pg: pg.wait_for_selector('.cmbagent-run[data-state=completed]', timeout=60000),
                               lambda pg: (pg.click('[data-node-id=plot_spectra]'), pg.wait_for_timeout(600))),
            "cmb-done-dark": ("speed=4&autoapprove=1&theme=dark", lambda pg: pg.wait_for_selector('.cmbagent-run[data-state=completed]', timeout=60000),
                              lambda pg: (pg.click('[data-node-id=plot_spectra]'), pg.wait_for_timeout(600))),
            "cmb-reconnecting-light": ("speed=1", lambda pg: pg.wait_for_selector('[data-node-id=camb_lcdm][data-status=running]', timeout=30000),
                                       lambda pg: (pg.click('text=drop 4 s (snapshot)'), pg.wait_for_timeout(1200))),
            "cmb-executor-lost-light": ("speed=1&executor_lost=1", lambda pg: pg.wait_for_selector('.cmbagent-run[data-state=failed]', timeout=30000),
                                        lambda pg: pg.wait_for_timeout(300)),
            "cmb-nojp-vars": ("speed=3&theme=none", lambda pg: pg.wait_for_selector('button[data-action=approve]', timeout=60000),
                              lambda pg: (pg.click('[data-node-id=camb_wcdm]'), pg.wait_for_timeout(400))),
            "cmb-comm-light": ("speed=2&kind=comm", lambda pg: pg.wait_for_selector('[data-node-id=camb_lcdm][data-status=running]', timeout=30000), None),
        }
        for name, (q, wait, act) in jobs.items():
            if only and name not in only:
                continue
            scenario(b, name, q, wait, act)
        panel = {
            "panel-cmb-light": ("speed=3&layout=panel", "light"),
            "panel-cmb-dark": ("speed=3&layout=panel&theme=dark", "dark"),
        }
        for name, (q, _) in panel.items():
            if only and name not in only:
                continue
            scenario(b, name, q, lambda pg: pg.wait_for_selector('button[data-action=approve]', timeout=60000),
                     lambda pg: (pg.click('[data-node-id=camb_wcdm]'), pg.wait_for_timeout(400)),
                     viewport=(1500, 900), full=True)
        for theme in ("light", "dark"):
            name = f"big-2000-{theme}"
            if only and name not in only:
                continue
            scenario(b, name, f"nodes=2000&theme={theme}",
                     lambda pg: pg.wait_for_function("document.querySelectorAll('[data-node-id][data-status=completed]').length > 300", timeout=60000),
                     None)
        for theme in ("light", "dark"):
            name = f"big-2000-zoomed-{theme}"
            if only and name not in only:
                continue

            def zoom(pg):
                box = pg.locator('.cr-canvas').bounding_box()
                pg.mouse.move(box["x"] + 60, box["y"] + box["height"] - 6)
                pg.keyboard.down("Control")
                for _ in range(8):
                    pg.mouse.wheel(0, -120)
                    pg.wait_for_timeout(60)
                pg.keyboard.up("Control")
                pg.wait_for_timeout(1500)
            scenario(b, name, f"nodes=2000&theme={theme}",
                     lambda pg: pg.wait_for_function("document.querySelectorAll('[data-node-id][data-status=completed]').length > 150", timeout=60000),
                     zoom)
        # The run view's tabs (src/insights.ts), in a cell and in a panel, light and dark.
        for theme in ("light", "dark"):
            for tab in ("console", "timeline", "cost", "files", "metrics"):
                name = f"tab-{tab}-{theme}"
                if only and name not in only:
                    continue
                scenario(b, name, f"speed=3&autoapprove=1&theme={theme}",
                         lambda pg: pg.wait_for_selector('[data-node-id=report][data-status=running]', timeout=60000),
                         lambda pg, tab=tab: (pg.click(f'.cr-tab[data-tab={tab}]'), pg.wait_for_timeout(700)))
            for tab, started in (("timeline", 300), ("console", 100)):
                name = f"tab-{tab}-2000-{theme}"
                if only and name not in only:
                    continue
                scenario(b, name, f"nodes=2000&lines=1000&theme={theme}&layout=panel",
                         lambda pg, n=started: pg.wait_for_function(
                             f"document.querySelectorAll('[data-node-id][data-status=completed]').length > {n}",
                             timeout=60000),
                         lambda pg, tab=tab: (pg.click(f'.cr-tab[data-tab={tab}]'), pg.wait_for_timeout(800)),
                         viewport=(1500, 900), full=True)
        b.close()


if __name__ == "__main__":
    main(set(sys.argv[1:]))
