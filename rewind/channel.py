"""Client channels: message limits, retries on UNAVAILABLE only, TLS and the bearer token."""

from __future__ import annotations

import json

import grpc

from rewind.security import ClientSecurity, secure

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


def make_channel(address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to `address` ("host:port") with Rewind's options.

    Args:
        address: "host:port" of the service.
        max_message_bytes: message limit, both ways.
        security: token and TLS; by default from REWIND_TOKEN_FILE and REWIND_TLS_*
            (see rewind.security). TLS when a CA or client certificate is set.
    """
    security = ClientSecurity.from_env() if security is None else security
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
        *security.channel_options(),
    ]
    credentials = security.credentials()
    channel = (grpc.secure_channel(address, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(address, options=options))
    return secure(channel, security)
