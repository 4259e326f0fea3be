"""A picture of a run's report.html for the README: its evaluation table, its curves and one
opened filmstrip, in headless Chromium (Debian's).

    python scripts/report_screenshot.py runs/local_cpu docs/report.png [--task click-link]
        [--outcome changed]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", default="click-link", help="the task whose filmstrip is shown")
    parser.add_argument(
        "--outcome", default="changed", help="filter value: success, failure, changed or ''"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    report = (args.run_dir / "report.html").resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(report.as_uri())
            page.select_option("#task", args.task)
            page.select_option("#outcome", args.outcome)
            row = page.locator("tr[data-task]:visible").first
            for details in row.locator("details.frames").all():
                details.locator("summary").click()
            overview = page.screenshot(full_page=False)
            row.scroll_into_view_if_needed()
            args.out.write_bytes(overview)
            row.screenshot(path=str(args.out.with_name(args.out.stem + "-filmstrip.png")))
        finally:
            browser.close()
    print(f"wrote {args.out} and its -filmstrip.png")


if __name__ == "__main__":
    main()
