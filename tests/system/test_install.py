"""The wheel, built as a user would, installs alone into a clean virtual environment under the
constraints, and the SDK and the command line's client commands work there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.packages import CONSTRAINTS
from tests.support.paths import REPO

INSTALL_TIMEOUT_S = 900
# What only `rewind[services]` installs: the SDK alone must not have pulled them in.
SERVICE_ONLY = ("torchrl", "tensordict", "boto3", "fastapi", "uvicorn", "gymnasium", "matplotlib")


def run(*args: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    return result


def build_wheel(dist: Path) -> tuple[Path, str]:
    """`pip wheel .` with build isolation (the setuptools pyproject.toml asks for), verbose so that
    the build backend's warnings show; returns the wheel and that output."""
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", dist, REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = dist.glob("rewind-*.whl")
    return wheel, result.stdout + result.stderr


def test_the_wheel_installs_into_a_clean_venv_and_works_there(tmp_path, service):
    wheel, build_log = build_wheel(tmp_path / "dist")
    for word in ("deprecat", "BuildBackendWarning", "SetuptoolsWarning"):
        assert word.lower() not in build_log.lower(), f"the build printed a warning ({word}):\n{build_log}"

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python, rewind = venv / "bin" / "python", venv / "bin" / "rewind"
    # pip's configured index and find-links (as the user's pip would use them), the exact tested versions.
    result = run(python, "-m", "pip", "install", "--constraint", CONSTRAINTS, wheel, timeout=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr

    frozen = dict(line.split("==", 1) for line in run(python, "-m", "pip", "freeze").stdout.split()
                  if "==" in line)
    assert frozen["torch"].split("+")[0] == _pinned("torch"), "the constraints' torch was not the one installed"
    for name in SERVICE_ONLY:
        assert name not in frozen, f"the SDK alone installed {name} (it belongs to rewind[services])"

    env = {k: v for k, v in os.environ.items() if not k.startswith("REWIND_")}
    helped = run(rewind, "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "{buffer,ckpt,train,collect,sweep,trainer,health,secrets}" in helped.stdout
    assert "rewind health --address" in helped.stdout

    health = run(rewind, "health", "--address", service.address, cwd=tmp_path, env=env)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr

    sdk = run(python, "-c", textwrap.dedent(f"""
        import json, rewind, torch
        episode = {{"obs": torch.arange(150.0).unsqueeze(-1) + 0.125, "action": torch.zeros(150, 2),
                   "reward": torch.arange(150.0), "done": torch.zeros(150)}}
        with rewind.BufferClient({service.address!r}, "buffer") as client:
            added = client.add(episode)
            obs, action, reward, done = client.sample()
        print(json.dumps({{"version": rewind.__version__, "added": added, "obs": obs[:, 0, 0].tolist(),
                          "reward": reward[:, 0, 0].tolist()}}))
    """), cwd=tmp_path, env=env)
    assert sdk.returncode == 0, sdk.stderr
    answer = json.loads(sdk.stdout)
    assert answer["version"] == _installed_version() and answer["added"] == 1
    first = answer["obs"][0] - 0.125  # a contiguous slice of the episode: obs t..t+H, reward t+1..t+H
    assert answer["obs"] == [first + i + 0.125 for i in range(len(answer["obs"]))]
    assert answer["reward"] == [first + 1 + i for i in range(len(answer["reward"]))]

    # A service command names the extra it needs, in one line.
    served = run(rewind, "buffer", "serve", "--port", "0", cwd=tmp_path, env=env)
    assert served.returncode == 1
    [line] = served.stderr.strip().splitlines()
    assert line.startswith("rewind: error: this command needs the 'services' extra (")
    assert line.endswith("is not installed): pip install 'rewind[services]'")


def _pinned(name: str) -> str:
    from tests.support.packages import constraint_pins

    return constraint_pins()[name]


def _installed_version() -> str:
    from importlib import metadata

    return metadata.version("rewind")
