"""Every RPC of the three services survives seeded mutations of a valid request.

For each RPC (enumerated from the descriptors) the fuzzer in tests/support/fuzz.py
sends the RPC's valid template, then PER_RPC requests mutated from it with a
fixed seed, to services running in this process and seeded with state. No
request may be answered INTERNAL or UNKNOWN, run past its deadline, or lose
its answer in transport (an error message too large for the metadata limit);
a refused request must leave the state (listings, stats, the store's files)
exactly as it was; and after an accepted one, the calls that use what it made
(sample the buffer it created, look up the checkpoint it saved, ...) must not
fail either. `python -m bench.fuzz` runs the same with 1,000 requests per RPC;
the replay line in a failure's message reruns one request with --verbose.

The trainer service is fuzzed against the real TrainerServicer and Control
over a stand-in loop (see fuzz.TrainerWorld): a training run is too slow here,
and an accepted Stop would end it.
"""

from __future__ import annotations

import pytest

from tests.support import fuzz

SEED = fuzz.DEFAULT_SEED
PER_RPC = 100
# On moto's S3 server every request costs a few store round trips, and the
# fingerprint many more: fewer requests there, the same ones as on file://.
PER_RPC_S3 = 12


@pytest.fixture(scope="module")
def server_log():
    # The services run in this process: a wrongly accepted huge allocation must fail, not wake the OOM killer.
    with fuzz.memory_cap(), fuzz.ServerLog() as log:
        yield log


@pytest.fixture(scope="module")
def buffer_world():
    world = fuzz.BufferWorld()
    yield world
    world.close()


@pytest.fixture(scope="module")
def file_checkpoints(tmp_path_factory, buffer_world):
    root = tmp_path_factory.mktemp("fuzz") / "store"
    world = fuzz.CheckpointWorld(f"file://{root}", buffer_world, fuzz.file_listing(root))
    yield world
    world.close()


@pytest.fixture(scope="module")
def s3_checkpoints(moto, buffer_world):
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "REWIND_S3_ADDRESSING_STYLE"):
            env.delenv(name, raising=False)
        for name, value in moto.env.items():
            env.setenv(name, value)
        bucket = moto.create_bucket()
        world = fuzz.CheckpointWorld(f"s3://{bucket}/rewind", buffer_world,
                                     fuzz.s3_listing(moto.client(), bucket, "rewind/"))
        yield world
        world.close()


@pytest.fixture(scope="module")
def trainer_world():
    world = fuzz.TrainerWorld()
    yield world
    world.close()


def rpcs(service) -> list:
    return [pytest.param(rpc, id=rpc.name) for rpc in fuzz.all_rpcs([service])]


def check(world: fuzz.World, rpc: fuzz.Rpc, count: int, server_log: fuzz.ServerLog, store: str = "") -> None:
    report = fuzz.fuzz_rpc(world, rpc, count=count, seed=SEED, server_log=server_log, store=store)
    assert not report.failures, report.explain()
    assert report.calls == count + 1


# -- the fuzzer itself ---------------------------------------------------------------------------------


def test_every_rpc_of_every_service_has_a_template():
    assert not fuzz.missing_templates(), "RPCs the fuzzer cannot reach; add template_<Method> to their world"


def test_an_rpc_without_a_template_is_reported():
    partial = type("PartialBufferWorld", (fuzz.BufferWorld,), {"template_Sample": None})
    worlds = {**fuzz.WORLDS, fuzz.BUFFER_SERVICE.full_name: partial}
    assert fuzz.missing_templates(worlds) == ["BufferService/Sample"]
    del worlds[fuzz.TRAINER_SERVICE.full_name]
    assert fuzz.missing_templates(worlds) == ["BufferService/Sample"] + [
        rpc.key for rpc in fuzz.all_rpcs([fuzz.TRAINER_SERVICE])]


def test_the_rpcs_are_every_method_of_the_three_services():
    keys = [rpc.key for rpc in fuzz.all_rpcs()]
    assert len(keys) == sum(len(s.methods) for s in fuzz.SERVICES) == len(set(keys))
    assert {"BufferService/Restore", "CheckpointService/Save", "TrainerService/Stop"} <= set(keys)


def test_mutations_are_deterministic_per_seed_rpc_and_index():
    rpc = fuzz.rpc_by_key("CheckpointService/Save")
    template = fuzz.save_requests("agent", "run", 7, files={"a.bin": b"x" * 3000})

    def requests(seed: int) -> list[tuple[tuple[bytes, ...], str]]:
        out = []
        for i in range(60):
            m = fuzz.mutate(rpc, template, fuzz.request_rng(seed, rpc, i), [fuzz._rename_file_mutation])
            out.append((tuple(m.frames), m.description))
        return out

    first = requests(SEED)
    assert first == requests(SEED)
    assert sum(a != b for a, b in zip(first, requests(SEED + 1), strict=True)) > 50
    unmutated = tuple(r.SerializeToString() for r in template)
    assert sum(frames != unmutated for frames, _ in first) > 50
    assert len({d.split(":")[0] for _, d in first}) > 10, "too little variety in 60 mutations"


# -- the services ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", rpcs(fuzz.BUFFER_SERVICE))
def test_buffer_service_survives_fuzzing(buffer_world, server_log, rpc):
    check(buffer_world, rpc, PER_RPC, server_log)


@pytest.mark.parametrize("rpc", rpcs(fuzz.CHECKPOINT_SERVICE))
def test_checkpoint_service_on_file_survives_fuzzing(file_checkpoints, server_log, rpc):
    check(file_checkpoints, rpc, PER_RPC, server_log, "file")


@pytest.mark.parametrize("rpc", rpcs(fuzz.CHECKPOINT_SERVICE))
def test_checkpoint_service_on_s3_survives_fuzzing(s3_checkpoints, server_log, rpc):
    check(s3_checkpoints, rpc, PER_RPC_S3, server_log, "s3")


@pytest.mark.parametrize("rpc", rpcs(fuzz.TRAINER_SERVICE))
def test_trainer_service_survives_fuzzing(trainer_world, server_log, rpc):
    check(trainer_world, rpc, PER_RPC, server_log)
