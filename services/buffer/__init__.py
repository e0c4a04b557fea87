"""Rewind's buffer service: a replay buffer for TD-MPC2-style agents, over gRPC.

Installed as the `rewind_buffer` package. Modules, one concern each:
`settings` (the service's and a buffer's settings), `schema` (episode
validation), `writer` (whole-episode placement and FIFO eviction),
`torchrl_adapter` (every use of torchrl internals), `episode_buffer` (one
named buffer), `registry` (the named buffers), `captures` (states copied now,
streamed later), `snapshot` (the snapshot blob format), `servicer` (gRPC
glue) and `server` (`serve()` and `serve_in_process()`).

Importing the package imports nothing else, so the command line can read the
settings without loading torch.
"""
