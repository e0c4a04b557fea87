"""Maintenance scripts: run each from the repository root as a module (`python -m scripts.protogen`)."""
