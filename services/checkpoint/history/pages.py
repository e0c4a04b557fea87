"""The training-history pages: server-rendered HTML (Jinja2) over the same read model as the API.

    /                                        the runs list
    /runs/{agent_id}/{run_id}                a run: learning curve, checkpoints with resume commands, lineage
    /runs/{agent_id}/{run_id}/checkpoints/{step}
    /static/history/{style.css,history.js}   the only assets (no CDN, no web fonts: it works offline)

A page route renders its own HTML error page for a RewindError (an unknown run
is a 404 page, a malformed id a 400 page), where the API's routes leave errors
to the host's JSON handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from rewind.errors import RewindError
from rewind_checkpoint.history.curve import learning_curve
from rewind_checkpoint.history.model import History
from rewind_runtime.http import http_status

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = {"style.css": "text/css; charset=utf-8", "history.js": "text/javascript; charset=utf-8"}


def size(n: int | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def number(value: Any) -> str:
    """A metric for people: 4 significant digits, thousands separated for integers."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def when(stamp: str | None) -> str:
    """An RFC 3339 UTC time, shortened to the second: 2026-11-30 07:23:14 UTC."""
    if not stamp:
        return "-"
    return stamp.replace("T", " ")[:19] + " UTC" if stamp.endswith("Z") else stamp


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(size=size, number=number, when=when,
                       pretty=lambda value: json.dumps(value, indent=2, sort_keys=True))
    return env


class Pages:
    """The pages over `history`: `router()` for the app, `error_page` for the HTTP host's browser errors."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.env = environment()

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = self.env.get_template(template).render(store=self.history.store_url, **context)
        return HTMLResponse(page, status_code=status)

    def error_page(self, request: Request | None, status: int, code: str, message: str) -> HTMLResponse:
        """The HTML error page (HttpHost.error_page's signature: a browser gets it instead of JSON)."""
        return self.render("error.html", status=status, code=code, message=message, status_code=status)

    def page(self, template: str, build: Callable[[], dict[str, Any]]) -> HTMLResponse:
        """Render `template` with what `build` reads, or the error page for the RewindError it raises."""
        try:
            return self.render(template, **build())
        except RewindError as exc:
            status = http_status(exc.code)
            if status >= 500:
                log.warning("history page failed: %s", exc)
            return self.error_page(None, status, exc.code.name, exc.message)

    def router(self) -> APIRouter:
        """The pages' routes."""
        pages = APIRouter(include_in_schema=False)
        history = self.history

        @pages.get("/", response_class=HTMLResponse)
        def runs_page(agent_id: str = "") -> HTMLResponse:
            return self.page("runs.html", lambda: {"runs": history.runs(agent_id), "agent_id": agent_id})

        @pages.get("/training", include_in_schema=False)
        def seed_address() -> RedirectResponse:
            return RedirectResponse("/", status_code=307)  # where seed 003's Training History page was

        @pages.get("/runs/{agent_id}/{run_id}", response_class=HTMLResponse)
        def run_page(agent_id: str, run_id: str) -> HTMLResponse:
            def build() -> dict[str, Any]:
                run = history.run(agent_id, run_id)
                rows = history.metrics(agent_id, run_id)["rows"]
                return {"run": run, "curve": learning_curve(rows), "metric_rows": len(rows)}

            return self.page("run.html", build)

        @pages.get("/runs/{agent_id}/{run_id}/checkpoints/{step}", response_class=HTMLResponse)
        def checkpoint_page(agent_id: str, run_id: str, step: str) -> HTMLResponse:
            return self.page("checkpoint.html", lambda: {"c": history.checkpoint(agent_id, run_id, step)})

        @pages.get("/runs/{rest:path}", response_class=HTMLResponse)
        def unknown_page(rest: str) -> HTMLResponse:
            return self.error_page(None, 404, "NOT_FOUND", f"/runs/{rest} is not a page; runs are at /runs/AGENT/RUN")

        @pages.get("/static/history/{name}")
        def static(name: str) -> Response:
            if name not in STATIC:
                return Response("not found", status_code=404, media_type="text/plain")
            # Read per request: two small files, and never a stale copy after an upgrade.
            return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})

        return pages
