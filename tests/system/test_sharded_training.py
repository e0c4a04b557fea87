"""The trainer on a sharded replay: three buffer services hold `buffer` between them.

The cut (every shard captured at one boundary, one manifest), the exact resume
after kill -9 onto new shard services, the shard count a resume must keep, a
shard killed for real and restored from the last cut, and --shards with local
services.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest
import torch
from google.protobuf import json_format
from safetensors.torch import load as load_safetensors

from rewind import BufferClient, CheckpointClient
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import FailedPrecondition
from rewind_buffer.server import serve as serve_buffers
from rewind_buffer.settings import BufferServiceSettings
from rewind_trainer.connections import open_services
from rewind_trainer.run import train
from rewind_trainer.settings import TrainSettings
from tests.support.configs import checkpoint_config
from tests.support.processes import ServiceProcess, free_port, wait_for
from tests.support.shared import computed_once
from tests.support.trainer import BUFFER_FLAGS, TrainerProcess, assert_identical, params, tiny

SHARDS = 3
RUN = ("tdmpc2", "pendulum-v1-seed1")
SHARD_FILES = [f"buffer.shard-{i}.snapshot" for i in range(SHARDS)]


def cut_of(checkpoint: checkpoint_pb2.Checkpoint) -> dict:
    return json_format.MessageToDict(checkpoint.extra)["cut"]


def blocks_of(checkpoint: checkpoint_pb2.Checkpoint) -> dict[str, list[str]]:
    """Each buffer snapshot's blocks, by file: the content of every shard and of test_buffer."""
    return {b.file: [block.sha256 for block in b.blocks] for b in checkpoint.buffers}


def policy_sha256(checkpoint: checkpoint_pb2.Checkpoint) -> str:
    return next(f.sha256 for f in checkpoint.files if f.name == "policy.safetensors")


@dataclasses.dataclass(frozen=True)
class Reference:
    """An uninterrupted run to step 600 on three shards, cut every 100 steps (as the runs it is compared with: a
    cut seals the blocks of what was added since the last): its parameters and its last checkpoint."""

    params: dict[str, torch.Tensor]
    checkpoint: checkpoint_pb2.Checkpoint


def run_reference(tmp: Path) -> Reference:
    from rewind_checkpoint.server import serve as serve_checkpoints

    shards = [serve_buffers(BufferServiceSettings(port=0)) for _ in range(SHARDS)]
    checkpoints = serve_checkpoints(checkpoint_config(f"file://{tmp}/store", max_message_mb=64))
    try:
        result = train(tiny(buffer_addresses=tuple(s.address for s in shards), checkpoint_address=checkpoints.address,
                            out_dir=str(tmp / "runs"), steps=600, checkpoint_interval_steps=100))
        with CheckpointClient(checkpoints.address) as ckpt:
            return Reference(params(result.agent), ckpt.lookup(which=result.checkpoint).checkpoint)
    finally:
        for host in (*shards, checkpoints):
            host.stop(grace_s=0.5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    def save(ref: Reference, path: Path) -> None:
        torch.save({"params": ref.params, "checkpoint": ref.checkpoint.SerializeToString()}, path)

    def load(path: Path) -> Reference:
        saved = torch.load(path)
        return Reference(saved["params"], checkpoint_pb2.Checkpoint.FromString(saved["checkpoint"]))

    return computed_once(tmp_path_factory, "sharded-trainer-reference.pt", run_reference, save, load)


class Shards:
    """Three `rewind buffer serve` processes, each on a port of its own."""

    def __init__(self, tmp_path: Path, ports: list[int] | None = None) -> None:
        self.ports = ports or [free_port() for _ in range(SHARDS)]
        self.procs = [ServiceProcess(tmp_path, *BUFFER_FLAGS, port=p) for p in self.ports]

    @property
    def addresses(self) -> str:
        return ",".join(p.address for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def test_the_reference_run_splits_its_episodes_and_records_one_cut(reference):
    cut, checkpoint = cut_of(reference.checkpoint), reference.checkpoint
    assert (cut["shards"], cut["routing_seed"], cut["generation"]) == (SHARDS, 1, 1)
    held = {b["file"]: int(b["episodes_added"]) for b in cut["buffers"]}
    # Every training episode went to exactly one shard, each shard took some, test_buffer stayed whole.
    assert sum(held[f] for f in SHARD_FILES) == checkpoint.episode == 3
    assert set(blocks_of(checkpoint)) == {*SHARD_FILES, "test_buffer.snapshot"}
    assert [b.address for b in checkpoint.buffers if b.buffer == "test_buffer"] == \
        [b.address for b in checkpoint.buffers if b.file == SHARD_FILES[0]]


def test_kill_9_on_three_shards_resumes_exactly_on_new_shards_and_another_shard_count_is_refused(reference,
                                                                                                  tmp_path):
    shards = Shards(tmp_path)
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    try:
        trainer = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", shards.addresses, "--steps", "600",
                                 "--checkpoint-interval-steps", "100")
        committed = trainer.wait_until_step(220)
        trainer.proc.kill()
        assert trainer.wait() == -signal.SIGKILL
        with CheckpointClient(ckpt.address) as c:
            killed_at = c.lookup(*RUN, "latest").checkpoint
        assert killed_at.step >= committed and cut_of(killed_at)["generation"] == 1
        shards.stop()  # the shards are gone too: nothing survives but the cut
        shards = Shards(tmp_path)  # on other ports: a shard is known by its place, not its address
        again = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", shards.addresses, "--steps", "600",
                               "--checkpoint-interval-steps", "100", "--resume-from-checkpoint", "latest")
        assert again.wait() == 0, again.output()
        with CheckpointClient(ckpt.address) as c:
            latest = c.lookup(*RUN, "latest").checkpoint
            policy = load_safetensors(c.read(latest, "policy.safetensors"))
        assert latest.resumed_from == killed_at.path and latest.step == 600
        assert_identical(policy, {k: v for k, v in reference.params.items() if k in policy})
        assert policy_sha256(latest) == policy_sha256(reference.checkpoint)
        assert blocks_of(latest) == blocks_of(reference.checkpoint)  # every shard's content, block for block
        # A new generation per resume; the shards refuse the old one's writes.
        assert cut_of(latest)["generation"] == 2
        with BufferClient(shards.procs[1].address) as shard:
            assert shard.stats().generation == 2
            with pytest.raises(FailedPrecondition, match="generation 1.*generation 2"):
                shard.add({"obs": torch.zeros(4, 3), "action": torch.zeros(4, 1), "reward": torch.zeros(4),
                           "terminated": torch.zeros(4, dtype=torch.bool)}, generation=1)
        # The cut goes back into three shards only, and nothing is touched when it cannot.
        before = [BufferClient(p.address).stats().episodes_added for p in shards.procs]
        two = tiny(buffer_addresses=tuple(p.address for p in shards.procs[:2]), checkpoint_address=ckpt.address,
                   out_dir=str(tmp_path / "runs"), steps=700, resume_from_checkpoint="latest")
        with pytest.raises(FailedPrecondition, match="cut from 3 shards, and this run has 2"):
            train(two, explicit={"steps", "resume_from_checkpoint", "buffer_addresses"})
        assert [BufferClient(p.address).stats().episodes_added for p in shards.procs] == before
    finally:
        shards.stop()
        ckpt.stop()


def test_a_killed_shard_is_left_out_then_restored_from_the_last_cut_and_rejoins(tmp_path):
    shards = Shards(tmp_path)
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    trainer = None
    try:
        trainer = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", shards.addresses, "--steps",
                                 "100000", "--checkpoint-interval-steps", "100")
        trainer.wait_until_step(420)  # episodes 1 and 2 added: the second shard holds the first, the first the second
        lost = shards.procs[1]
        lost.proc.kill()  # a real kill -9 of the shard's process
        lost.stop()
        status = trainer.client.status()
        # Training goes on with the other two shards.
        wait_for(lambda: trainer.client.status().step >= status.step + 50, "50 more steps on two shards",
                 timeout=120)
        assert "readmitted" not in trainer.output()  # nothing to readmit while it is down
        pages = re.search(r"serving HTTP on (http://\S+)", trainer.output()).group(1)
        metrics = urllib.request.urlopen(f"{pages}/metrics", timeout=10).read().decode()
        assert re.search(r'rewind_trainer_replay_shards\{[^}]*state="down"\} 1\.0', metrics), metrics
        assert re.search(r'rewind_trainer_replay_shards\{[^}]*state="live"\} 2\.0', metrics)
        shards.procs[1] = ServiceProcess(tmp_path, *BUFFER_FLAGS, port=shards.ports[1])  # restarted, empty
        wait_for(lambda: "readmitted" in trainer.output(), "the shard restored and readmitted", timeout=120)
        with CheckpointClient(ckpt.address) as c:
            cuts = {cp.step: cp for cp in c.list(*RUN)}
        restored_from = next(line for line in trainer.output().splitlines() if "readmitted" in line)
        step = int(restored_from.split("step-")[1][:10])
        expected = next(int(b["episodes_added"]) for b in cut_of(cuts[step])["buffers"]
                        if b["file"] == SHARD_FILES[1])
        with BufferClient(shards.procs[1].address) as shard:
            stats = shard.stats()
            assert stats.generation == 1 and stats.episodes_added >= expected  # the cut's episodes, and new ones
        # The next cut takes all three again, the restored one included.
        done_step, path = trainer.client.checkpoint(wait=True, timeout=120)
        with CheckpointClient(ckpt.address) as c:
            cut = cut_of(c.lookup(which=path).checkpoint)
        assert cut["shards"] == 3 and {b["file"] for b in cut["buffers"]} >= set(SHARD_FILES)
        trainer.proc.send_signal(signal.SIGTERM)
        assert trainer.wait() == 0, trainer.output()
    finally:
        if trainer is not None:
            trainer.stop()
        shards.stop()
        ckpt.stop()


def test_local_shards_split_the_capacity_and_keep_test_buffer_whole(tmp_path, monkeypatch):
    import rewind

    settings = TrainSettings(buffer_addresses=("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), buffer_size=1000)
    services = open_services(settings)
    try:
        assert [(p.name, p.file, p.client.address, p.capacity) for p in services.parts] == [
            ("buffer", "buffer.shard-0.snapshot", "127.0.0.1:1", 334),
            ("buffer", "buffer.shard-1.snapshot", "127.0.0.1:2", 333),
            ("buffer", "buffer.shard-2.snapshot", "127.0.0.1:3", 333),
            ("test_buffer", "test_buffer.snapshot", "127.0.0.1:1", 1000)]
    finally:
        services.close()
    monkeypatch.chdir(tmp_path)
    result = rewind.train(local_services=True, shards=2, store=f"file://{tmp_path}/store", model_size="tiny",
                          steps=60, seed_steps=60, eval_episodes=0, agent={"batch_size": 8}, port=-1, progress=False,
                          buffer_size=10_000, torch_threads=1)
    manifest = json.loads((Path(result.checkpoint.removeprefix("file://")) / "manifest.json").read_text())
    cut = manifest["extra"]["cut"]
    assert result.step == 60 and cut["shards"] == 2
    assert sorted(b["file"] for b in cut["buffers"]) == ["buffer.shard-0.snapshot", "buffer.shard-1.snapshot",
                                                         "test_buffer.snapshot"]
