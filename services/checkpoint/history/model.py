"""The training-history read model: runs, their checkpoints, lineage and metrics, as plain JSON-ready dicts.

The API returns these dicts as they are and the pages render them, so both
always show the same thing. Everything comes from the store, through the
RunIndex's cache: status.json and metrics.csv (which the trainer uploads), the
manifests and retention.json.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from rewind.commands import resume_command
from rewind.errors import InvalidArgument, NotFound
from rewind.run_history import METRICS_FILE, STATES
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.history.index import RunIndex, RunView
from rewind_checkpoint.layout import CheckpointKey, RunKey, check_id, check_step, parse_step_dir
from rewind_checkpoint.manifest import Manifest
from rewind_checkpoint.retention import RetentionPolicy, commit_order, rank_best
from rewind_checkpoint.store import ObjectMissing

log = logging.getLogger(__name__)

DEFAULT_METRIC = "eval_return"  # what "best" means for a run whose retention policy names no metric
MAX_LINEAGE = 32  # runs followed back through resumed_from; a longer chain is cut (and said so)
RUN_THREADS = 8  # runs refreshed at once for the runs list
HEARTBEATS_MISSED = 3  # a running run silent for this many heartbeat intervals has failed
# metrics.csv's counters (services/trainer/metrics.py); every other column but kind is a float.
INT_COLUMNS = frozenset({"step", "episode", "episode_steps"})
UNKNOWN = "unknown"  # the state of a run without status.json (saved by `rewind ckpt save`, or an older trainer)


def run_url(run: RunKey) -> str:
    return f"/api/training-runs/{run.agent_id}/{run.run_id}"


def page_url(run: RunKey, step: int | None = None) -> str:
    return f"/runs/{run.agent_id}/{run.run_id}" + ("" if step is None else f"/checkpoints/{step}")


def parse_time(text: Any) -> float | None:
    """RFC 3339 UTC (as rewind.run_history.rfc3339 writes it) -> epoch seconds; None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def run_state(status: dict[str, Any] | None, now: float) -> tuple[str, str]:
    """(state, why) of a run from its status.json.

    "running" with no heartbeat for HEARTBEATS_MISSED intervals is "failed": a trainer
    that is killed (OOM, node lost) writes no final status.
    """
    if status is None:
        return UNKNOWN, "no status.json: the run's trainer uploads none (rewind ckpt save, or an older trainer)"
    state = status.get("state")
    if state not in STATES:
        return UNKNOWN, f"status.json has state {str(state)[:40]!r}"
    message = str(status.get("message") or "")
    if state == "running":
        interval = _number(status.get("heartbeat_interval_s")) or 0.0
        updated = parse_time(status.get("updated"))
        if interval > 0 and updated is not None and now - updated > HEARTBEATS_MISSED * interval:
            return "failed", f"no heartbeat since {status['updated']} (the trainer reports every {interval:g}s)"
    return state, message


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_step(text: str | int, field: str = "step") -> int:
    """A step as the URL gives it: 5000 or step-0000005000.

    Raises:
        InvalidArgument: naming `field`.
    """
    if isinstance(text, int):
        return check_step(text, field)
    step = parse_step_dir(text)
    if step is None:
        if not text.isdigit() or len(text) > 12:
            raise InvalidArgument(f"{field}: {text[:40]!r} is not a step; give a number or step-0000005000")
        step = int(text)
    return check_step(step, field)


class History:
    """Runs, checkpoints, lineage and metrics of one store.

    Args:
        catalog: the store's checkpoints.
        index: the manifest cache (default: a new one registered on the catalog).
        clock: epoch seconds, for the stale-heartbeat rule (tests move it).
    """

    def __init__(self, catalog: Catalog, index: RunIndex | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.index = index or RunIndex(catalog)
        self.clock = clock

    @property
    def store_url(self) -> str:
        return self.catalog.store.url

    def _view(self, agent_id: str, run_id: str) -> RunView:
        return self.index.view(RunKey.checked(agent_id, run_id))

    # -- runs ------------------------------------------------------------------

    def runs(self, agent_id: str = "") -> list[dict[str, Any]]:
        """Every run's summary (or one agent's), by agent then run id."""
        agent_id = check_id(agent_id, "agent_id") if agent_id else ""

        def one(run: RunKey) -> dict[str, Any] | None:
            try:
                return self.summary(self.index.view(run))
            except NotFound:
                return None  # removed since the listing

        runs = self.index.run_keys(agent_id)
        # Runs whose cache expired are read again side by side: each is a few S3 requests.
        with ThreadPoolExecutor(max(1, min(RUN_THREADS, len(runs))), thread_name_prefix="rewind-runs") as pool:
            return [s for s in pool.map(one, runs) if s is not None]

    def agent_of(self, run_id: str) -> str:
        """The agent whose run is `run_id`, for seed 003's /api/training-runs/{run_id}.

        Raises:
            InvalidArgument: a malformed id, or one that several agents use (naming them).
            NotFound: no agent has such a run.
        """
        run_id = check_id(run_id, "run_id")
        agents = sorted(r.agent_id for r in self.index.run_keys("") if r.run_id == run_id)
        if not agents:
            raise NotFound(f"run_id: no run {run_id!r} in {self.store_url}; GET /api/training-runs lists them")
        if len(agents) > 1:
            raise InvalidArgument(f"run_id: {run_id!r} is a run of {len(agents)} agents ({', '.join(agents[:5])}); "
                                  f"name one: /api/training-runs/{agents[0]}/{run_id}")
        return agents[0]

    def summary(self, view: RunView) -> dict[str, Any]:
        """What the runs list shows of a run."""
        state, why = run_state(view.status, self.clock())
        latest = view.manifests[-1] if view.manifests else None
        status = view.status or {}
        return {
            "agent_id": view.run.agent_id,
            "run_id": view.run.run_id,
            "state": state,
            "state_message": why,
            "task": status.get("task") or _setting(latest, "task"),
            "latest_step": latest.step if latest else None,
            "latest_episode": latest.episode if latest else None,
            "best": self._best(view),
            "checkpoints": len(view.manifests),
            "total_bytes": sum(m.total_bytes for m in view.manifests),
            "last_commit": latest.created if latest else None,
            "updated": status.get("updated"),
            "url": run_url(view.run),
            "page": page_url(view.run),
        }

    def _best(self, view: RunView) -> dict[str, Any] | None:
        """The best checkpoint by the retention policy's metric (else eval_return, higher is better)."""
        policy = view.retention
        metric, mode = (policy.metric, policy.mode) if policy.metric else (DEFAULT_METRIC, "max")
        ranked = rank_best(view.manifests, metric, mode)
        if not ranked:
            return None
        best = ranked[0]
        return {"metric": metric, "mode": mode, "value": best.metrics[metric], "step": best.step,
                "path": self.catalog.path(best.key)}

    def run(self, agent_id: str, run_id: str) -> dict[str, Any]:
        """A run's summary, status, checkpoints (with seed 003's checkpoint_paths), lineage, policy and config.

        Raises:
            InvalidArgument: a malformed id (naming agent_id or run_id).
            NotFound: the store holds nothing of the run.
        """
        view = self._view(agent_id, run_id)
        latest = view.manifests[-1] if view.manifests else None
        checkpoints = [self._row(m) for m in view.manifests]
        return {
            **self.summary(view),
            "store": self.store_url,
            "status": view.status,
            "action_repeat": _action_repeat(view),
            "checkpoint_paths": [{"episode": c["episode"], "step": c["step"], "path": c["path"]}
                                 for c in checkpoints],
            "checkpoints": checkpoints,
            "resumed_from": _origin(view, self.catalog),
            "lineage": self.lineage(view),
            "retention": _policy(view.retention),
            "config": latest.config if latest else {},
            "problems": list(view.problems),
            "metrics_url": run_url(view.run) + "/metrics",
        }

    def _row(self, m: Manifest) -> dict[str, Any]:
        path = self.catalog.path(m.key)
        return {"step": m.step, "episode": m.episode, "created": m.created, "total_bytes": m.total_bytes,
                "files": len(m.files), "metrics": m.metrics, "path": path, "resumed_from": m.resumed_from,
                "resume_command": _resume_command(m, path),
                "url": f"{run_url(m.key.run)}/checkpoints/{m.step}", "page": page_url(m.key.run, m.step)}

    # -- one checkpoint ----------------------------------------------------------

    def checkpoint(self, agent_id: str, run_id: str, step: str | int) -> dict[str, Any]:
        """One checkpoint: files (size, sha256), metrics, config, extra, buffers, versions, lineage and retention.

        Raises:
            InvalidArgument: a malformed id or step (naming it).
            NotFound: no such run, or no committed checkpoint at that step (listing the ones there are).
        """
        run = RunKey.checked(agent_id, run_id)
        number = parse_step(step)
        view = self.index.view(run)
        m = view.by_step(number)
        if m is None:
            shown = ", ".join(str(c.step) for c in view.manifests[-10:]) or "none"
            raise NotFound(f"step: {CheckpointKey(run, number)} has no committed checkpoint "
                           f"(committed steps: {shown})")
        return {
            **self._row(m),
            "agent_id": m.agent_id, "run_id": m.run_id,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in m.files],
            "buffers": [{"buffer": b.buffer, "file": b.file, "address": b.address,
                         "episodes_added": b.episodes_added, "versions": b.versions, "format": b.format,
                         "blocks": len(b.blocks), "block_bytes": sum(k.size for k in b.blocks)}
                        for b in m.buffers],
            "versions": m.versions,
            "config": m.config, "extra": m.extra,
            "lineage": self._chain(m.resumed_from, {run}),
            "retention": {**_policy(view.retention), **_kept_by(view, m)},
            "run_url": run_url(run), "run_page": page_url(run),
        }

    # -- lineage -----------------------------------------------------------------

    def lineage(self, view: RunView) -> list[dict[str, Any]]:
        """The runs this run descends from, nearest first: [{agent_id, run_id, step, path, ...}]."""
        return self._chain(_origin(view, self.catalog), {view.run})

    def _chain(self, path: str, seen: set[RunKey]) -> list[dict[str, Any]]:
        """Follow resumed_from from `path` back through other runs; stops at a cycle or MAX_LINEAGE."""
        chain: list[dict[str, Any]] = []
        while path:
            link = self._link(path)
            chain.append(link)
            if "error" in link:
                break
            run = RunKey(link["agent_id"], link["run_id"])
            if run in seen:
                link["cycle"] = True  # a run already in the chain: stop, rather than loop
                break
            if len(chain) >= MAX_LINEAGE:
                link["truncated"] = True
                break
            seen.add(run)
            try:
                path = _origin(self.index.view(run), self.catalog)
            except NotFound:
                break
        return chain

    def _link(self, path: str) -> dict[str, Any]:
        """One resumed_from path: the run and step it names, and whether that checkpoint still exists."""
        try:
            key, _file = self.catalog.resolve_path(path)
        except InvalidArgument as exc:
            return {"path": path, "error": exc.message}  # another store, or not a checkpoint path
        try:
            exists = self.index.view(key.run).by_step(key.step) is not None
        except NotFound:
            exists = False
        return {"agent_id": key.run.agent_id, "run_id": key.run.run_id, "step": key.step,
                "path": self.catalog.path(key), "exists": exists,
                "url": run_url(key.run), "page": page_url(key.run)}

    # -- metrics -------------------------------------------------------------------

    def metrics(self, agent_id: str, run_id: str) -> dict[str, Any]:
        """The run's metrics.csv as rows of numbers, each with env_step = step x action_repeat.

        Raises:
            InvalidArgument: a malformed id.
            NotFound: no such run (a run without metrics.csv has no rows).
        """
        view = self._view(agent_id, run_id)
        repeat = _action_repeat(view)
        try:
            text = self.catalog.store.get(view.run.history_key(METRICS_FILE)).decode("utf-8", "replace")
        except ObjectMissing:
            text = ""
        columns, rows = parse_metrics(text, repeat)
        return {"agent_id": view.run.agent_id, "run_id": view.run.run_id, "action_repeat": repeat,
                "columns": columns, "rows": rows}


def parse_metrics(text: str, action_repeat: int) -> tuple[list[str], list[dict[str, Any]]]:
    """metrics.csv -> (columns, rows): numbers as numbers, empty cells as None, env_step added.

    Rows whose step is not a number are skipped (a line cut by a crash mid-write).
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    rows = []
    for cells in reader:
        if len(cells) != len(header):
            continue
        row: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            row[name] = cell if name == "kind" else _cell(cell, name in INT_COLUMNS)
        if not isinstance(row.get("step"), int):
            continue
        row["env_step"] = row["step"] * action_repeat
        rows.append(row)
    return [*header, "env_step"] if header else [], rows


def _cell(text: str, integer: bool) -> int | float | str | None:
    if text == "":
        return None
    if integer:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else None  # JSON has no NaN


def _setting(manifest: Manifest | None, name: str) -> Any:
    settings = manifest.config.get("settings") if manifest else None
    return settings.get(name) if isinstance(settings, dict) else None


def _action_repeat(view: RunView) -> int:
    """Environment steps per agent step: from status.json, else the newest checkpoint's settings, else 1."""
    for value in ((view.status or {}).get("action_repeat"),
                  _setting(view.manifests[-1] if view.manifests else None, "action_repeat")):
        # A manifest's config went through a protobuf Struct, where every number is a float.
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 1 and value == int(value):
            return int(value)
    return 1


def _origin(view: RunView, catalog: Catalog) -> str:
    """The checkpoint of another run this run started from: the oldest checkpoint's resumed_from that
    points outside the run, else status.json's (a run resumed from another that has not committed yet)."""
    candidates = [m.resumed_from for m in view.manifests] + [str((view.status or {}).get("resumed_from") or "")]
    for path in candidates:
        if not path:
            continue
        try:
            key, _ = catalog.resolve_path(path)
        except InvalidArgument:
            return path  # not this store's: shown as it is
        if key.run != view.run:
            return path
    return ""


def _resume_command(m: Manifest, path: str) -> str:
    settings = m.config.get("settings")
    return resume_command(settings if isinstance(settings, dict) else {}, path)


def _policy(policy: RetentionPolicy) -> dict[str, Any]:
    return {"keep_last": policy.keep_last, "keep_every": policy.keep_every, "keep_best": policy.keep_best,
            "metric": policy.metric, "mode": policy.mode}


def _kept_by(view: RunView, m: Manifest) -> dict[str, Any]:
    """Which of the policy's rules keep this checkpoint now (as retention.to_delete decides)."""
    policy = view.retention
    if policy.keeps_everything:
        return {"kept_by": ["keep_last=0"], "note": "retention is off: every checkpoint is kept"}
    ordered = commit_order(view.manifests)
    rules = []
    if m in ordered[-policy.keep_last:]:
        rules.append("keep_last")
    if policy.keep_every and m.step % policy.keep_every == 0:
        rules.append("keep_every")
    if policy.keep_best and m in rank_best(ordered, policy.metric, policy.mode)[:policy.keep_best]:
        rules.append("keep_best")
    note = "" if rules else "no rule keeps it: retention deletes it after the run's next commit"
    return {"kept_by": rules, "note": note}
