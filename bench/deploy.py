"""Deployment figures: image build times and size, compose up to healthy, SIGTERM to exit.

    bash deploy/test/setup.sh && python -m bench.deploy [--cold]

Uses the same engine, base image, torch index and S3 stand-in as `make test-deploy`. Each
figure is one run. The trainer's SIGTERM-to-exit is measured in three phases, each in a fresh
container run as the Kubernetes pods run: mid-burst (the updates the seed steps end with),
mid-training and mid-evaluation (the run evaluates at step 1200 here, 3 episodes).
The services serve TLS and want a token, as in compose and the pods (a fresh set of secrets).
Writes bench/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rewind import TrainerClient
from tests.support.containers import (
    IMAGE,
    build_args,
    build_image,
    client_security,
    compose,
    docker,
    image_bytes,
    inspect,
    logs,
    make_secrets,
    run_hardened,
    wait_healthy,
)
from tests.support.processes import free_port

RESULTS = Path(__file__).parent / "results" / "deploy.json"
PHASES = {
    "burst": lambda s: s.step == 1001 and len(s.losses) > 0,
    "training": lambda s: s.phase == "training" and s.step > 1010,
    "evaluation": lambda s: s.phase == "evaluating",
}


def stop_seconds(name: str) -> float:
    started = time.monotonic()
    docker("stop", "-t", "120", name)
    seconds = time.monotonic() - started
    assert inspect(name)["State"]["ExitCode"] == 0, logs(name)[-2000:]
    return seconds


def services_stop(secrets: Path) -> dict[str, float]:
    """SIGTERM to exit of each service, the trainer in three phases."""
    ports = {"buffer": free_port(), "ckpt": free_port()}
    run_hardened("bench-buffer", "-e", f"REWIND_PORT={ports['buffer']}", IMAGE, "buffer", "serve", secrets=secrets)
    run_hardened("bench-ckpt", "-e", f"REWIND_PORT={ports['ckpt']}", "-e", "REWIND_STORE=file:///tmp/store", IMAGE,
                 "ckpt", "serve", secrets=secrets)
    figures = {}
    try:
        for name in ("bench-buffer", "bench-ckpt"):
            wait_healthy(name)
        for phase, reached in PHASES.items():
            port = free_port()
            trainer = run_hardened(
                "bench-trainer", "--tmpfs", "/var/lib/rewind/runs:uid=10001,gid=10001", "-e", f"REWIND_PORT={port}",
                "-e", f"REWIND_BUFFER_ADDRESS=127.0.0.1:{ports['buffer']}", "-e", f"REWIND_RUN_ID=bench-{phase}",
                "-e", f"REWIND_CHECKPOINT_ADDRESS=127.0.0.1:{ports['ckpt']}", "-e", "REWIND_MODEL_SIZE=tiny",
                "-e", "REWIND_EVAL_FREQ=1200", "-e", "REWIND_EVAL_EPISODES=3", "-e", "REWIND_PROGRESS=false",
                "-e", "REWIND_TORCH_THREADS=1", IMAGE, "train", secrets=secrets)
            with TrainerClient(f"127.0.0.1:{port}", timeout=30, security=client_security(secrets)) as client:
                client.wait_until_serving(timeout=120)
                deadline = time.monotonic() + 600
                while not reached(client.status()):
                    assert time.monotonic() < deadline, f"the trainer never reached its {phase}"
                    time.sleep(0.05)  # polling the status: a phase has no event to wait on
            figures[f"trainer_{phase}_s"] = stop_seconds(trainer)
            print(f"trainer SIGTERM -> exit, mid-{phase}: {figures[f'trainer_{phase}_s']:.1f} s", flush=True)
        figures["buffer_s"] = stop_seconds("bench-buffer")
        figures["checkpoint_s"] = stop_seconds("bench-ckpt")
    finally:
        for name in ("bench-trainer", "bench-buffer", "bench-ckpt"):
            docker("rm", "-f", name, check=False)
    return figures


def compose_up_seconds() -> float:
    args = build_args()
    env = {"REWIND_IMAGE": IMAGE, "REWIND_S3_IMAGE": args["REWIND_S3_IMAGE"], "REWIND_TRAINER_CPUS": "1"}
    compose("down", "-v", "--remove-orphans", env=env)
    try:
        started = time.monotonic()
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=env, timeout=400)
        return time.monotonic() - started
    finally:
        compose("down", "-v", "--remove-orphans", env=env, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also time a build with no cache (minutes)")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    if args.cold:
        figures["cold_build_s"] = build_image(cache=False)
        build_image()  # the legacy builder's --no-cache build leaves no layers the next build reuses
    figures["cached_build_s"] = build_image()
    figures["image_gb"] = image_bytes() / 1e9
    print(f"build: cold {figures.get('cold_build_s', float('nan')):.0f} s, cached {figures['cached_build_s']:.1f} s; "
          f"image {figures['image_gb']:.2f} GB", flush=True)
    figures["compose_up_healthy_s"] = compose_up_seconds()
    print(f"compose up -> every service healthy: {figures['compose_up_healthy_s']:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        figures.update(services_stop(make_secrets(Path(folder) / "secrets")))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": 1, **{k: round(v, 2) for k, v in figures.items()}}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
