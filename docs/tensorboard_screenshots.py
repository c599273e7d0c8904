"""Screenshots of TensorBoard on a search run, taken in headless Chromium, for the docs and README.

Starts ``tensorboard --logdir RUN_DIR/tb`` on a free local port, drives Debian's ``chromium``
(``apt-get install chromium``; ``--chromium PATH`` for another build) with Playwright
(``pip install playwright``; no browser download: it launches that executable) and writes:

    OUT/tensorboard_custom_scalars.png   CUSTOM SCALARS: the budget terms, and every group's keep
                                         ratio in one chart per stage
    OUT/tensorboard_time_series.png      TIME SERIES filtered to the search's per-step curves
    OUT/tensorboard_heatmap.png          IMAGES at actual size: the indicator heatmap at the last step

It then runs ``dais-search plot RUN_DIR --out OUT`` (the same figures as PNG files).

    python docs/tensorboard_screenshots.py runs/demo/run --out docs
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SETTLE_MS = 5000  # after an action, the time TensorBoard's page gets to fetch and draw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_runs(base: str, seconds: float = 120) -> None:
    """Until TensorBoard lists a run (its events loaded), not merely answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/data/runs", timeout=2) as r:
                if r.status == 200 and json.loads(r.read()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"TensorBoard at {base} listed no run within {seconds:.0f} s")


def take_screenshots(chromium: str, base: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.goto(f"{base}/#custom_scalars")
        page.get_by_text("keep ratio per stage").first.wait_for(timeout=60_000)
        page.wait_for_timeout(SETTLE_MS)
        shots.append(out / "tensorboard_custom_scalars.png")
        page.screenshot(path=shots[-1])

        page.set_viewport_size({"width": 1400, "height": 1300})
        page.goto(f"{base}/#timeseries")
        search = page.locator('input[placeholder="Filter tags (regex)"]')
        search.wait_for(timeout=60_000)
        search.fill("^search/(flops_ratio|temperature|lambda|binarization_gap|task_loss|val_loss)$")
        search.press("Escape")  # the tag suggestions
        page.get_by_role("button", name="Settings").first.click()  # the settings pane opens by default: close it
        page.wait_for_timeout(SETTLE_MS)
        shots.append(out / "tensorboard_time_series.png")
        page.screenshot(path=shots[-1])

        page.set_viewport_size({"width": 1500, "height": 900})
        page.goto(f"{base}/#images")
        page.get_by_text("Show actual image size").click(timeout=60_000)
        page.wait_for_timeout(SETTLE_MS)
        shots.append(out / "tensorboard_heatmap.png")
        page.screenshot(path=shots[-1])
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="output folder of `dais-search search` or `run` (holds tb/)")
    p.add_argument("--out", default="docs", help="folder for the PNG files (default: docs)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "", help="Chromium executable")
    args = p.parse_args(argv)
    run, out = Path(args.run_dir), Path(args.out)
    if not (run / "tb").is_dir():
        raise SystemExit(f"{run / 'tb'} does not exist: pass the output folder of a search (e.g. runs/demo/run "
                         "after `make demo`)")  # fmt: skip
    if not args.chromium:
        raise SystemExit("no chromium found: install Debian's (apt-get install chromium) or pass --chromium PATH")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run / "tb"), "--port", str(port),
         "--host", "127.0.0.1", "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_runs(f"http://127.0.0.1:{port}")
        for path in take_screenshots(args.chromium, f"http://127.0.0.1:{port}", out):
            print(path)
    finally:
        board.terminate()
        board.wait(timeout=30)
    subprocess.run([sys.executable, "-m", "dais_search.cli", "plot", str(run), "--out", str(out)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
