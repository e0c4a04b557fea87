"""The `rewind` command line (installed as `rewind_cli`).

`main` builds the parser from one module per command group: `buffer`,
`checkpoint` (`rewind ckpt`), `train`, `trainer` and `health`; `serving`
holds what the `serve` commands share.
"""
