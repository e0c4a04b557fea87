"""Client channels: message limits, and retries on UNAVAILABLE only."""

from __future__ import annotations

import json

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Retry only when the server could not be reached; any other status is an
# answer, and retrying a non-idempotent call (add) on it would be wrong.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def make_channel(address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """An insecure channel to `address` ("host:port") with Rewind's options."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _SERVICE_CONFIG),
        ],
    )
