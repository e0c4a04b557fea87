"""The services start the way compose.yaml and the manifests start them.

Each container's command and environment are taken from the rendered files and
run here on loopback; only the listening host and ports, the peers' addresses
(and the buffer address the checkpoint service may dial), the S3 endpoint and the
folder of the secrets (/var/lib/rewind/secrets there, a set made by
`write_credentials` here) are pointed at this machine. Docker's HEALTHCHECK
command must then report SERVING, every service must refuse a call without a
token and a call in plaintext (authentication and TLS are on in each
definition), and a SIGTERM to the trainer must end it with the exit code the
Job's podFailurePolicy ignores, after committing a checkpoint.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from botocore.exceptions import ClientError

from rewind import BufferClient, CheckpointClient, TrainerClient
from rewind.channel import make_channel
from rewind.errors import RewindError, Unauthenticated, Unavailable
from rewind.health import check, wait_until_serving
from rewind.security import ClientSecurity, TokenFile
from rewind_runtime import settings as mechanism
from rewind_runtime.credentials import write_credentials
from tests.support.deploy import (
    OVERLAYS,
    compose,
    compose_env,
    container_env,
    find,
    pod_spec,
    pod_templates,
    render,
    workloads,
)
from tests.support.processes import free_port

SOURCES = ("compose", "k8s-cpu")
UNKNOWN_VARIABLE = "not a setting of this command"
SECRETS_DIR = "/var/lib/rewind/secrets"  # where compose's volume and the pods' Secrets are mounted


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


def secrets_here(env: dict[str, str], secrets: Path) -> dict[str, str]:
    """`env` with every file under SECRETS_DIR moved to the same file in `secrets`."""
    return {k: str(secrets / v.removeprefix(SECRETS_DIR + "/")) if v.startswith(SECRETS_DIR + "/") else v
            for k, v in env.items()}


class Container:
    """`rewind <args>` with a container's environment, listening on 127.0.0.1:<free port>.

    The secrets it names under SECRETS_DIR are read from `secrets`; a health port and an HTTP
    port, when the definition has them, move to free ports too.
    """

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict[str, str], secrets: Path,
                 **overrides: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("REWIND_", "AWS_"))}
        self.env = {**clean, **secrets_here(env, secrets), **overrides, "REWIND_HOST": "127.0.0.1",
                    "REWIND_PORT": str(self.port)}
        self.health_port = None
        if int(self.env.get("REWIND_HEALTH_PORT", "-1")) >= 0:
            self.health_port = free_port()
            self.env["REWIND_HEALTH_PORT"] = str(self.health_port)
        self.http_port = None
        if int(self.env.get("REWIND_HTTP_PORT", "-1")) >= 0:
            self.http_port = free_port()
            self.env["REWIND_HTTP_PORT"] = str(self.http_port)
        # What a client needs, as the container's own calls use it: the token and the CA it names.
        self.security = ClientSecurity(token_file=self.env["REWIND_TOKEN_FILE"],
                                       tls_ca_file=self.env["REWIND_TLS_CA_FILE"])
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "rewind_cli", *args], env=self.env, cwd=tmp_path,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_until_serving(self) -> None:
        with make_channel(self.address, security=self.security) as channel:
            wait_until_serving(channel, timeout=120, target=self.address)

    def without_token(self) -> ClientSecurity:
        """TLS with the right CA, and no token."""
        return ClientSecurity(tls_ca_file=self.security.tls_ca_file)

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


def store_endpoint(endpoint_url: str) -> str:
    """An S3 endpoint URL's host:port, as a store_endpoints entry."""
    return endpoint_url.split("://", 1)[1]


@pytest.fixture(params=SOURCES)
def stack(request, s3, tmp_path):
    """The buffer and checkpoint services as `source` defines them, against the test S3 server."""
    specs = service_specs(request.param)
    bucket = specs["checkpoint"][1]["REWIND_STORE"].split("/")[2]
    try:
        s3.client().create_bucket(Bucket=bucket)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    # What compose's secrets job and `rewind secrets init` write (its certificate names 127.0.0.1).
    secrets = tmp_path / "secrets"
    write_credentials(secrets)
    started = []
    try:
        # The buffer service uploads checkpoint blocks to the S3 server, as the definition lets it upload to
        # the real store (and the trainer trainer.pt).
        buffer = Container(tmp_path, "buffer", *specs["buffer"], secrets,
                           REWIND_STORE_ENDPOINTS=store_endpoint(s3.endpoint))
        started.append(buffer)
        # The checkpoint service may dial its buffer, now on loopback, as the definition lets it dial the real one.
        ckpt = Container(tmp_path, "checkpoint", *specs["checkpoint"], secrets, AWS_ENDPOINT_URL=s3.endpoint,
                         REWIND_BUFFER_ADDRESSES=buffer.address)
        started.append(ckpt)
        yield request.param, specs, buffer, ckpt, tmp_path, secrets
    finally:
        for c in started:
            c.stop()


def assert_refuses_strangers(container: Container, call) -> None:
    """No token: UNAUTHENTICATED; plaintext: no answer at all (the port speaks only TLS)."""
    with pytest.raises(Unauthenticated):
        call(container.without_token())
    with pytest.raises(Unavailable):
        call(ClientSecurity())


def https_get(container: Container, path: str, token: str = "", plaintext: bool = False) -> tuple[int, bytes]:
    """GET `path` on the container's HTTP port, trusting the CA it names."""
    scheme = "http" if plaintext else "https"
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{container.http_port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=container.security.tls_ca_file)
    try:
        with urllib.request.urlopen(request, timeout=10, context=None if plaintext else context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def assert_http_is_tls_with_tokens(container: Container, metric: bytes) -> None:
    """The HTTP port: /healthz open over TLS, /metrics with the read token only, no plaintext."""
    assert container.http_port is not None, "the definition sets REWIND_HTTP_PORT"
    assert https_get(container, "/healthz") == (200, b'{"status":"SERVING"}')
    assert https_get(container, "/metrics")[0] == 401
    read_token = TokenFile(container.env["REWIND_READ_TOKENS_FILE"]).lines()[0]
    status, body = https_get(container, "/metrics", token=read_token)
    assert status == 200 and metric in body
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        https_get(container, "/healthz", plaintext=True)


def test_each_service_starts_from_its_definition_and_passes_the_image_healthcheck(stack):
    source, specs, buffer, ckpt, _, _ = stack
    for container in (buffer, ckpt):
        container.wait_until_serving()
        result = container.healthcheck()
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
        assert UNKNOWN_VARIABLE not in container.output()
        assert "authentication is off" not in container.output()
        if container.health_port is not None:  # Kubernetes: the probes' plaintext port, health and nothing else
            with make_channel(f"127.0.0.1:{container.health_port}", security=ClientSecurity()) as channel:
                assert check(channel, timeout=10) == "SERVING"
            with pytest.raises(RewindError) as refused:  # not the service: that speaks TLS on its own port
                with BufferClient(f"127.0.0.1:{container.health_port}", "buffer", timeout=10,
                                  security=ClientSecurity()) as client:
                    client.stats()
            assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert (buffer.health_port is not None) == (source != "compose")

    def buffer_stats(security):
        with BufferClient(buffer.address, "buffer", timeout=10, security=security) as client:
            return client.stats()

    def checkpoint_runs(security):
        with CheckpointClient(ckpt.address, timeout=10, security=security) as client:
            return client.list_runs()

    assert_refuses_strangers(buffer, buffer_stats)
    assert_refuses_strangers(ckpt, checkpoint_runs)
    assert isinstance(checkpoint_runs(ckpt.security), list)  # with the token, it answers
    for container, metric in ((buffer, b"rewind_buffer_transitions"), (ckpt, b"rewind_checkpoint_saves_total")):
        assert_http_is_tls_with_tokens(container, metric)
    # The settings given by variables took effect.
    settings = buffer_stats(buffer.security).settings
    assert settings.min_history == int(specs["buffer"][1]["REWIND_MIN_HISTORY"]) == 0
    if "REWIND_BUFFER_SIZE" in specs["buffer"][1]:
        assert settings.buffer_size == int(specs["buffer"][1]["REWIND_BUFFER_SIZE"])
    assert "s3://rewind/checkpoints" in ckpt.output()


def test_the_trainer_starts_from_its_definition_and_a_sigterm_checkpoints_with_the_preemption_exit_code(stack):
    source, specs, buffer, ckpt, tmp_path, secrets = stack
    args, env = specs["trainer"]
    trainer = Container(tmp_path, "trainer", args, env, secrets, REWIND_BUFFER_ADDRESS=buffer.address,
                        REWIND_CHECKPOINT_ADDRESS=ckpt.address, REWIND_OUT_DIR=str(tmp_path / "runs"),
                        REWIND_TORCH_THREADS="1",  # two cores: keep the test from starving the services
                        REWIND_STORE_ENDPOINTS=store_endpoint(ckpt.env["AWS_ENDPOINT_URL"]))
    try:
        trainer.wait_until_serving()
        assert trainer.healthcheck().returncode == 0

        def trainer_status(security):
            with TrainerClient(trainer.address, timeout=10, security=security) as client:
                return client.status()

        assert_refuses_strangers(trainer, trainer_status)
        status = trainer_status(trainer.security)
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
    with CheckpointClient(ckpt.address, security=ckpt.security) as client:
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
    for overlay in OVERLAYS:
        docs = render(overlay)
        for where, template, fields in (t for w in workloads(docs) for t in pod_templates(w)):
            for c in template["spec"]["containers"]:
                if "rewind" in c["image"].rsplit("/", 1)[-1].split(":")[0]:
                    found.append((f"{overlay} {where}", c["args"], container_env(docs, c, fields)))
    return found


def test_every_container_passes_only_settings_its_command_accepts():
    from rewind_cli.main import build_parser
    from rewind_cli.serving import load_settings

    containers = every_rewind_container()
    # compose: the secrets job, buffer, checkpoint, trainer and the two gpu ones; scale: the checkpoint
    # service and the JobSet's shard, learner and collector
    assert len(containers) == 6 + 3 + 3 + 4
    servers = []
    for where, args, env in containers:
        parsed = build_parser().parse_args(args)
        if args[0] == "secrets":  # a one-shot command with flags only, and no settings
            assert not env and not hasattr(parsed, "settings_class"), where
            continue
        servers.append(where)
        settings_cls = parsed.settings_class
        variables = {k: v for k, v in env.items() if k.startswith("REWIND_")}
        used = mechanism.read_environ(settings_cls, variables)  # raises on an unknown variable or a bad value
        # Every variable is a setting of the command, but the client's (token and CA for calling the others).
        clients = {k for k in variables if k in mechanism.NOT_SETTINGS}
        assert clients >= {"REWIND_TOKEN_FILE", "REWIND_TLS_CA_FILE"}, where
        assert sorted(mechanism.env_name(name) for name in used) == sorted(set(variables) - clients), where
        # Authentication and TLS are on: tokens and a certificate, as files under the secrets mount (a
        # collector serves nothing, and calls with its token, tests/deploy/test_deploy_jobset.py).
        for name in () if args[0] == "collect" else ("read_tokens_file", "write_tokens_file", "tls_cert_file",
                                                      "tls_key_file"):
            assert used[name].startswith(SECRETS_DIR + "/"), (where, name)
        assert not used.get("allow_unauthenticated"), where
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
    assert len(servers) == 5 + 3 + 3 + 4
