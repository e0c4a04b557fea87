"""`rewind secrets init`: the tokens and TLS files a deployment with authentication needs."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  rewind secrets init --dir ./rewind-secrets
  rewind secrets init --dir ./rewind-secrets --hosts rewind-buffer,rewind-checkpoint,rewind-trainer,localhost,127.0.0.1

Then serve with   --write-tokens-file DIR/write.token --read-tokens-file DIR/read.token
                  --tls-cert-file DIR/tls.crt --tls-key-file DIR/tls.key
                  (and --collector-tokens-file DIR/collector.token where collectors call)
and call with     --token-file DIR/read.token (or write.token) --tls-ca-file DIR/ca.crt
a collector with  --token-file DIR/collector.token --tls-ca-file DIR/ca.crt

collector.token holds one named line, collector:TOKEN: it may add episodes, get the learner's
weights and read checkpoints, nothing else; the services' logs call it "collector"."""


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind secrets`."""
    group = groups.add_parser("secrets", help="make tokens and TLS certificates for a deployment")
    commands = group.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write read.token, write.token, collector.token, ca.crt/ca.key and "
                                            "tls.crt/tls.key",
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("--dir", required=True, type=Path, help="folder to write into (created if missing)")
    init.add_argument("--hosts", default="localhost,127.0.0.1,buffer,checkpoint,trainer",
                      help="comma-separated names and addresses the certificate is valid for")
    init.add_argument("--days", type=int, default=365, help="days the certificates are valid")
    init.add_argument("--force", action="store_true", help="replace existing files (default: keep them)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    from rewind.errors import InvalidArgument
    from rewind_runtime.credentials import write_credentials

    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    if not hosts or args.days < 1:
        raise InvalidArgument("--hosts: give at least one name, and --days: at least 1")
    written = write_credentials(args.dir, hosts, args.days, args.force)
    for name in written.made:
        print(f"wrote {written.folder / name}")
    if written.kept:
        print(f"kept {', '.join(written.kept)} (already there; --force replaces them)")
    return 0
