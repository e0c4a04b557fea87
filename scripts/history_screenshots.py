"""Screenshots of the training-history pages of a real store, for the README (docs/images/).

Serves the store's pages in this process (as `rewind ckpt web` does) and loads the runs list
and one run's page in Debian's headless Chromium at a laptop's size (1366 x 768).

    rewind train --local-services --store file://$PWD/demo-data --model-size tiny --steps 6000
    python -m scripts.history_screenshots --store file://$PWD/demo-data --run tdmpc2/pendulum-v1-seed1
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="file:// or s3:// URL (or a folder) of the store")
    parser.add_argument("--run", required=True, help="AGENT/RUN of the run page to capture")
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="folder of the PNG files")
    args = parser.parse_args()
    from rewind_checkpoint.api import open_existing_store
    from rewind_checkpoint.catalog import Catalog
    from rewind_checkpoint.history import History, install
    from rewind_runtime.http import HttpHost
    from tests.support.browser import chromium, console_errors, full_page_png

    http = HttpHost(host="127.0.0.1", port=0, title="Rewind training history")
    install(http, History(Catalog(open_existing_store(args.store), staging_max_age_s=math.inf)))
    http.start()
    driver = chromium()
    try:
        for path, name in (("/", "history-runs.png"), (f"/runs/{args.run}", "history-run.png")):
            driver.get(http.url + path)
            full_page_png(driver, Path(args.out) / name)
            errors = console_errors(driver)
            print(f"{path}: {Path(args.out) / name}" + (f" (console errors: {errors})" if errors else ""))
    finally:
        driver.quit()
        http.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
