"""Behaviour checks of the run view in the harness (Chromium): python dev/check.py.

DOM contracts, controls and their acks, approvals, keyboard use, the log's seq
uniqueness across a snapshot, and links only for served files. Exits non-zero on failure.
"""
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright, expect

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
URL = (Path(__file__).resolve().parent / "harness.html").as_uri()
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f" ({detail})" if detail and not cond else ""))
    if not cond:
        failures.append(name)


def unique_seqs(page):
    seqs = page.eval_on_selector_all(".cr-log-row[data-seq]", "els => els.map(e => e.dataset.seq)")
    return len(seqs) == len(set(seqs)), seqs


def main():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = b.new_page(viewport={"width": 1100, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(URL + "?speed=2")
        root = page.locator(".cmbagent-run")
        expect(root).to_have_attribute("data-state", "executing", timeout=10000)
        check("root names the run", root.get_attribute("data-cmbagent-run") == "5f3c9a1e-8b2d-4e6f-a7c1-0d9e8b7a6c5f")
        check("root says live", root.get_attribute("data-connection") == "live")
        page.wait_for_selector("[data-node-id=camb_lcdm][data-status=running]")
        ids = page.eval_on_selector_all("[data-node-id]", "els => els.map(e => e.dataset.nodeId + ':' + e.dataset.status)")
        check("every node has data-node-id and data-status", len(ids) == 8 and all(":" in i and not i.endswith(":") for i in ids), str(ids))

        # Controls: legality, in-flight disabling, effect.
        pause, resume, cancel = (page.locator(f"button[data-action={a}]") for a in ("pause", "resume", "cancel"))
        check("pause enabled while executing", pause.is_enabled())
        check("resume disabled while executing", resume.is_disabled())
        check("buttons have accessible names", pause.get_attribute("aria-label") == "Pause the run")
        pause.click()
        check("pause disabled while in flight", pause.is_disabled())
        expect(root).to_have_attribute("data-state", "paused", timeout=10000)
        check("resume enabled when paused", resume.is_enabled())
        check("pause disabled when paused", pause.is_disabled())
        check("running nodes paused at checkpoints", page.locator("[data-node-id][data-status=paused]").count() > 0)
        resume.click()
        expect(root).to_have_attribute("data-state", "executing", timeout=10000)

        # Keyboard: Tab to the view's tabs (one tab stop), Tab into the graph, Enter selects, arrows move.
        page.locator("button[data-action=cancel]").focus()
        page.keyboard.press("Tab")
        check("Tab reaches the view's tabs", page.evaluate("document.activeElement.dataset.tab") == "graph")
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.dataset.nodeId || document.activeElement.dataset.key")
        check("Tab reaches a graph node", focused == "plan", str(focused))
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        name = page.locator(".cr-detail-name").text_content(timeout=3000)
        check("arrow + Enter selects a node", name is not None and name.startswith("CAMB"), str(name))

        # Approval with a comment.
        page.wait_for_selector("button[data-action=approve]", timeout=30000)
        page.fill(".cr-approval input", "looks right")
        page.click("button[data-action=approve]")
        expect(page.locator("button[data-action=approve]")).to_have_count(0, timeout=5000)
        page.wait_for_selector(".cr-log-row[data-type=approval_received]")
        txt = page.locator(".cr-log-row[data-type=approval_received] .cr-log-text").text_content()
        check("approval answered with its comment", txt == "approved: “looks right”", str(txt))

        # A reconnect that resumes with a snapshot: a gap marker, no seq twice.
        page.click("text=drop 4 s (snapshot)")
        expect(root).to_have_attribute("data-connection", "reconnecting")
        t1 = page.locator(".cr-conn").text_content()
        page.wait_for_timeout(1100)
        t2 = page.locator(".cr-conn").text_content()
        check("reconnect countdown ticks", t1 != t2 and t2.startswith("reconnecting in"), f"{t1} / {t2}")
        check("stale banner shown while disconnected", page.locator(".cr-stale").is_visible())
        expect(root).to_have_attribute("data-connection", "live", timeout=8000)
        ok, seqs = unique_seqs(page)
        check("log seqs unique after a snapshot", ok, str(seqs))
        check("gap marker after the snapshot", page.locator(".cr-log-gap").count() >= 1)
        expect(root).to_have_attribute("data-state", "completed", timeout=30000)
        ok, seqs = unique_seqs(page)
        check("log seqs unique at the end", ok and len(seqs) <= 50, str(len(seqs)))

        # Files: served paths linked, others text only; images previewed.
        page.click("[data-node-id=plot_spectra]")
        img = page.locator(".cr-detail .cr-thumb-img")
        check("image file previewed", img.count() == 1 and img.get_attribute("src").startswith("data:image/png"))
        page.click("[data-node-id=camb_lcdm]")
        names = page.eval_on_selector_all(".cr-file .cr-file-name", "els => els.map(e => [e.tagName, e.textContent])")
        check("served file linked, unserved file plain text",
              ["A", "cl_lcdm.dat"] in names and ["SPAN", "params.ini"] in names, str(names))
        check("thinking collapsed by default",
              page.locator(".cr-log-row[data-type=agent_thinking] details").count() in (0, 1) and
              page.eval_on_selector_all(".cr-log-row[data-type=agent_thinking] details", "els => els.every(d => !d.open)"))
        check("controls disabled once completed", pause.is_disabled() and resume.is_disabled() and cancel.is_disabled())
        check("no page errors", not errors, str(errors))
        page.close()

        # Failure, retry, then a refused command shown inline.
        page = b.new_page(viewport={"width": 1100, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(URL + "?speed=3&fail=1&autoapprove=1")
        root = page.locator(".cmbagent-run")
        expect(root).to_have_attribute("data-state", "failed", timeout=30000)
        page.click("[data-node-id=camb_neff]")
        retry = page.locator("button[data-action=retry]")
        check("retry offered for a failed node", retry.count() == 1 and retry.is_enabled())
        retry.click()
        expect(root).to_have_attribute("data-state", "executing", timeout=5000)
        expect(root).to_have_attribute("data-state", "completed", timeout=40000)
        check("retry re-ran the node and its dependents",
              page.locator("[data-node-id=report]").get_attribute("data-status") == "completed")
        page.close()

        page = b.new_page(viewport={"width": 1100, "height": 1000})
        page.goto(URL + "?speed=2")
        root = page.locator(".cmbagent-run")
        page.wait_for_selector("[data-node-id=camb_lcdm][data-status=running]")
        page.evaluate("window.__harness.server.st.run.reason = 'executor_lost'")  # the next ack refuses
        page.click("button[data-action=pause]")
        err = page.locator(".cr-head .cr-cmd-error")
        expect(err).to_be_visible(timeout=3000)
        check("a refused command shows the server's error inline", "executor_lost" in err.text_content(), err.text_content())
        check("the button is usable again after the ack", page.locator("button[data-action=pause]").is_enabled())
        page.close()
        b.close()
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
