"""Settings from REWIND_<FLAG> variables: precedence, conversion, errors and hygiene."""

from __future__ import annotations

import pytest

from rewind import env_flags
from rewind.cli import build_parser, main
from rewind.train_cli import settings_from_args


def parse(argv: list[str], environ: dict[str, str]):
    args = build_parser().parse_args(argv)
    args.from_environment = env_flags.apply(args, environ)
    return args


def test_a_flag_beats_its_variable_which_beats_the_config_file_and_the_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 3\neval_freq: 100\nsteps: 30\n")
    args = parse(["train", "--config", str(config), "--steps", "50"],
                 {"REWIND_STEPS": "40", "REWIND_SEED": "7", "REWIND_LEARNING_RATE": "0.001"})
    settings, explicit = settings_from_args(args)
    assert (settings.steps, settings.seed, settings.eval_freq, settings.learning_rate) == (50, 7, 100, 0.001)
    assert settings.keep_last_n_checkpoints == 3  # the default
    assert {"steps", "seed", "eval_freq", "learning_rate"} <= explicit and "keep_last_n_checkpoints" not in explicit
    assert sorted(args.from_environment) == ["REWIND_LEARNING_RATE", "REWIND_SEED"]


def test_switches_take_true_and_false_and_a_flag_still_wins():
    assert settings_from_args(parse(["train"], {"REWIND_MPC": "false"}))[0].mpc is False
    assert settings_from_args(parse(["train", "--mpc"], {"REWIND_MPC": "false"}))[0].mpc is True
    assert settings_from_args(parse(["train", "--no-mpc"], {"REWIND_MPC": "yes"}))[0].mpc is False
    assert parse(["train"], {"REWIND_NO_PROGRESS": "1"}).no_progress is True
    assert parse(["train"], {"REWIND_NO_PROGRESS": "off"}).no_progress is False


def test_service_flags_come_from_variables_with_their_types_and_choices():
    args = parse(["buffer", "serve"], {"REWIND_BUFFER_SIZE": "5000", "REWIND_STORAGE_DEVICE": "cpu",
                                       "REWIND_HOST": "0.0.0.0", "REWIND_PORT": "50061", "REWIND_GRACE_S": "2.5"})
    assert (args.buffer_size, args.storage_device, args.host, args.port, args.grace_s) == (
        5000, "cpu", "0.0.0.0", 50061, 2.5)
    args = parse(["ckpt", "serve", "--port", "1"], {"REWIND_PORT": "2", "REWIND_STORE": "s3://b/p"})
    assert (args.port, args.store) == (1, "s3://b/p")
    assert parse(["buffer", "serve"], {"REWIND_PORT": ""}).port is None  # empty is unset


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["buffer", "serve"], {"REWIND_PORT": "-3"}, "REWIND_PORT='-3': must be zero or more"),
    (["buffer", "serve"], {"REWIND_STORAGE_DEVICE": "tpu"}, "REWIND_STORAGE_DEVICE='tpu': choose from auto, cpu, cuda"),
    (["train"], {"REWIND_STEPS": "ten"}, "REWIND_STEPS='ten'"),
    (["train"], {"REWIND_MPC": "maybe"}, "REWIND_MPC='maybe': expected one of"),
])
def test_a_bad_value_fails_at_start_naming_the_variable(argv, environ, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv, environ)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_variable_that_is_no_setting_of_the_command_is_reported(monkeypatch, capsys):
    args = parse(["buffer", "serve"], {})
    environ = {"REWIND_STPES": "5", "REWIND_PORT": "1", "REWIND_S3_ADDRESSING_STYLE": "path", "PATH": "/bin"}
    assert env_flags.unknown(args, environ) == ["REWIND_STPES"]
    # Client commands do not read variables at all.
    assert env_flags.unknown(build_parser().parse_args(["trainer", "status"]), environ) == []
    monkeypatch.setenv("REWIND_STPES", "5")
    monkeypatch.setenv("REWIND_PRINT_CONFIG", "true")  # so the command prints and exits at once
    assert main(["buffer", "serve"]) == 0
    err = capsys.readouterr().err
    assert "rewind: warning: REWIND_STPES is not a setting of `rewind buffer serve`; ignored" in err


def test_the_store_variable_of_the_checkpoint_service_does_not_break_a_plain_train(monkeypatch, capsys):
    monkeypatch.setenv("REWIND_STORE", "s3://bucket/prefix")
    # Reaches the service check (nothing listens on port 1), not the --store mistake.
    assert main(["train", "--buffer-address", "127.0.0.1:1", "--port", "-1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "--store" not in err
    assert main(["train", "--store", "file:///tmp/x", "--port", "-1"]) == 1
    assert "--store and --checkpoint-dir choose the store of --local-services" in capsys.readouterr().err


def test_children_started_with_their_own_flags_do_not_inherit_flag_variables():
    environ = {"REWIND_PORT": "50053", "REWIND_CONFIG": "run.yaml", "REWIND_S3_ADDRESSING_STYLE": "virtual",
               "AWS_REGION": "eu-west-1", "PATH": "/usr/bin"}
    assert env_flags.without_flags(environ) == {"REWIND_S3_ADDRESSING_STYLE": "virtual", "AWS_REGION": "eu-west-1",
                                                "PATH": "/usr/bin"}
