"""The Rewind checkpoint service (installed as `rewind_checkpoint`).

Layered store -> layout -> manifest -> retention -> catalog -> upload ->
servicer, with `settings` and `server` (`serve()`, `serve_in_process()`) on
top; see the service's README.
"""
