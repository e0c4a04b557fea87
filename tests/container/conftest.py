from __future__ import annotations

import pytest

from tests.support.containers import IMAGE, build_image, image_bytes


@pytest.fixture(scope="session")
def image():
    """The CPU image, built once per session from the working tree (cached layers are reused)."""
    seconds = build_image()
    print(f"\nimage {IMAGE}: built in {seconds:.0f} s, {image_bytes() / 1e9:.2f} GB")
    return IMAGE
