"""Fixtures the system tests share."""

from __future__ import annotations

import pytest

from tests.support.processes import ServiceProcess
from tests.support.trainer import BUFFER_FLAGS


@pytest.fixture
def services(tmp_path):
    """A buffer service and a checkpoint service (on a file store in tmp_path), each its own process."""
    buffer = ServiceProcess(tmp_path, *BUFFER_FLAGS)
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    yield buffer, ckpt
    buffer.stop()
    ckpt.stop()
