"""One settings mechanism: flags, REWIND_<FIELD> variables and config-file keys from one dataclass per command."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

import pytest

from rewind.errors import InvalidArgument
from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.settings import CheckpointSettings
from rewind_cli import serving
from rewind_cli.main import build_parser, main
from rewind_cli.train import settings_from_args
from rewind_runtime import settings as mechanism
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.settings import TrainSettings

COMMANDS = {("buffer", "serve"): BufferServiceSettings, ("ckpt", "serve"): CheckpointSettings,
            ("train",): TrainSettings}


def parse(argv: list[str], environ: dict[str, str], monkeypatch) -> argparse.Namespace:
    """Parse a command line with exactly `environ` as the REWIND_* environment."""
    for name in [k for k in os.environ if k.startswith("REWIND_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return build_parser().parse_args(argv)


def loaded(argv, environ, monkeypatch) -> mechanism.Loaded:
    args = parse(argv, environ, monkeypatch)
    settings_cls = COMMANDS[("train",) if argv[0] == "train" else tuple(argv[:2])]
    return mechanism.load(settings_cls, file=args.config, given=mechanism.flags(settings_cls, args))


def test_a_flag_beats_its_variable_which_beats_the_config_file_and_the_defaults(tmp_path, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 3\neval_freq: 100\nsteps: 30\n")
    args = parse(["train", "--config", str(config), "--steps", "50"],
                 {"REWIND_STEPS": "40", "REWIND_SEED": "7", "REWIND_LEARNING_RATE": "0.001"}, monkeypatch)
    settings, explicit = settings_from_args(args)
    assert (settings.steps, settings.seed, settings.eval_freq, settings.learning_rate) == (50, 7, 100, 0.001)
    assert settings.keep_last_n_checkpoints == 3  # the default
    assert {"steps", "seed", "eval_freq", "learning_rate"} <= explicit and "keep_last_n_checkpoints" not in explicit
    assert sorted(loaded(["train", "--config", str(config), "--steps", "50"],
                         {"REWIND_STEPS": "40", "REWIND_SEED": "7", "REWIND_LEARNING_RATE": "0.001"},
                         monkeypatch).from_environment) == ["learning_rate", "seed"]


def test_switches_take_true_and_false_and_a_flag_still_wins(monkeypatch):
    assert settings_from_args(parse(["train"], {"REWIND_MPC": "false"}, monkeypatch))[0].mpc is False
    assert settings_from_args(parse(["train", "--mpc"], {"REWIND_MPC": "false"}, monkeypatch))[0].mpc is True
    assert settings_from_args(parse(["train", "--no-mpc"], {"REWIND_MPC": "yes"}, monkeypatch))[0].mpc is False
    assert settings_from_args(parse(["train"], {"REWIND_PROGRESS": "0"}, monkeypatch))[0].progress is False
    assert settings_from_args(parse(["train"], {"REWIND_PROGRESS": "on"}, monkeypatch))[0].progress is True
    assert settings_from_args(parse(["train", "--no-progress"], {}, monkeypatch))[0].progress is False


def test_service_settings_come_from_variables_with_their_types_and_choices(monkeypatch):
    settings = loaded(["buffer", "serve"], {"REWIND_BUFFER_SIZE": "500000", "REWIND_STORAGE_DEVICE": "cpu",
                                            "REWIND_HOST": "0.0.0.0", "REWIND_PORT": "50061",
                                            "REWIND_GRACE_S": "2.5", "REWIND_BUFFERS": "a, b"}, monkeypatch).settings
    assert (settings.buffer_size, settings.storage_device, settings.host, settings.port, settings.grace_s,
            settings.buffers) == (500_000, "cpu", "0.0.0.0", 50061, 2.5, ("a", "b"))
    settings = loaded(["ckpt", "serve", "--port", "1"], {"REWIND_PORT": "2", "REWIND_STORE": "s3://b/p"},
                      monkeypatch).settings
    assert (settings.port, settings.store) == (1, "s3://b/p")
    assert loaded(["buffer", "serve"], {"REWIND_PORT": ""}, monkeypatch).settings.port == 50051  # empty is unset


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["buffer", "serve"], {"REWIND_PORT": "-3"}, "REWIND_PORT='-3': must be zero or more"),
    (["buffer", "serve"], {"REWIND_STORAGE_DEVICE": "tpu"}, "REWIND_STORAGE_DEVICE='tpu': choose from auto, cpu, cuda"),
    (["train"], {"REWIND_STEPS": "ten"}, "REWIND_STEPS='ten'"),
    (["train"], {"REWIND_MPC": "maybe"}, "REWIND_MPC='maybe': expected one of"),
    (["train"], {"REWIND_AGENT": "num_samples"}, "REWIND_AGENT='num_samples': expected KEY=VALUE"),
])
def test_a_bad_value_fails_at_start_naming_the_variable(argv, environ, message, monkeypatch, capsys):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_variable_that_is_no_setting_of_the_command_fails_at_start_naming_it(monkeypatch, capsys):
    environ = {"REWIND_STPES": "5", "REWIND_PORT": "1", "REWIND_S3_ADDRESSING_STYLE": "path", "PATH": "/bin"}
    with pytest.raises(InvalidArgument, match="REWIND_STPES: not a setting of this command"):
        mechanism.read_environ(BufferServiceSettings, environ)
    environ.pop("REWIND_STPES")
    assert mechanism.read_environ(BufferServiceSettings, environ) == {"port": 1}
    monkeypatch.setenv("REWIND_STPES", "5")
    with pytest.raises(SystemExit) as exc:
        main(["buffer", "serve"])
    assert exc.value.code == 2
    assert "REWIND_STPES: not a setting of this command" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_variable_of_another_command_is_left_to_it_and_a_typo_still_fails(command, monkeypatch, capsys):
    """REWIND_BUFFER_ADDRESS exported for the trainer must not stop `rewind buffer serve` (the issue's case)."""
    settings_cls = COMMANDS[command]
    own = {mechanism.env_name(name) for name in mechanism._by_name(settings_cls)}
    others = {mechanism.env_name(name) for cls in COMMANDS.values() for name in mechanism._by_name(cls)} - own
    assert others  # each command has variables that only the others read
    argv = list(command)
    args = parse(argv, {**dict.fromkeys(others, "not a value of this command"), "REWIND_GRACE_S": "2.5"},
                 monkeypatch)
    loaded = serving.load_settings(args, settings_cls)
    assert (loaded.explicit, loaded.settings.grace_s) == ({"grace_s"}, 2.5)  # the others' are ignored, not read
    monkeypatch.setenv("REWIND_BUFER_ADDRESS", "127.0.0.1:50051")  # a name no command has
    with pytest.raises(SystemExit) as exc:
        serving.load_settings(build_parser().parse_args(argv), settings_cls)
    assert exc.value.code == 2
    assert "REWIND_BUFER_ADDRESS: not a setting of this command, nor of any other" in capsys.readouterr().err


def test_children_started_with_their_own_flags_do_not_inherit_settings_variables():
    environ = {"REWIND_PORT": "50053", "REWIND_CONFIG": "run.yaml", "REWIND_S3_ADDRESSING_STYLE": "virtual",
               "AWS_REGION": "eu-west-1", "PATH": "/usr/bin"}
    assert mechanism.without_settings(environ) == {"REWIND_S3_ADDRESSING_STYLE": "virtual",
                                                   "AWS_REGION": "eu-west-1", "PATH": "/usr/bin"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_generated_flag_has_a_variable_a_file_key_and_help(command):
    parser = build_parser()
    sub = parser
    for word in command:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    settings_cls = COMMANDS[command]
    fields = {f.name for f in dataclasses.fields(settings_cls)}
    flags = [a for a in sub._actions if a.option_strings and a.dest not in ("help", "config", "print_config")]
    assert {a.dest for a in flags} == fields  # every field is a flag, and every flag a field
    for action in flags:
        assert action.help and f"env {mechanism.env_name(action.dest)}" in action.help, action.dest
        assert f"--{action.dest.replace('_', '-')}" in action.option_strings
        assert f"--{action.dest}" in action.option_strings  # the underscore spelling too
        assert mechanism.read_environ(settings_cls, {mechanism.env_name(action.dest): ""}) == {}
    # ... and a config-file key: a file naming every field at its default reads back as the defaults.
    defaults = settings_cls()
    assert mechanism.from_mapping(settings_cls, dataclasses.asdict(defaults), "file") == dataclasses.asdict(defaults)


def test_rewind_agent_reaches_the_agent(monkeypatch):
    args = parse(["train", "--agent", "horizon=4"], {"REWIND_AGENT": "num_samples=48,num_elites=6"}, monkeypatch)
    settings, explicit = settings_from_args(args)
    assert settings.agent == {"num_samples": 48, "num_elites": 6, "horizon": 4} and "agent" in explicit
    cfg = AgentConfig(obs_dim=3, action_dim=1, model_size=settings.model_size, **settings.agent)
    assert (cfg.num_samples, cfg.num_elites, cfg.horizon) == (48, 6, 4)
    args = parse(["train"], {"REWIND_AGENT": '{"num_samples": 96}'}, monkeypatch)
    assert settings_from_args(args)[0].agent == {"num_samples": 96}


@pytest.mark.parametrize(("agent", "message"), [
    ({"num_sampels": 8}, "agent.num_sampels: not a hyperparameter of the agent"),
    ({"lr": 0.1}, "agent.lr: set it with its own setting"),
])
def test_an_unknown_agent_key_fails_at_start_naming_it(agent, message, monkeypatch, capsys):
    with pytest.raises(InvalidArgument, match=message):
        TrainSettings(agent=agent)
    key, value = next(iter(agent.items()))
    assert main(["train", "--agent", f"{key}={value}", "--port", "-1"]) == 1
    assert message in capsys.readouterr().err


def test_a_yaml_file_takes_the_same_names_and_unknown_keys_name_themselves(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: Pendulum-v1\ntotal-timesteps: 300\nagent: {num_samples: 64}\n")
    assert mechanism.read_file(TrainSettings, path) == {"task": "Pendulum-v1", "steps": 300,
                                                        "agent": {"num_samples": 64}}
    path.write_text("stpes: 3\nlearning_rate: 0.1\n")
    with pytest.raises(InvalidArgument, match="unknown setting.*stpes"):
        mechanism.read_file(TrainSettings, path)
    path.write_text("steps: ten\n")
    with pytest.raises(InvalidArgument, match="steps: invalid literal"):
        mechanism.read_file(TrainSettings, path)


def test_hydra_style_key_value_arguments_set_any_setting_and_aliases(monkeypatch):
    args = parse(["train", "task=Pendulum-v1", "total_timesteps=16000", "agent.num_samples=256", "output_dir=out",
                  "mpc=false", "model_size=1"], {}, monkeypatch)
    settings, explicit = settings_from_args(args)
    assert (settings.task, settings.steps, settings.agent, settings.out_dir, settings.mpc, settings.model_size) == (
        "Pendulum-v1", 16000, {"num_samples": 256}, "out", False, "1")
    assert {"task", "steps", "agent", "out_dir", "mpc", "model_size"} <= explicit


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "stepz=3"], "unknown setting(s) stepz"),
    (["train", "steps"], "'steps': expected KEY=VALUE"),
    (["train", "steps=3", "--steps", "4"], "steps: given both as KEY=VALUE and as a flag"),
    (["train", "steps=ten"], "steps: invalid literal"),
])
def test_bad_key_value_arguments_name_themselves(argv, message, monkeypatch):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        settings_from_args(parse(argv, {}, monkeypatch))


def test_every_alias_is_a_flag_a_file_key_and_a_keyword(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("total_timesteps: 300\noutput_dir: out\n")
    assert mechanism.read_file(TrainSettings, path) == {"steps": 300, "out_dir": "out"}
    assert mechanism.from_mapping(TrainSettings, {"output_dir": "o", "total_timesteps": 5}, "train()") == {
        "out_dir": "o", "steps": 5}
    args = build_parser().parse_args(["train", "--output_dir", "o", "--total_timesteps", "5"])
    assert mechanism.flags(TrainSettings, args) == {"out_dir": "o", "steps": 5}


def test_shard_settings_are_checked_and_decide_where_the_shards_come_from(monkeypatch):
    from rewind_trainer.api import placement
    from rewind_trainer.connections import open_services

    args = parse(["train", "--buffer-addresses", "10.0.0.1:50051,10.0.0.2:50051"], {}, monkeypatch)
    settings, explicit = settings_from_args(args)
    assert settings.buffer_addresses == ("10.0.0.1:50051", "10.0.0.2:50051") and settings.shard_count == 2
    assert placement(settings, explicit) == settings  # named shards are used as they are
    for changes, message in [
            ({"buffer_addresses": ("a:1", "a:1")}, "buffer_addresses: a shard is named twice"),
            ({"buffer_addresses": ("a:1", "b:1"), "shards": 3}, "shards: 3, but buffer_addresses names 2"),
            ({"shards": 0}, "shards"), ({"shards": 65}, "shards")]:
        with pytest.raises(InvalidArgument, match=message):
            TrainSettings(**changes)
    # --shards N alone starts the N shards (and a checkpoint service) for the run.
    assert placement(TrainSettings(shards=3), {"shards"}).local_services
    with pytest.raises(InvalidArgument, match="shards: 3 shards need --local-services, which starts them, or "
                                              "--buffer-addresses naming them"):
        open_services(TrainSettings(shards=3))
