"""The client's token and TLS flags are taken off any command line first, so they must never share a
name with a setting of any command (a server's --tls-cert-file is its own certificate, not a client's)."""

from __future__ import annotations

import dataclasses

from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.settings import CheckpointSettings
from rewind_cli.security import FLAGS, take
from rewind_trainer.settings import TrainSettings


def test_no_client_flag_is_also_a_setting():
    for cls in (BufferServiceSettings, CheckpointSettings, TrainSettings):
        flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)}
        assert not flags & set(FLAGS), cls.__name__


def test_the_flags_are_taken_anywhere_before_a_double_dash(monkeypatch, tmp_path):
    token = tmp_path / "t"
    token.write_text("x\n")
    for variable in FLAGS.values():
        monkeypatch.delenv(variable, raising=False)
    rest = take(["ckpt", "ls", f"--token-file={token}", "--address", "a:1", "--", "--tls-server-name", "n"])
    assert rest == ["ckpt", "ls", "--address", "a:1", "--", "--tls-server-name", "n"]
    import os

    assert os.environ["REWIND_TOKEN_FILE"] == str(token) and "REWIND_TLS_SERVER_NAME" not in os.environ
