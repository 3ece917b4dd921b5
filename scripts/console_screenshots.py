"""Regenerate the console's screenshots in docs/console/ (one PNG per page, 1280x800) from a demo ledger.

    PYTHONPATH=. python scripts/console_screenshots.py [--out docs/console]

It seeds a fresh ledger the way the console tests do (tests/console_fixtures.py: two tenants, dead letters, a
backfill, limits, a paused queue and source; and seed_airgap: a pinned trust root, a bundle imported from site-a
and a tampered copy of it refused), serves it with a token key, signs in to /console as tenant
acme-corp in Debian's chromium (Playwright, pinned in the [test] extra) and screenshots each page (and a job's
log panel: job-log.png; the air gap page's refused imports: airgap-refused.png).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the seeding and the server fixtures live with the tests

from console_fixtures import browser_missing, console_site, launch_browser  # noqa: E402

PAGES = {  # file name -> (hash route, a text to wait for)
    "overview": ("#/overview", "disk full on the bulk workers"),
    "jobs": ("#/jobs", "vex.ingest"),
    "job": (None, "layer 3 of 7"),
    "deadletters": ("#/deadletters", "upstream said"),
    "backfills": ("#/backfills", "missed feed window"),
    "flow": ("#/flow", "upstream cap"),
    "sources": ("#/sources", "nvd-feed"),
    "airgap": ("#/airgap", "merkle:hash-mismatch"),
    "audit": ("#/audit", "Hash chain verified"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    args = parser.parse_args()
    missing = browser_missing()
    if missing is not None:
        print(f"console_screenshots: {missing}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() as work, console_site(Path(work), airgap=True) as site,
          sync_playwright() as playwright):
        browser = launch_browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(site.server.url + "/console")
            page.fill("#token", site.tokens["t1"])
            page.click("#sign-in-form button[type=submit]")
            page.wait_for_selector("#nav a")
            for name, (route, expect) in PAGES.items():
                page.evaluate("route => { location.hash = route; }", route or f"#/jobs/{site.seeded.running_t1}")
                page.locator("#page", has_text=expect).wait_for()
                page.locator("#live.on").wait_for()
                page.screenshot(path=str(args.out / f"{name}.png"))  # the first screen: 1280x800
                print(args.out / f"{name}.png")
                if name == "job":  # its log panel, below the first screen
                    panel = page.locator("section.panel", has=page.locator("ol.log"))
                    panel.locator("ol.log li").first.wait_for()
                    panel.screenshot(path=str(args.out / "job-log.png"))
                    print(args.out / "job-log.png")
                if name == "airgap":  # the refused import, below the first screen
                    page.locator("section.panel", has=page.locator("h2", has_text="Refused imports")).screenshot(
                        path=str(args.out / "airgap-refused.png"))
                    print(args.out / "airgap-refused.png")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
