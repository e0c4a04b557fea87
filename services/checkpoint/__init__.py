"""The Rewind checkpoint service (installed as `rewind_checkpoint`).

Layered store (the protocol in store_protocol, one module per backend) ->
layout -> manifest -> retention -> catalog (with reading, reservations and
garbage) -> upload (with pulls) -> servicer, with `settings` and `server`
(`serve()`, `serve_in_process()`) on top; see the service's README.
"""
