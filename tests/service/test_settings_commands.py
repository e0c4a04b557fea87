"""Settings variables of commands that reach (or fail to reach) a service."""

from __future__ import annotations

from rewind_cli.main import build_parser, main
from rewind_cli.train import settings_from_args
from rewind_trainer.api import placement


def test_client_commands_read_no_settings_variables(monkeypatch):
    monkeypatch.setenv("REWIND_STPES", "5")  # would stop `buffer serve` and `train` at start
    assert main(["health", "--address", "127.0.0.1:1", "--timeout", "0.2"]) == 1


def test_the_store_variable_of_the_checkpoint_service_does_not_break_a_plain_train(monkeypatch, capsys):
    monkeypatch.setenv("REWIND_STORE", "s3://bucket/prefix")
    # Reaches the service check (nothing listens on port 1), not the --store mistake.
    assert main(["train", "--buffer-address", "127.0.0.1:1", "--port", "-1", "--no-progress",
                 "--wait-for-services-s", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "--store" not in err
    # Named as a flag, the store is the run's: it starts local services on it.
    args = build_parser().parse_args(["train", "--store", "file:///tmp/x"])
    settings, explicit = settings_from_args(args)
    assert placement(settings, explicit).local_services and "store" in explicit


