"""The Rewind checkpoint service (installed as `rewind_checkpoint`)."""
