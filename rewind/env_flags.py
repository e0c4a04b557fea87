"""Flags from the environment: `--buffer-address` can also be given as REWIND_BUFFER_ADDRESS.

Containers are configured by environment variables (docker compose, Kubernetes
ConfigMaps), so every flag of the long-running commands (`rewind buffer serve`,
`rewind ckpt serve`, `rewind train`) has one. A flag on the command line wins
over its variable; the variable wins over a config file and the defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

PREFIX = "REWIND_"
# Settings read directly by the code, not flags: a child process still needs them.
NOT_FLAGS = frozenset({"REWIND_S3_ADDRESSING_STYLE"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_name(dest: str) -> str:
    """The variable for a flag's destination: buffer_address -> REWIND_BUFFER_ADDRESS."""
    return PREFIX + dest.upper()


def without_flags(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus flag variables, for a child process that gets its own flags.

    A trainer started with REWIND_PORT or REWIND_CONFIG must not hand them to
    the buffer service it starts with --local-services.
    """
    return {k: v for k, v in environ.items() if not k.startswith(PREFIX) or k in NOT_FLAGS}


def enable(parser: argparse.ArgumentParser) -> None:
    """Mark a (sub)command whose flags may come from the environment."""
    parser.set_defaults(env_flags=parser)
    note = f"Every flag can also be set as {PREFIX}<FLAG> (e.g. --buffer-size -> {PREFIX}BUFFER_SIZE); " \
           "a flag on the command line wins."
    parser.epilog = f"{parser.epilog}\n{note}" if parser.epilog else note


def apply(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> list[str]:
    """Fill the flags not given on the command line from their variables.

    Args:
        args: the parsed command line; only commands marked with enable() are touched.
        environ: the environment (default os.environ).

    Returns:
        The names of the variables used.

    Raises:
        SystemExit: through argparse (exit 2, one line naming the variable) when a value is invalid.
    """
    parser = getattr(args, "env_flags", None)
    if parser is None:
        return []
    environ = os.environ if environ is None else environ
    used = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._AppendAction)):
            continue
        name = env_name(action.dest)
        text = environ.get(name, "").strip()
        if not text or _given(args, action):
            continue
        setattr(args, action.dest, _convert(parser, action, name, text))
        used.append(name)
    return used


def unknown(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> list[str]:
    """REWIND_* variables that are no flag of this command (a typo, or meant for another service)."""
    parser = getattr(args, "env_flags", None)
    if parser is None:
        return []
    environ = os.environ if environ is None else environ
    known = {env_name(a.dest) for a in parser._actions if a.option_strings} | NOT_FLAGS
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in known)


def _given(args: argparse.Namespace, action: argparse.Action) -> bool:
    """Whether the command line set this flag (its default is None, absent, or False for a switch)."""
    value = getattr(args, action.dest, None)
    if isinstance(action, argparse._StoreTrueAction):
        return bool(value)
    return value is not None


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, name: str, text: str) -> object:
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        parser.error(f"{name}={text!r}: expected one of {sorted(_TRUE | _FALSE)}")
    try:
        value = action.type(text) if callable(action.type) else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        parser.error(f"{name}={text!r}: {exc}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{name}={text!r}: choose from {', '.join(map(str, action.choices))}")
    return value
