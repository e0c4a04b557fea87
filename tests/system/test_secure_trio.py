"""The trio as processes with tokens and TLS on: service-to-service calls carry them, grpcurl, buf curl
and the CLI use them, and every trainer RPC is guarded."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest

from rewind import CheckpointClient
from rewind.security import ClientSecurity
from rewind.trainer.v1 import trainer_pb2
from rewind_trainer.service import READ_METHODS as TRAINER_READS
from tests.support.auth import READ_TOKEN, assert_guarded, make_tokens
from tests.support.curl import curl
from tests.support.docs import bash_blocks, section
from tests.support.paths import GRPCURL
from tests.support.pki import make_pki
from tests.support.processes import ServiceProcess, rewind
from tests.support.trainer import BUFFER_FLAGS, TrainerProcess

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_secure_trio")

RUN = ("tdmpc2", "pendulum-v1-seed1")


@pytest.fixture(scope="module")
def secure_trio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    pki, tokens = make_pki(tmp / "pki"), make_tokens(tmp / "tokens")
    # --auth-failure-limit 0: the tests here send bad tokens on purpose (the lockout has its own test).
    serving = ["--read-tokens-file", tokens.read_file, "--write-tokens-file", tokens.write_file,
               "--tls-cert-file", pki.server.cert, "--tls-key-file", pki.server.key, "--auth-failure-limit", "0"]
    # What each process presents when it calls another: the write token, and the CA to verify with.
    calling = {"REWIND_TOKEN_FILE": tokens.write.token_file, "REWIND_TLS_CA_FILE": pki.ca}
    write = ClientSecurity(token_file=tokens.write.token_file, tls_ca_file=pki.ca)
    buffer = ServiceProcess(tmp, *BUFFER_FLAGS, *serving, env=calling)
    ckpt = ServiceProcess(tmp, "--store", f"file://{tmp}/store", *serving, group="ckpt", env=calling)
    trainer = TrainerProcess(tmp, buffer.address, ckpt.address, "--steps", "100000", *serving, env=calling,
                             security=write)
    try:
        trainer.wait_until_step(200)  # a checkpoint, with both buffers pulled from the buffer service
        yield dict(pki=pki, tokens=tokens, write=write, buffer=buffer, ckpt=ckpt, trainer=trainer)
    finally:
        trainer.stop()
        buffer.stop()
        ckpt.stop()


def test_service_to_service_calls_carry_the_token_over_tls(secure_trio):
    with CheckpointClient(secure_trio["ckpt"].address, security=secure_trio["write"]) as ckpt:
        latest = ckpt.lookup(*RUN, "latest").checkpoint
        files = {f.name for f in latest.files}
        status = json.loads(ckpt.get_run_file(*RUN, "status.json").content)  # the trainer's PutRunFile got in too
        metrics = ckpt.get_run_file(*RUN, "metrics.csv").content
    assert latest.step >= 200 and {"buffer.snapshot", "test_buffer.snapshot", "trainer.pt"} <= files
    assert (status["state"], status["agent_id"], status["run_id"], status["steps"]) == ("running", *RUN, 100000)
    assert metrics.startswith(b"step,episode,kind,episode_return,")


def test_every_trainer_rpc_needs_a_token_and_its_scope(secure_trio):
    trainer, pki = secure_trio["trainer"], secure_trio["pki"]
    with CheckpointClient(secure_trio["ckpt"].address, security=secure_trio["write"]) as ckpt:
        def fingerprint():
            return [c.step for c in ckpt.list(*RUN)], trainer.proc.poll()

        answers = assert_guarded(f"127.0.0.1:{trainer.port}", trainer_pb2.DESCRIPTOR.services_by_name[
            "TrainerService"], set(TRAINER_READS), fingerprint, tls=ClientSecurity(tls_ca_file=pki.ca))
    assert answers == {"GetStatus": grpc.StatusCode.OK}


def test_grpcurl_with_a_bearer_token_and_the_ca(secure_trio):
    pki, port = secure_trio["pki"], secure_trio["trainer"].port
    base = [str(GRPCURL), "-cacert", pki.ca]
    listed = subprocess.run([*base, f"127.0.0.1:{port}", "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "rewind.trainer.v1.TrainerService" in listed.stdout, listed.stderr
    method = "rewind.trainer.v1.TrainerService/GetStatus"
    status = subprocess.run([*base, "-H", f"authorization: Bearer {READ_TOKEN}", "-d", "{}", f"127.0.0.1:{port}",
                             method], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"]["run_id"] == RUN[1]  # grpcurl keeps the proto names
    anonymous = subprocess.run([*base, "-d", "{}", f"127.0.0.1:{port}", method], capture_output=True, text=True,
                               timeout=60)
    assert anonymous.returncode != 0 and "Code: Unauthenticated" in anonymous.stderr


def test_buf_curl_with_a_bearer_token_and_the_ca(secure_trio):
    pki, address = secure_trio["pki"], secure_trio["buffer"].address
    url = f"https://{address}/rewind.buffer.v1.BufferService/GetStats"
    result = curl(address, "--cacert", pki.ca, "-H", f"authorization: Bearer {READ_TOKEN}", url,
                  data={"buffer": "buffer"})
    assert result.returncode == 0, result.stderr
    assert int(json.loads(result.stdout)["stats"]["episodesAdded"]) >= 1
    refused = curl(address, "--cacert", pki.ca, url, data={"buffer": "buffer"})
    assert refused.returncode != 0 and "unauthenticated" in refused.stderr


def test_the_cli_takes_the_token_and_ca_flags_anywhere(secure_trio):
    pki, tokens, address = secure_trio["pki"], secure_trio["tokens"], secure_trio["buffer"].address
    ok = rewind("buffer", "stats", "--address", address, "--token-file", tokens.read.token_file,
                f"--tls-ca-file={pki.ca}")
    assert ok.returncode == 0 and "episodes" in ok.stdout, ok.stderr
    missing = rewind("buffer", "stats", "--address", address, "--tls-ca-file", pki.ca)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "rewind: error: authorization: this service needs a bearer token; pass --token-file or set "
        "REWIND_TOKEN_FILE"]
    wrong = rewind("ckpt", "ls", "--address", secure_trio["ckpt"].address, "--tls-ca-file", pki.ca, "--token-file",
                   str(tokens.read.token_file) + ".missing")
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert wrong.stderr.startswith("rewind: error: token file: cannot read ") and "read.token.missing" in wrong.stderr


def test_the_documented_secure_grpcurl_block_runs_as_written(secure_trio, tmp_path):
    """The commands of docs/how-to/grpcurl.md's "With tokens and TLS", in bash (for their $(cat ...)), from a
    folder whose rewind-secrets holds the trio's CA and tokens, with the documented ports pointed at the trio's."""
    block = next(b for b in bash_blocks(section("how-to/grpcurl.md", "With tokens and TLS")) if "-cacert" in b)
    commands = [line for line in block.splitlines() if line.startswith("grpcurl ")]
    secrets = tmp_path / "rewind-secrets"
    secrets.mkdir()
    shutil.copy(secure_trio["pki"].ca, secrets / "ca.crt")
    shutil.copy(secure_trio["tokens"].read.token_file, secrets / "read.token")
    shutil.copy(secure_trio["tokens"].write.token_file, secrets / "write.token")
    ports = {"127.0.0.1:50051": secure_trio["buffer"].address, "127.0.0.1:50052": secure_trio["ckpt"].address,
             "127.0.0.1:50053": f"127.0.0.1:{secure_trio['trainer'].port}"}
    replies = []
    for command in commands:
        for documented, actual in ports.items():
            command = command.replace(documented, actual)
        result = subprocess.run(["bash", "-c", command.replace("grpcurl ", f"{GRPCURL} ", 1)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        replies.append(result.stdout)
    assert len(replies) == 4 and "rewind.checkpoint.v1.CheckpointService" in replies[0]
    assert [(r["agent_id"], r["run_id"]) for r in json.loads(replies[1])["runs"]] == [RUN]
    assert json.loads(replies[2])["stats"]["name"] == "buffer"
    with CheckpointClient(secure_trio["ckpt"].address, security=secure_trio["write"]) as ckpt:
        assert ckpt.lookup(*RUN, "latest").checkpoint.path == json.loads(replies[3])["path"]
