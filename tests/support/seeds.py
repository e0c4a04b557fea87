"""The seed documents' usages, run as a user types them: the `rewind` command in a working folder.

Each seed test module runs its seed's commands with only the program name, the
task and Rewind's directory names changed (`checkpoints/ppo_agent/run123/ep000100.zip`
becomes `checkpoints/tdmpc2/pendulum-v1-seed1/step-0000000005`). What only makes
them quick (the tiny model, few steps, no evaluation) comes from REWIND_*
variables, so the command lines stay as written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rewind import TrainerClient
from rewind.checkpoint_paths import step_dir
from tests.support.processes import free_port
from tests.support.trainer import AGENT

REWIND = str(Path(sys.executable).with_name("rewind"))  # the console script a user runs
RUN = "tdmpc2/pendulum-v1-seed1"  # Rewind's <agent_id>/<run_id> for the default task and seed

# Quick, and still the real thing: every step is a seed step (random actions, no learning),
# so a run is mostly start-up; learning and exactness are tested in tests/system.
QUICK = {
    "REWIND_MODEL_SIZE": "tiny",
    "REWIND_SEED_STEPS": "1000",
    "REWIND_EVAL_EPISODES": "0",
    "REWIND_PORT": "-1",
    "REWIND_PROGRESS": "false",
    "REWIND_TORCH_THREADS": "1",
    "REWIND_AGENT": ",".join(f"{k}={v}" for k, v in AGENT.items()),
}


@dataclass(frozen=True)
class Workspace:
    """The user's working folder and the store the seed's checkpoint folder becomes.

    Args:
        cwd: where the commands run.
        root: the seed's checkpoint folder as the user writes it: a relative
            folder name on file://, an s3:// URL on S3.
        url: the same store as the checkpoint service names it.
        env: variables every command of the workspace gets (REWIND_STORE where
            the seed's default folder is an S3 store).
    """

    cwd: Path
    root: str
    url: str
    env: dict[str, str] = field(default_factory=dict)  # what every command gets besides QUICK

    def checkpoint(self, step: int) -> str:
        """The checkpoint of the default run at `step`, as the user would type it."""
        return f"{self.root}/{RUN}/{step_dir(step)}"

    def checkpoint_url(self, step: int) -> str:
        """The same checkpoint as the service reports it (Checkpoint.path)."""
        return f"{self.url}/{RUN}/{step_dir(step)}"


def workspace(tmp_path: Path, store_url: str, name: str, default_store: bool = False) -> Workspace:
    """A working folder whose checkpoint folder `name` lives in the test's store (file:// or S3).

    Args:
        default_store: the commands name no store; on S3, REWIND_STORE names it.
    """
    cwd = tmp_path / "work"
    cwd.mkdir()
    if store_url.startswith("file://"):
        return Workspace(cwd, name, f"file://{cwd / name}")
    url = f"{store_url}/{name}"
    return Workspace(cwd, url, url, {"REWIND_STORE": url} if default_store else {})


def environment(steps: int | None, **more: str) -> dict[str, str]:
    env = {**os.environ, **QUICK, **more}
    if steps is not None:
        env["REWIND_STEPS"] = str(steps)
    return env


def command(ws: Workspace, *args: str, steps: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """`rewind <args>` in the workspace, its stdout and log in .stdout, quick settings from REWIND_*."""
    return subprocess.run([REWIND, *args], cwd=ws.cwd, env=environment(steps, **ws.env, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


@dataclass(frozen=True)
class Interrupted:
    """A run stopped by SIGTERM after a checkpoint, as a preempted (or crashed and restarted) run is."""

    checkpoint_step: int        # the step of the checkpoint taken before the SIGTERM
    returncode: int
    stdout: str


def interrupt(ws: Workspace, *args: str) -> Interrupted:
    """`rewind train <args>` (a long run), SIGTERM once it has committed a checkpoint past its start.

    The checkpoint-now call returns when the first boundary after the start
    has committed; that is the synchronisation, no sleeping.
    """
    port = free_port()
    proc = subprocess.Popen([REWIND, "train", *args], cwd=ws.cwd,
                            # Its HTTP port too is a free one: another test's trainer may hold the default.
                            env=environment(None, **ws.env, REWIND_PORT=str(port), REWIND_HTTP_PORT="0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with TrainerClient(f"127.0.0.1:{port}", timeout=120) as client:
            client.wait_until_serving(timeout=120)
            step, _ = client.checkpoint(wait=True, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return Interrupted(step, proc.returncode, out)


def listing(ws: Workspace) -> list[str]:
    """Every object of the store, to show that nothing was written (S3 through the AWS_* variables)."""
    if ws.url.startswith("file://"):
        root = Path(ws.url.removeprefix("file://"))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
    import boto3

    bucket, _, prefix = ws.url.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def printed_checkpoint(stdout: str) -> str:
    """The `checkpoint: <path>` line `rewind train` prints at its end."""
    lines = [line.removeprefix("checkpoint: ") for line in stdout.splitlines() if line.startswith("checkpoint: ")]
    assert lines, f"no checkpoint line in:\n{stdout}"
    return lines[-1]
