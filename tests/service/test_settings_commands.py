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




def test_with_no_service_named_or_answering_train_starts_its_own_on_the_store_variable(monkeypatch):
    from tests.support.processes import free_port

    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("REWIND_STORE", "s3://bucket/prefix")
    settings, explicit = settings_from_args(build_parser().parse_args(["train"]))
    placed = placement(settings.replace(checkpoint_address=nobody), explicit)
    assert placed.local_services and placed.store_url == "s3://bucket/prefix"
    monkeypatch.delenv("REWIND_STORE")
    settings, explicit = settings_from_args(build_parser().parse_args(["train"]))
    assert placement(settings.replace(checkpoint_address=nobody), explicit).store_url == "file://./rewind-data"


def test_a_checkpoint_service_answering_at_the_default_address_is_used(tmp_path):
    from rewind_checkpoint.server import serve_in_process
    from tests.support.configs import checkpoint_config

    with serve_in_process(settings=checkpoint_config(f"file://{tmp_path}/store")) as client:
        settings = build_parser().parse_args(["train", "--resume-from-checkpoint", "latest"])
        settings, explicit = settings_from_args(settings)
        running = settings.replace(checkpoint_address=client.address)  # as if it were the default address
        assert placement(running, explicit) == running
