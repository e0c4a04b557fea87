"""Where each Rewind service listens by default, and the loopback address clients try first."""

BUFFER_PORT = 50051
CHECKPOINT_PORT = 50052
TRAINER_PORT = 50053
# HTTP: /metrics on every service, and the training-history pages and API on the checkpoint service.
BUFFER_HTTP_PORT = 50071
CHECKPOINT_HTTP_PORT = 50072
TRAINER_HTTP_PORT = 50073

BUFFER_ADDRESS = f"127.0.0.1:{BUFFER_PORT}"
CHECKPOINT_ADDRESS = f"127.0.0.1:{CHECKPOINT_PORT}"
TRAINER_ADDRESS = f"127.0.0.1:{TRAINER_PORT}"
