"""The server runtime every Rewind service shares (installed as `rewind_runtime`).

One module per concern: `host` (ServiceHost: health, reflection, limits,
drain), `interceptors` (errors to statuses, once for every RPC), `settings`
(one dataclass per service -> flags, REWIND_* variables, config-file keys),
`server_settings` (what every server is configured with) and `local` (a
service in a subprocess on a free loopback port).
"""
