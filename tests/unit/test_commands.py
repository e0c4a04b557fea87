"""rewind.commands.resume_command: the command `rewind train` prints, and the history pages copy."""

from __future__ import annotations

import shlex

import pytest

from rewind.commands import resume_command, store_url
from rewind_trainer.settings import TrainSettings

PATH = "file:///data/rewind/tdmpc2/pendulum-v1-seed1/step-0000004000"


@pytest.mark.parametrize("settings,expected", [
    (TrainSettings(), f"rewind train --resume-from-checkpoint {PATH}"),
    (TrainSettings(local_services=True, store="file:///data/rewind"),
     f"rewind train --local-services --store file:///data/rewind --resume-from-checkpoint {PATH}"),
    (TrainSettings(local_services=True),
     f"rewind train --local-services --store file://./rewind-data --resume-from-checkpoint {PATH}"),
    (TrainSettings(local_services=True, checkpoint_dir="./ckpts", store="file:///ignored"),
     f"rewind train --local-services --store file://./ckpts --resume-from-checkpoint {PATH}"),
    (TrainSettings(local_services=True, checkpoint_dir="s3://bucket/rewind"),
     f"rewind train --local-services --store s3://bucket/rewind --resume-from-checkpoint {PATH}"),
    (TrainSettings(checkpoint_address="ckpt.rewind.svc:50052"),
     f"rewind train --checkpoint-address ckpt.rewind.svc:50052 --resume-from-checkpoint {PATH}"),
    (TrainSettings(buffer_address="10.0.0.7:50051", checkpoint_address="10.0.0.8:50052"),
     "rewind train --buffer-address 10.0.0.7:50051 --checkpoint-address 10.0.0.8:50052 "
     f"--resume-from-checkpoint {PATH}"),
    # local services started on random ports: their store, never their addresses
    (TrainSettings(local_services=True, store="file:///d", buffer_address="127.0.0.1:40001",
                   checkpoint_address="127.0.0.1:40002"),
     f"rewind train --local-services --store file:///d --resume-from-checkpoint {PATH}"),
    # a sharded run: as many shards again, started for it or named in their order
    (TrainSettings(local_services=True, store="file:///d", shards=3,
                   buffer_addresses=("127.0.0.1:40001", "127.0.0.1:40003", "127.0.0.1:40005")),
     f"rewind train --local-services --store file:///d --shards 3 --resume-from-checkpoint {PATH}"),
    (TrainSettings(buffer_addresses=("10.0.0.1:50051", "10.0.0.2:50051"), checkpoint_address="10.0.0.8:50052"),
     "rewind train --buffer-addresses 10.0.0.1:50051,10.0.0.2:50051 --checkpoint-address 10.0.0.8:50052 "
     f"--resume-from-checkpoint {PATH}"),
])
def test_the_command_from_a_manifests_settings(settings, expected):
    as_recorded = settings.to_dict()  # what a manifest's config["settings"] holds
    assert resume_command(as_recorded, PATH) == expected
    assert store_url(as_recorded) == settings.store_url


def test_an_older_manifest_without_placement_keys_gets_the_defaults():
    expected = f"rewind train --resume-from-checkpoint {PATH}"
    assert resume_command({"task": "Pendulum-v1", "steps": 8000}, PATH) == expected
    assert resume_command({}, "tdmpc2/run/step-0000000010") == (
        "rewind train --resume-from-checkpoint tdmpc2/run/step-0000000010")


def test_odd_characters_are_quoted_for_the_shell():
    settings = {"local_services": True, "store": "file:///my data/rewind"}
    command = resume_command(settings, "/my data/a/b/step-0000000001")
    assert command == ("rewind train --local-services --store 'file:///my data/rewind' --resume-from-checkpoint "
                       "'/my data/a/b/step-0000000001'")
    assert shlex.split(command)[-1] == "/my data/a/b/step-0000000001"
