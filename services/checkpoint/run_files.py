"""A run's history files (PutRunFile, GetRunFile): status.json and metrics.csv under <agent>/<run>/history/.

The trainer uploads them; the history pages and API read them. Each is
checked before it is stored (a refused upload leaves the stored file as it
was) and replaced atomically, so a reader sees the old or the new file whole.
"""

from __future__ import annotations

import json

from rewind.errors import InvalidArgument, NotFound
from rewind.run_history import METRICS_FILE, STATES, STATUS_FILE, rfc3339
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.layout import RunKey
from rewind_checkpoint.store import ObjectMissing, Store

# A status is a few hundred bytes; the metrics of a long run (one row per episode and per evaluation) a few MiB.
MAX_BYTES = {STATUS_FILE: 64 * 1024, METRICS_FILE: 32 * 1024 * 1024}


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def check_content(name: str, content: bytes) -> None:
    """A run file must be what its readers expect.

    Raises:
        InvalidArgument: naming `content`: over the size limit, not UTF-8, a
            status that is not a JSON object with a known `state`, or metrics
            without a header row that starts with `step`.
    """
    limit = MAX_BYTES[name]
    if len(content) > limit:
        raise InvalidArgument(f"content: {len(content)} bytes is over the {_mib(limit)} limit of {name}")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"content: {name} is not UTF-8 text (byte {exc.start})") from None
    if name == STATUS_FILE:
        _check_status(text)
    else:
        header = text.split("\n", 1)[0].strip()
        if header.split(",", 1)[0] != "step":
            raise InvalidArgument(f"content: {name} must start with a header row whose first column is step, "
                                  f"got {header[:80]!r}")


def _check_status(text: str) -> None:
    try:
        status = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"content: {STATUS_FILE} is not JSON ({exc})") from None
    if not isinstance(status, dict):
        raise InvalidArgument(f"content: {STATUS_FILE} must be a JSON object, got {type(status).__name__}")
    state = status.get("state")
    if state not in STATES:
        shown = repr(state)[:64]
        raise InvalidArgument(f"content: {STATUS_FILE}'s state is {shown}; expected one of {', '.join(STATES)}")


def put_run_file(catalog: Catalog, run: RunKey, name: str, content: bytes) -> str:
    """Check and store a run file (replacing the old one atomically); returns its full location.

    The catalog's listeners (the history index) are told the run changed.

    Raises:
        InvalidArgument: a bad name or content (nothing is written).
    """
    key = run.history_key(name)  # checks the name first
    check_content(name, content)
    with catalog.run_lock(run):
        catalog.store.put(key, content)
        catalog.notify("run_changed", run)
    return catalog.store.location(key)


def get_run_file(store: Store, run: RunKey, name: str) -> tuple[bytes, str]:
    """A run file's bytes and when it was written (RFC 3339 UTC).

    Raises:
        InvalidArgument: a bad name.
        NotFound: no such run, or the run has no such file (yet).
    """
    key = run.history_key(name)
    found = [o for o in store.list(key) if o.key == key]
    if found:
        try:
            return store.get(key), rfc3339(found[0].modified)
        except ObjectMissing:
            pass  # removed since the listing (a store cleaned by hand): missing
    if run.run_id not in store.list_dirs(f"{run.agent_id}/"):
        raise NotFound(f"run_id: no run {run} in {store.url}; `rewind ckpt ls` lists the runs")
    raise NotFound(f"name: run {run} has no {name} yet; its trainer uploads it with each checkpoint and every "
                   "heartbeat_interval_s (a trainer older than this service uploads none)")

