"""The container engine for `make test-deploy`: the image, hardened runs, the compose stack.

deploy/test/setup.sh prepares the machine first (engine, compose plugin, base image,
torch index, S3 stand-in) and writes the build arguments to $REWIND_DEPLOY_STATE/build.env.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from rewind.security import ClientSecurity
from tests.support.paths import REPO

STATE = Path(os.environ.get("REWIND_DEPLOY_STATE", "/var/tmp/rewind-deploy"))
IMAGE = "rewind:cpu"
COMPOSE_FILES = ["-f", "compose.yaml", "-f", "deploy/test/compose.test.yaml"]
SERVICE_USER = 10001
# As the Kubernetes pods run (deploy/k8s/base): read-only root, no capabilities, no new
# privileges, uid 10001; /tmp (and the trainer's runs folder) are emptyDirs there, tmpfs here.
HARDENED = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", f"{SERVICE_USER}:{SERVICE_USER}"]
# Where compose's rewind-secrets volume and the pods' two Secrets are mounted.
SECRETS_DIR = "/var/lib/rewind/secrets"


def build_args() -> dict[str, str]:
    """What setup.sh chose: the base image, the torch index, the S3 stand-in image."""
    path = STATE / "build.env"
    assert path.exists(), f"{path} is missing: run deploy/test/setup.sh (make test-deploy does)"
    return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)


def docker(*args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess:
    """`docker <args>` in the repository, output captured; a failure shows it."""
    proc = subprocess.run(["docker", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DOCKER_BUILDKIT": "0", **(env or {})})
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_image(tag: str = IMAGE, cache: bool = True) -> float:
    """Build the CPU image from deploy/docker/Dockerfile; returns the seconds it took."""
    args = build_args()
    started = time.monotonic()
    docker("build", *([] if cache else ["--no-cache"]), "--network", "host", "-f", "deploy/docker/Dockerfile",
           "--build-arg", f"PYTHON_IMAGE={args['PYTHON_IMAGE']}",
           "--build-arg", f"TORCH_INDEX_CPU={args['TORCH_INDEX_CPU']}", "-t", tag, ".", timeout=1800)
    return time.monotonic() - started


def image_bytes(tag: str = IMAGE) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def security_env() -> dict[str, str]:
    """The token and TLS variables every Rewind service gets: compose.yaml's x-rewind-security, which
    the pods' ConfigMap rewind-security repeats (tests/deploy checks both)."""
    from tests.support.deploy import compose

    return {k: str(v) for k, v in compose()["x-rewind-security"].items()}


def make_secrets(folder: Path) -> Path:
    """What `rewind secrets init` writes (a certificate for 127.0.0.1 among others), readable by the
    service user in a container, as the pods' fsGroup makes their Secrets."""
    from rewind_runtime.credentials import write_credentials

    write_credentials(folder)
    for path in (folder, *folder.iterdir()):
        try:
            os.chown(path, SERVICE_USER, SERVICE_USER)  # make test-deploy runs as root
        except PermissionError:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def secrets_args(folder: Path) -> list[str]:
    """`docker run` arguments: `folder` mounted read-only where the pods mount their Secrets, and the variables."""
    args = ["-v", f"{folder}:{SECRETS_DIR}:ro"]
    for name, value in security_env().items():
        args += ["-e", f"{name}={value}"]
    return args


def client_security(folder: Path, token: str = "write.token") -> ClientSecurity:
    """A client of services using the secrets in `folder` (on this machine): a token and the CA."""
    return ClientSecurity(token_file=str(folder / token), tls_ca_file=str(folder / "ca.crt"))


def run_hardened(name: str, *args: str, secrets: Path | None = None) -> str:
    """`docker run -d` as the pods run (HARDENED), listening on loopback; a leftover of the same name goes first.

    With `secrets` (a folder from make_secrets), the service serves TLS and wants a token, as in the pods.
    """
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, *HARDENED, "-e", "REWIND_HOST=127.0.0.1",
           *(secrets_args(secrets) if secrets is not None else []), *args)
    return name


def logs(container: str) -> str:
    """A container's output, stdout and stderr."""
    out = docker("logs", container)
    return out.stdout + out.stderr


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container).stdout)[0]


def wait_healthy(container: str, timeout: float = 120) -> float:
    """Wait for the image's HEALTHCHECK to report healthy; returns the seconds it took."""
    started = time.monotonic()
    while True:
        state = inspect(container)["State"]
        health = state.get("Health", {}).get("Status")
        if health == "healthy":
            return time.monotonic() - started
        assert state["Status"] == "running", f"{container} stopped: {docker('logs', container).stderr[-3000:]}"
        assert time.monotonic() - started < timeout, f"{container} not healthy after {timeout:.0f}s ({health})"
        time.sleep(0.5)  # the engine runs the check every 10 s; nothing pushes its result


def compose(*args: str, env: dict[str, str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`docker compose` with the test override, project `rewind-test`."""
    return docker("compose", "-p", "rewind-test", *COMPOSE_FILES, *args, timeout=timeout, check=check, env=env)
