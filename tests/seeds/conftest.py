from __future__ import annotations

import pytest

from rewind.addresses import CHECKPOINT_ADDRESS
from rewind.health import answers


@pytest.fixture(autouse=True)
def nothing_at_the_default_address():
    """The seeds' commands name no service: with none at the default address they start their own."""
    assert not answers(CHECKPOINT_ADDRESS), (
        f"a checkpoint service answers at {CHECKPOINT_ADDRESS}; stop it, since the seed tests run as a user "
        "with no service running")
