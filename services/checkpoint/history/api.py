"""The training-history JSON API (a FastAPI router): runs, one run, one checkpoint, a run's metrics.

    GET /api/training-runs?agent_id=A                      {"runs": [summary, ...]}
    GET /api/training-runs/{agent_id}/{run_id}             a run, with checkpoint_paths [{episode, step, path}]
    GET /api/training-runs/{run_id}                        the same, when one agent has that run id (seed 003)
    GET /api/training-runs/{agent_id}/{run_id}/checkpoints/{step}
    GET /api/training-runs/{agent_id}/{run_id}/metrics     {"columns": [...], "rows": [...]}

Errors are RewindErrors, left to the HTTP host's app-wide handler, which answers
`{"error": {"code", "message"}}` with the HTTP status of the gRPC one (a bad id
400 naming the field, an unknown run or step 404).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from rewind_checkpoint.history.model import History

# Path parameters are plain strings: the model checks them with the store's own id rules,
# so a bad one is a 400 naming its field, like on gRPC (FastAPI's own checks answer 422).
AGENT = Path(description="the agent id (as in the store: <agent_id>/<run_id>/...)")
RUN = Path(description="the run id")
STEP = Path(description="the training step: 5000 or step-0000005000")


class CheckpointPath(BaseModel):
    """Seed 003's entry of a run's checkpoint_paths."""

    episode: int
    step: int
    path: str


class Best(BaseModel):
    """The best checkpoint by the retention policy's metric (else eval_return, higher is better)."""

    metric: str
    mode: str
    value: float
    step: int
    path: str


class RunSummary(BaseModel):
    """One run in the runs list."""

    agent_id: str
    run_id: str
    state: str  # running, finished, stopped, preempted, failed (also: running with no heartbeat), or unknown
    state_message: str
    task: str | None
    latest_step: int | None
    latest_episode: int | None
    best: Best | None
    checkpoints: int
    total_bytes: int
    last_commit: str | None  # RFC 3339 UTC
    updated: str | None  # status.json's last heartbeat
    url: str  # this API's URL of the run
    page: str  # the run's HTML page


class RunList(BaseModel):
    runs: list[RunSummary]


class RunDetail(RunSummary):
    """A run: its summary, plus checkpoints, lineage, retention and config."""

    store: str
    checkpoint_paths: list[CheckpointPath]
    checkpoints: list[dict[str, Any]]  # type: ignore[assignment]  # the list here, the count in a summary
    status: dict[str, Any] | None  # status.json as the trainer wrote it
    action_repeat: int
    resumed_from: str
    lineage: list[dict[str, Any]]  # [{agent_id, run_id, step, path, exists, url, page}], nearest first
    retention: dict[str, Any]
    config: dict[str, Any]
    problems: list[str]
    metrics_url: str


def _json(body: Any) -> Response:
    # Serialised once with the standard library: FastAPI's own encoder walks every value of a
    # 1,000-checkpoint run in Python and costs more than reading it (bench/history.py).
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def router(history: History) -> APIRouter:
    """The API's routes over `history` (the store's runs)."""
    api = APIRouter(prefix="/api/training-runs", tags=["training history"])
    # Plain (not async) handlers: FastAPI runs them in its worker threads, so an S3 GET never holds the loop.

    @api.get("", summary="List training runs", response_model=RunList)
    def list_runs(agent_id: str = Query("", description="only this agent's runs")) -> Response:
        return _json({"runs": history.runs(agent_id)})

    @api.get("/{run_id}", summary="One training run, by its run id alone (seed 003's form)",
             response_model=RunDetail)
    def get_run_by_id(run_id: str = RUN) -> Response:
        return _json(history.run(history.agent_of(run_id), run_id))

    @api.get("/{agent_id}/{run_id}", summary="One training run", response_model=RunDetail)
    def get_run(agent_id: str = AGENT, run_id: str = RUN) -> Response:
        return _json(history.run(agent_id, run_id))

    @api.get("/{agent_id}/{run_id}/checkpoints/{step}", summary="One checkpoint of a run")
    def get_checkpoint(agent_id: str = AGENT, run_id: str = RUN, step: str = STEP) -> Response:
        return _json(history.checkpoint(agent_id, run_id, step))

    @api.get("/{agent_id}/{run_id}/metrics", summary="A run's metrics history (metrics.csv)")
    def get_metrics(agent_id: str = AGENT, run_id: str = RUN) -> Response:
        return _json(history.metrics(agent_id, run_id))

    return api
