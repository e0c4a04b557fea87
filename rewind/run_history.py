"""A run's history in the store: its file names, the status it reports, and the store's timestamps.

    <store>/<agent_id>/<run_id>/history/status.json   the trainer's state and heartbeat (STATUS_FORMAT)
    <store>/<agent_id>/<run_id>/history/metrics.csv   one row per training episode and per evaluation

The trainer writes these files (PutRunFile), the checkpoint service checks and
stores them, and its history pages read them; this module is what all three agree on.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
RUN_FILES = (STATUS_FILE, METRICS_FILE)
STATUS_FORMAT = "rewind.run-status/1"
# What a run's status.json may say: running, or how the run ended.
STATES = ("running", "finished", "stopped", "preempted", "failed")


def rfc3339(epoch_s: float) -> str:
    """UTC with microseconds (2026-11-30T07:23:14.123456Z): the order of these strings is the order in time."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    """The time now as rfc3339() writes it (manifests' `created`, status.json's `started` and `updated`)."""
    return rfc3339(time.time())
