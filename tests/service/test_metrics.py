"""/metrics on real services: scraped before and after real calls, the counters move by exactly what was done."""

from __future__ import annotations

import math
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewind import BufferClient, CheckpointClient, TrainerClient
from rewind.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from rewind.security import ClientSecurity
from rewind_buffer.server import build as build_buffers
from rewind_buffer.server import serve as serve_buffers
from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.server import serve as serve_checkpoints
from rewind_runtime.metrics import MetricsInterceptor, RpcMetrics, new_registry
from rewind_trainer.loop import updates_done
from rewind_trainer.run import train
from rewind_trainer.service import Control
from rewind_trainer.settings import TrainSettings
from tests.support.auth import READ_TOKEN, make_tokens
from tests.support.configs import SMALL, checkpoint_config
from tests.support.episodes import episode
from tests.support.processes import wait_for
from tests.support.trainer import AGENT

BUFFER_SERVICE = "rewind.buffer.v1.BufferService"
CHECKPOINT_SERVICE = "rewind.checkpoint.v1.CheckpointService"
TRAINER_SERVICE = "rewind.trainer.v1.TrainerService"


class Scrape:
    """One scrape of /metrics: every sample by name and labels."""

    def __init__(self, port: int, token: str = "") -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for family in text_string_to_metric_families(text) for s in family.samples}

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a counter no call has touched yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def rpcs(self, service: str, method: str, code: str) -> float:
        return self.get("rewind_rpc_requests_total", service=service, method=method, code=code)

    def timed(self, service: str, method: str) -> float:
        return self.get("rewind_rpc_duration_seconds_count", service=service, method=method)


@pytest.fixture
def tokens(tmp_path):
    return make_tokens(tmp_path / "tokens")


@pytest.fixture
def buffers(tokens):
    host, _ = build_buffers(SMALL.replace(port=0, min_history=0, read_tokens_file=tokens.read_file,
                                          write_tokens_file=tokens.write_file))
    host.start()
    yield host
    host.stop(grace_s=0)


def test_rpc_counters_move_by_the_calls_made_with_their_codes(buffers, tokens):
    before = Scrape(buffers.http_port, READ_TOKEN)
    with BufferClient(buffers.address, security=tokens.write, timeout=10) as client:
        for i in range(3):
            client.add(episode(i, 60))
        with pytest.raises(NotFound):
            client.using("no-such-buffer").stats()
    with BufferClient(buffers.address, security=ClientSecurity(), timeout=10) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.add(episode(9, 60))
    with BufferClient(buffers.address, security=tokens.read, timeout=10) as reader:
        with pytest.raises(PermissionDenied):
            reader.add(episode(9, 60))
    with BufferClient(buffers.address, security=tokens.write, timeout=10) as writer:
        assert len(list(writer.batches(prefetch=1, num_batches=2))) == 2  # a response stream, counted at its end
    after = Scrape(buffers.http_port, READ_TOKEN)

    def moved(method: str, code: str) -> float:
        return after.rpcs(BUFFER_SERVICE, method, code) - before.rpcs(BUFFER_SERVICE, method, code)

    assert moved("AddEpisode", "OK") == 3
    assert moved("AddEpisode", "UNAUTHENTICATED") == 1
    assert moved("AddEpisode", "PERMISSION_DENIED") == 1
    assert moved("GetStats", "NOT_FOUND") == 1
    assert moved("GetStats", "OK") == 0
    assert after.timed(BUFFER_SERVICE, "AddEpisode") - before.timed(BUFFER_SERVICE, "AddEpisode") == 5
    assert moved("SampleStream", "OK") == 1
    assert after.timed(BUFFER_SERVICE, "SampleStream") - before.timed(BUFFER_SERVICE, "SampleStream") == 1


def test_a_stream_the_client_cancels_counts_as_cancelled(buffers, tokens):
    with BufferClient(buffers.address, security=tokens.write, timeout=10) as client:
        client.add(episode(0, 60))
        stream = client.batches(prefetch=1)
        next(stream)
        stream.close()
    wait_for(lambda: Scrape(buffers.http_port, READ_TOKEN).rpcs(BUFFER_SERVICE, "SampleStream", "CANCELLED") == 1,
             "the cancelled stream to be counted")


def test_buffer_gauges_are_the_buffers_stats(buffers, tokens):
    with BufferClient(buffers.address, security=tokens.write, timeout=10) as client:
        for i in range(4):
            client.add(episode(i, 50 + i))
        client.sample()
        client.sample()
        stats = client.stats()
        empty = client.using("test_buffer").stats()
    scrape = Scrape(buffers.http_port, READ_TOKEN)
    assert scrape.get("rewind_buffer_transitions", buffer="buffer") == stats.transitions == 4 * 50 + 6
    assert scrape.get("rewind_buffer_episodes", buffer="buffer") == stats.episodes == 4
    assert scrape.get("rewind_buffer_episodes_added_total", buffer="buffer") == 4
    assert scrape.get("rewind_buffer_batches_sampled_total", buffer="buffer") == 2
    assert scrape.get("rewind_buffer_capacity_transitions", buffer="buffer") == SMALL.buffer_size
    assert scrape.get("rewind_buffer_ready", buffer="buffer") == 1
    assert scrape.get("rewind_buffer_storage_bytes", buffer="buffer", device=stats.device) == stats.bytes > 0
    assert (scrape.get("rewind_buffer_transitions", buffer="test_buffer"), empty.transitions) == (0, 0)
    no_storage = frozenset({"buffer": "test_buffer", "device": "none"}.items())
    assert scrape.samples[("rewind_buffer_storage_bytes", no_storage)] == 0


def test_checkpoint_counters_move_by_the_saves_made(tmp_path):
    host = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store"))
    try:
        before = Scrape(host.http_port)
        assert before.get("rewind_checkpoint_staging_sweeps_total") == 1  # the sweep at start
        with CheckpointClient(host.address, timeout=10) as client:
            saved = [client.save("agent", "run", step, {"a.bin": b"x" * 1000, "b.bin": b"y" * 24})
                     for step in (10, 20)]
            with pytest.raises(InvalidArgument):
                client.save("agent", "bad id!", 30, {"a.bin": b"x"})
            with pytest.raises(NotFound):
                client.list("agent", "no-such-run")
        after = Scrape(host.http_port)
    finally:
        host.stop(grace_s=0)
    assert [s.checkpoint.step for s in saved] == [10, 20]
    assert after.get("rewind_checkpoint_saves_total") - before.get("rewind_checkpoint_saves_total") == 2
    assert after.get("rewind_checkpoint_saved_bytes_total") - before.get("rewind_checkpoint_saved_bytes_total") \
        == 2 * 1024
    assert after.get("rewind_checkpoint_save_duration_seconds_count") == 2
    assert after.get("rewind_checkpoint_save_failures_total", code="INVALID_ARGUMENT") == 1
    assert after.rpcs(CHECKPOINT_SERVICE, "Save", "OK") == 2
    assert after.rpcs(CHECKPOINT_SERVICE, "Save", "INVALID_ARGUMENT") == 1
    assert after.rpcs(CHECKPOINT_SERVICE, "ListCheckpoints", "NOT_FOUND") == 1


def test_health_checks_and_unary_errors_of_grpc_itself_are_counted():
    """A plain grpc handler that sets a code without raising (grpc's Health does so for unknown services)."""
    registry = new_registry()
    interceptor = MetricsInterceptor(RpcMetrics(registry), clock=iter(range(100)).__next__)
    from grpc_health.v1 import health_pb2
    from grpc_health.v1.health import HealthServicer

    servicer = HealthServicer()
    handler = grpc.unary_unary_rpc_method_handler(servicer.Check)
    details = type("Details", (), {"method": "/grpc.health.v1.Health/Check", "invocation_metadata": ()})()
    wrapped = interceptor.intercept_service(lambda _details: handler, details)

    class Context:
        _code = None

        def set_code(self, code):
            self._code = code

        def set_details(self, _details):
            pass

        def code(self):
            return self._code

        def is_active(self):
            return True

    wrapped.unary_unary(health_pb2.HealthCheckRequest(service="unknown"), Context())
    count = registry.get_sample_value("rewind_rpc_requests_total", {"service": "grpc.health.v1.Health",
                                                                     "method": "Check", "code": "NOT_FOUND"})
    assert count == 1
    assert registry.get_sample_value("rewind_rpc_duration_seconds_sum", {"service": "grpc.health.v1.Health",
                                                                         "method": "Check"}) == 1


def test_updates_follow_the_loops_bookkeeping():
    # Seeding: no updates; the burst of seed_steps when they end; then one per step.
    assert updates_done(100, 200, 0) == 0
    assert updates_done(201, 200, 200) == 0
    assert updates_done(201, 200, 0) == 200
    assert updates_done(250, 200, 0) == 249
    assert updates_done(250, 200, 1) == 248


def test_trainer_gauges_are_its_status(tmp_path):
    buffer_host = serve_buffers(BufferServiceSettings(buffer_size=20_000, batch_size=8, min_history=0, horizon=3,
                                                      port=0))
    ckpt_host = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store", max_message_mb=64))
    port_file = tmp_path / "trainer.port"
    settings = TrainSettings(model_size="tiny", seed_steps=200, eval_episodes=0, agent=AGENT, port=0,
                             port_file=str(port_file), checkpoint_interval_episodes=0, progress=False,
                             buffer_size=20_000, torch_threads=1, steps=100_000, out_dir=str(tmp_path / "runs"),
                             buffer_address=buffer_host.address, checkpoint_address=ckpt_host.address)
    control = Control()

    def run() -> None:
        try:
            train(settings, control=control)
        except BaseException as exc:  # fail the waiting test at once, not at its timeout
            for waiter in control.take_checkpoint_waiters():
                waiter.set_exception(exc)
            raise

    runner = threading.Thread(target=run)
    runner.start()
    try:
        step, path = control.request_checkpoint().result(timeout=120)
        http_port = int(Path(f"{port_file}.http").read_text())
        with TrainerClient(f"127.0.0.1:{port_file.read_text()}", timeout=30) as client:
            status = client.status()
            scrape = Scrape(http_port)
        labels = {"agent_id": status.agent_id, "run_id": status.run_id}
        assert scrape.get("rewind_trainer_checkpoint_step", **labels) == step == status.last_checkpoint.step
        assert scrape.get("rewind_trainer_checkpoint_saves_total", **labels) == 1
        assert scrape.get("rewind_trainer_checkpoint_failures_total", **labels) == 0
        assert scrape.get("rewind_trainer_checkpoint_blocking_seconds", **labels) == pytest.approx(
            status.last_checkpoint.blocking_ms / 1000)
        assert 0 <= scrape.get("rewind_trainer_checkpoint_age_seconds", **labels) < 120  # committed in this test
        assert scrape.get("rewind_trainer_step", **labels) >= status.step >= step
        assert scrape.get("rewind_trainer_env_steps", **labels) == scrape.get("rewind_trainer_step", **labels) * \
            settings.action_repeat
        assert scrape.get("rewind_trainer_steps_per_second", **labels) > 0
        assert math.isnan(scrape.get("rewind_trainer_eval_return", **labels))  # no evaluation in this run
        assert scrape.rpcs(TRAINER_SERVICE, "GetStatus", "OK") == 1
        assert path == status.last_checkpoint.path
    finally:
        control.request_stop("test")
        runner.join(timeout=120)
        buffer_host.stop(grace_s=0)
        ckpt_host.stop(grace_s=0)
