"""The client's token and TLS flags, accepted anywhere on any `rewind` command line.

Every command that calls a service (and every service that calls another, and
each run `rewind sweep` starts) reads them from the REWIND_TOKEN_FILE and
REWIND_TLS_* variables, so the flags set those variables for this process
and its children, and are then taken off the command line before the
command's own parser sees it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from rewind.security import ENV, ClientSecurity

FLAGS = {f"--{name.replace('_', '-')}": variable for name, variable in ENV.items()}
HELP = {
    "--token-file": "file holding the bearer token to send (or REWIND_TOKEN_FILE)",
    "--tls-ca-file": "CA certificate to verify services with; turns TLS on (or REWIND_TLS_CA_FILE)",
    "--tls-client-cert-file": "client certificate, for services that require mTLS (or "
                              "REWIND_TLS_CLIENT_CERT_FILE)",
    "--tls-client-key-file": "the client certificate's key (or REWIND_TLS_CLIENT_KEY_FILE)",
    "--tls-server-name": "name to verify in the service's certificate, when not the host dialled "
                         "(or REWIND_TLS_SERVER_NAME)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """List the flags in `rewind --help` (they are taken off the command line before parsing)."""
    group = parser.add_argument_group("connecting to services (these flags may appear anywhere)")
    for flag in FLAGS:
        group.add_argument(flag, metavar="FILE" if flag.endswith("-file") else "NAME", help=HELP[flag])


def take(argv: Sequence[str]) -> list[str]:
    """Set the variables for the flags found before any `--`, and return the command line without them.

    Raises:
        InvalidArgument: a flag without its value, or a file that cannot be read.
    """
    rest, i = [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        flag, eq, value = arg.partition("=")
        if flag in FLAGS:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if not value:
                from rewind.errors import InvalidArgument

                raise InvalidArgument(f"{flag}: needs a value")
            os.environ[FLAGS[flag]] = value
        else:
            rest.append(arg)
        i += 1
    ClientSecurity.from_env()  # a missing file is named now, in one line
    return rest
