"""Small settings the in-process services of the tests run with."""

from __future__ import annotations

from rewind_buffer.settings import BufferServiceSettings

# The buffer service's settings; its buffers get the four buffer settings.
SMALL = BufferServiceSettings(buffer_size=2000, batch_size=8, min_history=100, horizon=3)


def checkpoint_config(store_url: str, **overrides):
    from rewind_checkpoint.settings import CheckpointSettings

    # Short store timeouts so outage tests finish quickly; 5 MiB parts so
    # multipart uploads happen with small files.
    base = dict(store=store_url, port=0, store_timeout_s=1.0, store_retries=2, part_mb=5, grace_s=0.5,
                max_message_mb=8)
    return CheckpointSettings(**{**base, **overrides})
