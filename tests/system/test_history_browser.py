"""The training-history pages in a real browser: Debian's headless Chromium, driven by Selenium.

A real checkpoint service serves the pages on its HTTP port; checkpoints go in
through the gRPC Save and the history files through PutRunFile, as the trainer
sends them. The window is a laptop's (1366x768).

Screenshots of the runs list and a run page are written to the test's folder,
or to docs/images/ (for the README) when REWIND_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rewind import CheckpointClient
from rewind.commands import resume_command
from rewind_checkpoint.server import serve as serve_checkpoints
from tests.support.browser import chromium, console_errors, full_page_png, grant_clipboard, read_clipboard
from tests.support.configs import checkpoint_config

REPO = Path(__file__).resolve().parents[2]
COLUMNS = "step,episode,kind,episode_return,episode_steps,steps_per_s"
ACTION_REPEAT = 2


def stamp(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def curve_value(step: int, wiggle: float) -> float:
    """A Pendulum-like learning curve: from about -1400 towards -150, with a deterministic wiggle."""
    return round(-1400 + 1250 * (1 - math.exp(-step / 1500)) + 60 * math.sin(step * wiggle), 2)


def metrics_csv(last_step: int, episode_steps: int = 100, eval_every: int = 500) -> tuple[str, int, int]:
    """(metrics.csv, train rows, eval rows) up to last_step."""
    lines, train, evals = [COLUMNS], 0, 0
    for step in range(episode_steps, last_step + 1, episode_steps):
        episode = step // episode_steps
        lines.append(f"{step},{episode},train,{curve_value(step, 0.013)},{episode_steps},{48 + step % 7}")
        train += 1
        if step % eval_every == 0:
            lines.append(f"{step},{episode},eval,{curve_value(step, 0.002) + 40},,")
            evals += 1
    return "\n".join(lines) + "\n", train, evals


def status(state: str, step: int, **fields) -> bytes:
    return json.dumps({"format": "rewind.run-status/1", "state": state, "started": stamp(-900), "updated": stamp(),
                       "heartbeat_interval_s": 30, "step": step, "episode": step // 100, "steps": 4000,
                       "task": "Pendulum-v1", "action_repeat": ACTION_REPEAT, "agent_id": "tdmpc2",
                       "resumed_from": "", "checkpoint": "", "steps_per_s": 51.5, "episode_return": -180.0,
                       "eval_return": -160.0, "exit_code": None, "message": "", **fields}).encode()


def store_folder(tmp_path: Path) -> Path:
    """The test's store; for the README's screenshots, one with a short name (the pages show it)."""
    if os.environ.get("REWIND_SCREENSHOTS") != "1":
        return tmp_path / "store"
    folder = Path(tempfile.gettempdir()) / "rewind-demo" / "rewind-data"
    shutil.rmtree(folder.parent, ignore_errors=True)
    return folder


@pytest.fixture
def service(tmp_path):
    """A checkpoint service with three runs: one finished, one resumed from it and running, one silent."""
    store = f"file://{store_folder(tmp_path)}"
    host = serve_checkpoints(checkpoint_config(store))
    settings = {"local_services": True, "store": store, "task": "Pendulum-v1", "action_repeat": ACTION_REPEAT}
    config = {"settings": settings, "agent_config": {"horizon": 3, "num_samples": 512}}
    with CheckpointClient(host.address, timeout=20) as client:
        client.set_retention("tdmpc2", "pendulum-seed1", keep_last=0)

        def save(run: str, step: int, **kwargs):
            return client.save("tdmpc2", run, step, {"model.pt": os.urandom(40_000 + step), "optim.pt": b"o" * step},
                               episode=step // 100, config=config,
                               metrics={"eval_return": curve_value(step, 0.002) + 40}, **kwargs).checkpoint

        first = [save("pendulum-seed1", step) for step in (1000, 2000, 3000, 4000)]
        second = [save("pendulum-seed2", step, resumed_from=first[-1].path) for step in (5000, 6000)]
        save("walker-seed1", 500)
        text, train_rows, eval_rows = metrics_csv(4000)
        client.put_run_file("tdmpc2", "pendulum-seed1", "metrics.csv", text.encode())
        client.put_run_file("tdmpc2", "pendulum-seed1", "status.json", status("finished", 4000, exit_code=0))
        client.put_run_file("tdmpc2", "pendulum-seed2", "metrics.csv", metrics_csv(6000)[0].encode())
        client.put_run_file("tdmpc2", "pendulum-seed2", "status.json",
                            status("running", 6000, resumed_from=first[-1].path, steps=8000))
        client.put_run_file("tdmpc2", "walker-seed1", "status.json",
                            status("running", 500, updated=stamp(-600), task="walker-walk"))
    yield {"host": host, "base": f"http://127.0.0.1:{host.http_port}", "first": first, "second": second,
           "settings": settings, "train_rows": train_rows, "eval_rows": eval_rows}
    host.stop(grace_s=0.5)


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def screenshots(tmp_path: Path) -> Path:
    return REPO / "docs" / "images" if os.environ.get("REWIND_SCREENSHOTS") == "1" else tmp_path


def points(d: str) -> int:
    """How many points an SVG path's `d` draws (M and L commands)."""
    return len(re.findall(r"[ML]\s*-?[\d.]+\s*,\s*-?[\d.]+", d))


def test_history_pages_in_chromium(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, first = service["base"], service["first"]
    browser.get(base + "/")
    rows = {(r.get_attribute("data-agent"), r.get_attribute("data-run")): r
            for r in browser.find_elements(By.CSS_SELECTOR, "table#runs tbody tr")}
    assert set(rows) == {("tdmpc2", "pendulum-seed1"), ("tdmpc2", "pendulum-seed2"), ("tdmpc2", "walker-seed1")}
    cells = [c.text for c in rows["tdmpc2", "pendulum-seed1"].find_elements(By.TAG_NAME, "td")]
    assert cells[:5] == ["tdmpc2", "pendulum-seed1", "finished", "Pendulum-v1", "4,000"]
    assert cells[6] == "4"
    assert rows["tdmpc2", "walker-seed1"].find_element(By.CSS_SELECTOR, ".badge").text == "failed"
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366  # no sideways scrolling
    full_page_png(browser, screenshots(tmp_path) / "history-runs.png")
    assert console_errors(browser) == []

    rows["tdmpc2", "pendulum-seed1"].find_element(By.CSS_SELECTOR, "a.run-link").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/runs/tdmpc2/pendulum-seed1"))
    listed = [(r.get_attribute("data-step"), r.get_attribute("data-path"))
              for r in browser.find_elements(By.CSS_SELECTOR, "table#checkpoints tbody tr")]
    assert sorted(listed) == sorted((str(c.step), c.path) for c in first)  # exactly the committed ones
    commands = {r.get_attribute("data-step"): r.find_element(By.CSS_SELECTOR, ".command code").text
                for r in browser.find_elements(By.CSS_SELECTOR, "table#checkpoints tbody tr")}
    assert commands == {str(c.step): resume_command(service["settings"], c.path) for c in first}

    curve = browser.find_element(By.CSS_SELECTOR, "svg#learning-curve")
    drawn = {p.get_attribute("data-kind"): points(p.get_attribute("d"))
             for p in curve.find_elements(By.CSS_SELECTOR, "path[data-kind]")}
    assert drawn == {"train": service["train_rows"], "eval": service["eval_rows"]}
    assert curve.size["width"] > 800 and curve.size["height"] > 250  # drawn, and at a readable size
    assert {"environment steps", "episode return", "evaluation return", "training episode return"} <= set(
        t.get_attribute("textContent") for t in curve.find_elements(By.TAG_NAME, "text"))
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366
    full_page_png(browser, screenshots(tmp_path) / "history-run.png")

    grant_clipboard(browser, base)
    target = first[1]
    button = browser.find_element(By.CSS_SELECTOR, f'tr[data-step="{target.step}"] button.copy')
    button.click()
    WebDriverWait(browser, 10).until(lambda d: button.text in ("Copied", "Select and copy"))
    assert button.text == "Copied"
    assert read_clipboard(browser) == resume_command(service["settings"], target.path)
    assert console_errors(browser) == []


def test_lineage_and_checkpoint_pages(service, browser):
    from selenium.webdriver.common.by import By

    base, first, second = service["base"], service["first"], service["second"]
    browser.get(base + "/runs/tdmpc2/pendulum-seed2")
    links = browser.find_elements(By.CSS_SELECTOR, "ul.lineage li a")
    assert [(a.text, a.get_attribute("href")) for a in links] == [
        ("tdmpc2/pendulum-seed1", base + "/runs/tdmpc2/pendulum-seed1")]
    assert first[-1].path in browser.find_element(By.CSS_SELECTOR, "ul.lineage").text
    browser.find_element(By.CSS_SELECTOR, f'tr[data-step="{second[0].step}"] td a').click()
    assert browser.find_element(By.ID, "path").text == second[0].path
    files = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
             for r in browser.find_elements(By.CSS_SELECTOR, "table#files tbody tr")]
    assert [(f[0], f[2]) for f in files] == [(f.name, f.sha256) for f in second[0].files]
    assert console_errors(browser) == []


def test_unknown_run_is_a_404_page(service, browser):
    from selenium.webdriver.common.by import By

    base = service["base"]
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(urllib.request.Request(base + "/runs/tdmpc2/nope", headers={"Accept": "text/html"}))
    assert answer.value.code == 404 and answer.value.headers["content-type"].startswith("text/html")
    browser.get(base + "/runs/tdmpc2/nope")
    error = browser.find_element(By.ID, "error")
    assert (error.get_attribute("data-status"), browser.find_element(By.TAG_NAME, "h1").text) == ("404", "Not found")
    assert "no run tdmpc2/nope" in error.text
    browser.get(base + "/runs/tdmpc2/pendulum-seed1/checkpoints/1234")
    assert "committed steps: 1000, 2000, 3000, 4000" in browser.find_element(By.ID, "error").text
    browser.get(base + "/no/such/page")  # a route the app does not have: the host's error, as the same page
    assert browser.find_element(By.ID, "error").get_attribute("data-status") == "404"
    # The only console entries are the 404 answers themselves.
    assert all("404" in entry["message"] for entry in console_errors(browser))


def test_ckpt_web_serves_a_store_with_no_service(service, browser, tmp_path):
    """`rewind ckpt web --store URL`: the same pages and API, read straight from the store by a process of its own."""
    from selenium.webdriver.common.by import By

    store = service["host"].bindings[0].servicer.catalog.store.url
    before = json.loads(urllib.request.urlopen(service["base"] + "/api/training-runs/tdmpc2/pendulum-seed1").read())
    service["host"].stop(grace_s=0.5)
    log = open(tmp_path / "web.log", "wb")  # closed below
    web = subprocess.Popen([sys.executable, "-m", "rewind_cli", "ckpt", "web", "--store", store, "--http-port", "0"],
                           stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = web.stdout.readline()  # printed once the port listens
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match and f"training history of {store}" in line, line
        base = match.group(1)
        after = json.loads(urllib.request.urlopen(base + "/api/training-runs/tdmpc2/pendulum-seed1").read())
        assert after == before
        browser.get(base + "/runs/tdmpc2/pendulum-seed1")
        rows = browser.find_elements(By.CSS_SELECTOR, "table#checkpoints tr[data-step]")
        steps = [r.get_attribute("data-step") for r in rows]
        assert steps == ["4000", "3000", "2000", "1000"]
        assert console_errors(browser) == []
        web.send_signal(signal.SIGTERM)
        assert web.wait(timeout=30) == 0
    finally:
        if web.poll() is None:
            web.kill()
            web.wait()
        web.stdout.close()
        log.close()
    missing = subprocess.run([sys.executable, "-m", "rewind_cli", "ckpt", "web", "--store", str(tmp_path / "none"),
                              "--http-port", "0"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert f"checkpoint_dir: {tmp_path / 'none'} does not exist" in missing.stderr
