"""The services start the way compose.yaml and the manifests start them.

Each container's command and environment are taken from the rendered files and
run here on loopback; only the listening host and port, the peers' addresses
and the S3 endpoint are pointed at this machine. Docker's HEALTHCHECK command
must then report SERVING, and a SIGTERM to the trainer must end it with the
exit code the Job's podFailurePolicy ignores, after committing a checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from rewind import BufferClient, CheckpointClient, TrainerClient
from rewind.channel import make_channel
from rewind.health import wait_until_serving
from rewind_runtime import settings as mechanism
from tests.support.deploy import compose, compose_env, container_env, find, pod_spec, render
from tests.support.processes import free_port

SOURCES = ("compose", "k8s-cpu")
UNKNOWN_VARIABLE = "not a setting of this command"


def service_specs(source: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """{service: (arguments after `rewind`, environment)} as the file defines them."""
    if source == "compose":
        services = compose()["services"]
        return {name: (services[name]["command"], compose_env(services[name]))
                for name in ("buffer", "checkpoint", "trainer")}
    docs = render("cpu")
    specs = {}
    for name, kind in (("buffer", "Deployment"), ("checkpoint", "Deployment"), ("trainer", "Job")):
        [c] = pod_spec(find(docs, kind, f"rewind-{name}"))["containers"]
        assert "command" not in c, "the image's entry point (rewind) runs the args"
        specs[name] = (c["args"], container_env(docs, c))
    return specs


class Container:
    """`rewind <args>` with a container's environment, listening on 127.0.0.1:<free port>."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict[str, str], **overrides: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("REWIND_", "AWS_"))}
        self.env = {**clean, **env, **overrides, "REWIND_HOST": "127.0.0.1", "REWIND_PORT": str(self.port)}
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "rewind_cli", *args], env=self.env, cwd=tmp_path,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_until_serving(self) -> None:
        with make_channel(self.address) as channel:
            wait_until_serving(channel, timeout=120, target=self.address)

    def healthcheck(self) -> subprocess.CompletedProcess:
        """The image's HEALTHCHECK command, run in the container's environment."""
        return subprocess.run([sys.executable, "-m", "rewind_cli", "health", "--timeout", "4"], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(params=SOURCES)
def stack(request, s3, tmp_path):
    """The buffer and checkpoint services as `source` defines them, against the test S3 server."""
    specs = service_specs(request.param)
    bucket = specs["checkpoint"][1]["REWIND_STORE"].split("/")[2]
    try:
        s3.client().create_bucket(Bucket=bucket)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    started = []
    try:
        buffer = Container(tmp_path, "buffer", *specs["buffer"])
        started.append(buffer)
        ckpt = Container(tmp_path, "checkpoint", *specs["checkpoint"], AWS_ENDPOINT_URL=s3.endpoint)
        started.append(ckpt)
        yield request.param, specs, buffer, ckpt, tmp_path
    finally:
        for c in started:
            c.stop()


def test_each_service_starts_from_its_definition_and_passes_the_image_healthcheck(stack):
    source, specs, buffer, ckpt, _ = stack
    for container in (buffer, ckpt):
        container.wait_until_serving()
        result = container.healthcheck()
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
        assert UNKNOWN_VARIABLE not in container.output()
    # The settings given by variables took effect.
    with BufferClient(buffer.address, "buffer") as client:
        settings = client.stats().settings
    assert settings.min_history == int(specs["buffer"][1]["REWIND_MIN_HISTORY"]) == 0
    if "REWIND_BUFFER_SIZE" in specs["buffer"][1]:
        assert settings.buffer_size == int(specs["buffer"][1]["REWIND_BUFFER_SIZE"])
    assert "s3://rewind/checkpoints" in ckpt.output()


def test_the_trainer_starts_from_its_definition_and_a_sigterm_checkpoints_with_the_preemption_exit_code(stack):
    source, specs, buffer, ckpt, tmp_path = stack
    args, env = specs["trainer"]
    trainer = Container(tmp_path, "trainer", args, env, REWIND_BUFFER_ADDRESS=buffer.address,
                        REWIND_CHECKPOINT_ADDRESS=ckpt.address, REWIND_OUT_DIR=str(tmp_path / "runs"),
                        REWIND_TORCH_THREADS="1")  # two cores: keep the test from starving the services
    try:
        trainer.wait_until_serving()
        assert trainer.healthcheck().returncode == 0
        with TrainerClient(trainer.address) as client:
            status = client.status()
        assert (status.task, status.run_id, status.total_steps) == (env["REWIND_TASK"], env["REWIND_RUN_ID"],
                                                                   int(env["REWIND_STEPS"]))
        trainer.proc.send_signal(signal.SIGTERM)
        code = trainer.proc.wait(timeout=180)
    finally:
        trainer.stop()
    expected = int(env.get("REWIND_PREEMPT_EXIT_CODE", "0"))
    assert code == expected, trainer.output()[-3000:]
    assert UNKNOWN_VARIABLE not in trainer.output()
    # A preemption that committed is a success, whatever exit code the Job wants (143 in Kubernetes).
    assert "stopped: " in trainer.output() and "rewind: error" not in trainer.output(), trainer.output()[-3000:]
    with CheckpointClient(ckpt.address) as client:
        found = client.lookup("tdmpc2", env["REWIND_RUN_ID"], "latest")
    config = found.checkpoint.config["settings"]
    assert (config["task"], config["model_size"], config["resume_from_checkpoint"]) == (
        env["REWIND_TASK"], env["REWIND_MODEL_SIZE"], "latest")


def every_rewind_container() -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, args, environment) of every container running the image, in compose.yaml and each overlay."""
    found = []
    for name, svc in compose()["services"].items():
        if "rewind" in svc["image"]:
            found.append((f"compose.yaml {name}", svc["command"], compose_env(svc)))
    for overlay in ("cpu", "gpu"):
        docs = render(overlay)
        for w in (d for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet")):
            for c in pod_spec(w)["containers"]:
                if "rewind" in c["image"].rsplit("/", 1)[-1].split(":")[0]:
                    found.append((f"{overlay} {w['metadata']['name']}", c["args"], container_env(docs, c)))
    return found


def test_every_container_passes_only_settings_its_command_accepts():
    from rewind_cli.main import build_parser
    from rewind_cli.serving import load_settings

    containers = every_rewind_container()
    assert len(containers) == 5 + 3 + 3  # compose: buffer, checkpoint, trainer and the two gpu ones
    for where, args, env in containers:
        parsed = build_parser().parse_args(args)
        settings_cls = parsed.settings_class
        variables = {k: v for k, v in env.items() if k.startswith("REWIND_")}
        used = mechanism.read_environ(settings_cls, variables)  # raises on an unknown variable or a bad value
        assert sorted(mechanism.env_name(name) for name in used) == sorted(variables), where
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(env)
            settings = load_settings(parsed, settings_cls).settings  # every value is a valid setting
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if args[0] == "train":
            assert settings.resume_from_checkpoint == "latest", where
