"""What the `serve` commands (and `rewind train`) share: settings from flags, variables and a file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rewind_runtime import settings as mechanism

SETTINGS_NOTE = ("Every flag can also be given as a REWIND_<FLAG> variable (--buffer-size is REWIND_BUFFER_SIZE) "
                 "or as a key of the --config file. A flag wins over its variable, which wins over the file.")


def add_settings(parser: argparse.ArgumentParser, settings_cls: type, config_help: str) -> None:
    """The --config flag and one flag per field of `settings_cls`."""
    parser.add_argument("--config", help=config_help)
    mechanism.add_arguments(parser, settings_cls)
    parser.epilog = f"{parser.epilog}\n\n{SETTINGS_NOTE}" if parser.epilog else SETTINGS_NOTE
    parser.set_defaults(settings_parser=parser, settings_class=settings_cls)


def load_settings(args: argparse.Namespace, settings_cls: type, **given: Any) -> mechanism.Loaded:
    """The command's settings: defaults < --config < REWIND_* variables < flags (< `given`).

    A bad variable is a usage error (exit 2, naming it); a bad file or value raises InvalidArgument.
    """
    try:
        return mechanism.load(settings_cls, file=args.config,
                              given={**mechanism.flags(settings_cls, args), **given})
    except mechanism.EnvironmentSettingError as exc:
        args.settings_parser.error(str(exc))


def serve(args: argparse.Namespace, settings_cls: type, start: Callable, name: str,
          describe: Callable[[Any, Any], str]) -> int:
    """Run a service in the foreground until SIGTERM or Ctrl-C."""
    loaded = load_settings(args, settings_cls)
    settings = loaded.settings
    host = start(settings, handle_signals=True, explicit=loaded.explicit)
    http = f", HTTP on {host.http.url}" if host.http is not None else ""
    print(f"{name} listening on {host.address}{http} ({describe(host, settings)}); stop with Ctrl-C or SIGTERM",
          flush=True)
    host.wait()
    print(f"{name} stopped", flush=True)
    return settings.preempt_exit_code if host.signalled else 0
