"""The buffer service's TOML configuration (the seed's cfg/default.toml keys) and device choice."""

from __future__ import annotations

import pytest
import torch

from rewind.errors import FailedPrecondition, InvalidArgument
from rewind_buffer import episode_buffer
from rewind_buffer.settings import BufferServiceSettings, BufferSettings, default_config_text
from rewind_runtime import settings as mechanism


def load_config(path=None) -> BufferServiceSettings:
    return mechanism.load(BufferServiceSettings, file=str(path) if path else None, environ={}).settings


def test_packaged_defaults_are_the_seeds():
    config = load_config()
    assert config.buffer_defaults == BufferSettings(buffer_size=1_000_000, batch_size=256, min_history=100_000,
                                                    horizon=3)
    assert config.buffers == ("buffer", "test_buffer") and config.port == 50051


def test_the_printed_default_file_reads_back_as_the_defaults(tmp_path):
    path = tmp_path / "default.toml"
    path.write_text(default_config_text())
    assert load_config(path) == BufferServiceSettings()
    assert "[config]\nbuffer_size = 1_000_000" in default_config_text()


def test_file_values_and_overrides(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("[config]\nbuffer_size = 5_000\nhorizon = 5\nmin_history = 10\n[service]\nbuffers = ['a']\n")
    config = load_config(path)
    assert (config.buffer_size, config.horizon, config.batch_size) == (5000, 5, 256)
    assert config.buffers == ("a",)
    assert config.buffer_defaults.replace(horizon=7, batch_size=None).horizon == 7


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[config]\nbuffer_sise = 5\n", "unknown key(s) ['buffer_sise'] in [config]"),
        ("[other]\n", "unknown table(s) ['other']"),
        ("[config]\nbuffer_size = 0\n", "buffer_size: must be a positive integer"),
        ("[config]\nbuffer_size = 10\nmin_history = 11\n", "min_history: 11 exceeds buffer_size 10"),
        ("[service]\nstorage_device = 'tpu'\n", "storage_device: 'tpu'"),
        ("[service]\nbuffers = ['../x']\n", "buffer: '../x' is not allowed"),
        ("[config\n", "is not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    assert needle in str(info.value)


def test_missing_file():
    with pytest.raises(InvalidArgument, match="cannot read /no/such.toml"):
        load_config("/no/such.toml")


def test_storage_device_follows_the_2_5x_rule(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10 * gib, 80 * gib))
    assert episode_buffer.choose_storage_device(3 * gib) == torch.device("cuda", 0)  # 7.5 < 10
    assert episode_buffer.choose_storage_device(4 * gib) == torch.device("cpu")  # 10 is not < 10
    assert episode_buffer.choose_storage_device(1, "cpu") == torch.device("cpu")
    with pytest.raises(FailedPrecondition, match="storage_device: cuda needs 2.5 x"):
        episode_buffer.choose_storage_device(5 * gib, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert episode_buffer.choose_storage_device(1) == torch.device("cpu")
    with pytest.raises(FailedPrecondition, match="no CUDA device"):
        episode_buffer.choose_storage_device(1, "cuda")


def test_the_docs_show_the_generated_configuration_file():
    from tests.support.docs import section

    text = section("how-to/buffer-service.md", "The configuration file")
    body = default_config_text().split("\n\n", 1)[1]  # the file without its header comment
    assert f"```toml\n{body}```" in text, ("docs/how-to/buffer-service.md's buffer config block is stale: paste "
                                           "--print-config's output")
