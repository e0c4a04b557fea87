"""rewind.list_checkpoints(): a store's checkpoints, read straight from the store with no service running.

    import rewind
    for path in rewind.list_checkpoints(checkpoint_dir="rewind-data", run_id="pendulum-v1-seed1", agent_id="tdmpc2"):
        print(path)        # works unchanged as --resume-from-checkpoint

The checkpoint package provides this function to the SDK's namespace through
the `rewind.api` entry point (see pyproject.toml).
"""

from __future__ import annotations

from rewind.errors import NotFound
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.layout import check_id
from rewind_checkpoint.store import FileStore, Store, open_store


def open_existing_store(location: str) -> Store:
    """The store a folder, file:// or s3:// URL names, which must exist (nothing is created).

    Raises:
        NotFound: a folder that does not exist.
        InvalidArgument: an unsupported URL.
    """
    store = open_store(location, create=False)
    if isinstance(store, FileStore) and not store.root.is_dir():
        raise NotFound(f"checkpoint_dir: {store.root} does not exist; name the folder checkpoints are saved in "
                       "(--store or --checkpoint-dir of the run)")
    return store


def list_checkpoints(checkpoint_dir: str = "rewind-data", run_id: str = "", agent_id: str = "") -> list[str]:
    """The committed checkpoints in a store, each run's oldest commit first.

    Args:
        checkpoint_dir: a folder, a file:// URL or an s3://bucket/prefix URL.
        run_id: only this run (of any agent, unless agent_id is given).
        agent_id: only this agent's runs.

    Returns:
        Each checkpoint's path (file:///... or s3://...), usable unchanged as
        `--resume-from-checkpoint` and by `rewind ckpt show`.

    Raises:
        NotFound: the folder does not exist, or the agent or run has no checkpoints there.
        InvalidArgument: a malformed id or URL.
    """
    catalog = Catalog(open_existing_store(checkpoint_dir))
    runs = [run for run in catalog.run_keys(check_id(agent_id, "agent_id") if agent_id else "")
            if not run_id or run.run_id == check_id(run_id, "run_id")]
    if (run_id or agent_id) and not runs:
        wanted = "/".join(filter(None, (agent_id, run_id)))
        raise NotFound(f"run_id: no run {wanted} in {catalog.store.url}")
    return [catalog.path(m.key) for run in runs for m in catalog.manifests(run)]
