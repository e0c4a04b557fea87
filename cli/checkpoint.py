"""`rewind ckpt ...`: serve the checkpoint service, and browse, find, download
and delete checkpoints through it."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from rewind import addresses
from rewind.endpoints import LOOPBACK
from rewind.errors import InvalidArgument, NotFound
from rewind.versions import describe
from rewind_checkpoint.settings import CheckpointSettings
from rewind_cli import serving

if TYPE_CHECKING:
    from rewind.checkpoint.v1 import checkpoint_pb2
    from rewind.checkpoint_client import CheckpointClient

DEFAULT_ADDRESS = addresses.CHECKPOINT_ADDRESS

EXAMPLES = """examples:
  rewind ckpt serve --store file:///data/rewind --port 50052
  rewind ckpt serve --store s3://my-bucket/rewind      # AWS_ENDPOINT_URL etc. from the environment
  rewind ckpt save tdmpc2/run-1 --step 5000 model.pt optim.pt --metric eval_return=-180
  rewind ckpt save tdmpc2/run-1 --step 5000 model.pt --buffer 127.0.0.1:50051/buffer   # the buffer too, as blocks
  rewind ckpt restore-buffers tdmpc2/run-1/latest      # every buffer back where it came from
  rewind ckpt restore-buffers tdmpc2/run-1/latest --into 127.0.0.1:50061/buffer
  rewind ckpt ls                                       # every run
  rewind ckpt ls tdmpc2/run-1                          # a run's checkpoints, with resume commands
  rewind ckpt show tdmpc2/run-1/latest
  rewind ckpt latest tdmpc2/run-1                      # prints the path to resume from
  rewind ckpt latest tdmpc2/run-1 --best eval_return
  rewind ckpt download tdmpc2/run-1/step-0000005000 --out restore/
  rewind ckpt rm tdmpc2/run-1/5000
  rewind ckpt retention tdmpc2/run-1 --keep-last 5 --keep-every 10000
  rewind ckpt web --store file://./rewind-data         # the training-history pages: http://127.0.0.1:50072/
"""

WEB_EXAMPLES = """examples:
  rewind ckpt web                                      # ./rewind-data, where `rewind train --local-services` saves
  rewind ckpt web --store s3://my-bucket/rewind --http-port 8080
  rewind ckpt web --store /data/rewind --host 0.0.0.0 --read-tokens-file read.tokens --tls-cert-file tls.crt \\
      --tls-key-file tls.key
  curl -s http://127.0.0.1:50072/api/training-runs     # the same history as JSON

It reads the store only (nothing is written or swept), so it may run beside the
checkpoint service that writes it; it shows that service's changes within 2 s.
A checkpoint service started with an HTTP port (--http-port, 50072 by default)
serves the same pages itself: this command is for a store with no service."""


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind ckpt` (alias `checkpoint`)."""
    ckpt = groups.add_parser("ckpt", aliases=["checkpoint"], help="the checkpoint service", epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = ckpt.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the checkpoint service until SIGTERM")
    serving.add_settings(serve_parser, CheckpointSettings, "a TOML or YAML file of settings")
    serve_parser.set_defaults(func=serve)

    def client_args(p: argparse.ArgumentParser, read_only: bool = False) -> None:
        p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"checkpoint service (default {DEFAULT_ADDRESS})")
        p.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
        if read_only:
            p.add_argument("--store", default="", help="read this store (a folder, file:// or s3:// URL) directly, "
                                                       "with no service running, instead of --address")

    save_p = commands.add_parser("save", help="save files (and buffer snapshots) as a checkpoint")
    save_p.add_argument("run", help="AGENT/RUN")
    save_p.add_argument("files", nargs="*", help="files to store (their base names become the file names)")
    save_p.add_argument("--step", type=int, required=True, help="the training step")
    save_p.add_argument("--episode", type=int, default=0, help="the episode counter")
    save_p.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", help="a metric (repeatable)")
    save_p.add_argument("--buffer", action="append", default=[], metavar="HOST:PORT/NAME",
                        help="pull this buffer from the buffer service as blocks: only those the run's store "
                             "lacks are uploaded; `rewind ckpt restore-buffers` puts it back (repeatable)")
    save_p.add_argument("--whole-buffer", action="append", default=[], metavar="HOST:PORT/NAME",
                        help="pull this buffer as one whole, self-contained snapshot file, which costs the "
                             "whole buffer every time (repeatable)")
    save_p.add_argument("--resumed-from", default="", help="path of the checkpoint this run resumed from")
    _store_endpoints_arg(save_p, "upload large files to")
    client_args(save_p)
    save_p.set_defaults(func=save)

    ls_p = commands.add_parser("ls", help="list runs, an agent's runs, or a run's checkpoints")
    ls_p.add_argument("target", nargs="?", default="", help="nothing, AGENT, or AGENT/RUN")
    ls_p.add_argument("--json", action="store_true", help="print JSON")
    client_args(ls_p, read_only=True)
    ls_p.set_defaults(func=ls)

    show_p = commands.add_parser("show", help="print a checkpoint's manifest")
    show_p.add_argument("ref", help="AGENT/RUN/{latest,best,STEP,step-N} or a full path")
    show_p.add_argument("--json", action="store_true", help="print JSON")
    client_args(show_p, read_only=True)
    show_p.set_defaults(func=show)

    latest_p = commands.add_parser("latest", help="print the checkpoint to resume from (skipping corrupt ones)")
    latest_p.add_argument("run", help="AGENT/RUN")
    latest_p.add_argument("--best", metavar="METRIC", nargs="?", const="",
                        help="the best by METRIC instead (default: the run's retention metric)")
    latest_p.add_argument("--mode", choices=["max", "min"], help="with --best: higher or lower is better")
    latest_p.add_argument("--no-verify", action="store_true", help="check sizes only, not every sha256")
    client_args(latest_p, read_only=True)
    latest_p.set_defaults(func=latest)

    download_p = commands.add_parser("download", help="download a checkpoint's files into a directory")
    download_p.add_argument("ref", help="AGENT/RUN/{latest,best,STEP,step-N} or a full path")
    download_p.add_argument("--out", required=True, help="directory to write into")
    download_p.add_argument("--file", default="", help="one file only")
    _store_endpoints_arg(download_p, "download large files from")
    client_args(download_p, read_only=True)
    download_p.set_defaults(func=download)

    restore_p = commands.add_parser("restore-buffers", help="push a checkpoint's buffers back into buffer services")
    restore_p.add_argument("ref", help="AGENT/RUN/{latest,best,STEP,step-N} or a full path")
    restore_p.add_argument("--into", action="append", default=[], metavar="HOST:PORT/NAME",
                           help="restore the checkpoint's buffer NAME into this service (repeatable; default: "
                                "every buffer, back to the address it came from)")
    client_args(restore_p)
    restore_p.set_defaults(func=restore_buffers)

    rm_p = commands.add_parser("rm", help="delete one checkpoint")
    rm_p.add_argument("ref", help="AGENT/RUN/{STEP,step-N} or a full path")
    client_args(rm_p)
    rm_p.set_defaults(func=rm)

    retention_p = commands.add_parser("retention", help="show or set a run's retention policy")
    retention_p.add_argument("run", help="AGENT/RUN")
    retention_p.add_argument("--keep-last", type=int, help="keep the N newest (0: keep everything)")
    retention_p.add_argument("--keep-every", type=int, help="also keep every step that is a multiple of K")
    retention_p.add_argument("--keep-best", type=int, help="also keep the K best by --metric")
    retention_p.add_argument("--metric", help="metric for --keep-best and `latest --best`")
    retention_p.add_argument("--mode", choices=["max", "min"], help="higher (max) or lower (min) is better")
    client_args(retention_p)
    retention_p.set_defaults(func=retention)

    add_web_parser(commands)


def add_web_parser(commands: argparse._SubParsersAction) -> None:
    """`rewind ckpt web`: the training-history pages and JSON API straight on a store."""
    web_p = commands.add_parser("web", help="serve the training-history pages and JSON API of a store (read-only)",
                                description="Serve the training-history pages (runs, learning curves, checkpoints "
                                            "with resume commands) and their JSON API straight on a store, with no "
                                            "checkpoint service running.",
                                epilog=WEB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    web_p.add_argument("--store", default="./rewind-data",
                       help="the store: a folder, file:// or s3:// URL (default ./rewind-data)")
    web_p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    web_p.add_argument("--http-port", type=int, default=addresses.CHECKPOINT_HTTP_PORT,
                       help=f"HTTP port (default {addresses.CHECKPOINT_HTTP_PORT}; 0 picks a free one)")
    web_p.add_argument("--read-tokens-file", default="", help="tokens that may read the pages, one per line; "
                                                              "a browser logs in with any user name and a token")
    web_p.add_argument("--write-tokens-file", default="", help="tokens of the write scope (they may read too)")
    web_p.add_argument("--tls-cert-file", default="", help="serve HTTPS with this certificate (PEM)")
    web_p.add_argument("--tls-key-file", default="", help="the certificate's private key (PEM)")
    web_p.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve with no tokens on an interface other than loopback (a network you trust only)")
    web_p.set_defaults(func=web)


def serve(args: argparse.Namespace) -> int:
    from rewind_checkpoint.server import serve as start

    return serving.serve(args, CheckpointSettings, start, "checkpoint service",
                         lambda host, settings: f"store {host.bindings[0].servicer.catalog.store.url}")


# -- helpers -----------------------------------------------------------------


def _endpoints(text: str) -> tuple[str, ...]:
    """--store-endpoints: a comma-separated list (as every list setting)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _split_run(text: str, field: str = "run") -> tuple[str, str]:
    parts = text.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise InvalidArgument(f"{field}: expected AGENT/RUN, got {text!r}")
    return parts[0], parts[1]


def _store_endpoints_arg(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--store-endpoints", type=_endpoints, default=LOOPBACK, metavar="HOST:PORT,...",
                        help=f"stores this command may {verb} directly, at the URLs the service presigns (S3; "
                             "other files go through the service): host:port entries or patterns, comma-separated "
                             f"(minio:9000, *.amazonaws.com:443; default {','.join(LOOPBACK)})")


def _client(args: argparse.Namespace) -> CheckpointClient:
    """A client of the service at --address, or of one in this process that only reads --store."""
    if getattr(args, "store", ""):
        from rewind_checkpoint.api import open_existing_store
        from rewind_checkpoint.server import serve_in_process
        from rewind_checkpoint.settings import CheckpointSettings

        open_existing_store(args.store)  # a folder that does not exist is an error, not a new empty store
        # Its start, stop and "authentication is off" (on loopback, for this one command) are not news here.
        logging.getLogger("rewind_runtime").setLevel(logging.ERROR)
        logging.getLogger("rewind_checkpoint").setLevel(logging.WARNING)
        # Reading only: no staging is ever old enough to be swept.
        # No HTTP port: one command's embedded service has no pages to show (`rewind ckpt web` has).
        return serve_in_process(args.store, CheckpointSettings(staging_max_age_s=math.inf, http_port=-1),
                                timeout=args.timeout)
    from rewind import CheckpointClient

    return CheckpointClient(args.address, timeout=args.timeout)


def _find(client: CheckpointClient, ref: str, verify: bool = False):
    """AGENT/RUN/{latest,best,STEP,step-N} or a full path -> (Found)."""
    if "://" not in ref:
        parts = ref.strip("/").split("/")
        if len(parts) == 3 and parts[2] in ("latest", "best"):
            return client.lookup(parts[0], parts[1], parts[2], verify=verify)
        if len(parts) == 3 and parts[2].isdigit():
            return client.lookup(parts[0], parts[1], int(parts[2]), verify=verify)
    return client.lookup(which=ref, verify=verify)


def resume_command(checkpoint: checkpoint_pb2.Checkpoint, args: argparse.Namespace) -> str:
    """The command that resumes training from a checkpoint: through the service at --address, or
    with local services on --store (a file:// path names its store by itself)."""
    store = getattr(args, "store", "")
    if store:
        flag = " --local-services" + ("" if checkpoint.path.startswith("file://") else f" --store {store}")
    else:
        flag = f" --checkpoint-address {args.address}" if args.address != DEFAULT_ADDRESS else ""
    return f"rewind train{flag} --resume-from-checkpoint {checkpoint.path}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _metrics(checkpoint: checkpoint_pb2.Checkpoint) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(checkpoint.metrics.items()))


def _to_json(message) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True)


def _warn_skipped(found) -> None:
    import sys

    for path, reason in found.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if found.skipped:
        print(f"warning: fell back to {found.checkpoint.path}", file=sys.stderr)


# -- commands ----------------------------------------------------------------


def ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if "/" not in args.target.strip("/"):
            runs = client.list_runs(args.target.strip("/"))
            if args.json:
                from rewind.checkpoint.v1 import checkpoint_pb2

                print(_to_json(checkpoint_pb2.ListRunsResponse(runs=runs)))
                return 0
            if not runs:
                print("no runs yet; save a checkpoint first (rewind train ..., or CheckpointClient.save)")
                return 0
            print(f"{'AGENT/RUN':<40} {'CKPTS':>5} {'LATEST STEP':>12}  {'LATEST COMMIT':<27} {'SIZE':>10}")
            for r in runs:
                print(f"{r.agent_id + '/' + r.run_id:<40} {r.checkpoints:>5} {r.latest_step:>12,}  "
                      f"{r.latest_created or '-':<27} {_size(r.total_bytes):>10}")
            print(f"\nsee a run's checkpoints: rewind ckpt ls {runs[0].agent_id}/{runs[0].run_id}")
            return 0
        agent_id, run_id = _split_run(args.target, "target")
        checkpoints = client.list(agent_id, run_id)
    if args.json:
        from rewind.checkpoint.v1 import checkpoint_pb2

        print(_to_json(checkpoint_pb2.ListCheckpointsResponse(checkpoints=checkpoints)))
        return 0
    if not checkpoints:
        print(f"run {agent_id}/{run_id} has no committed checkpoints yet")
        return 0
    print(f"{'STEP':>12} {'EPISODE':>8}  {'COMMITTED (UTC)':<27} {'SIZE':>10}  METRICS")
    for c in checkpoints:
        print(f"{c.step:>12,} {c.episode:>8,}  {c.created:<27} {_size(c.total_bytes):>10}  {_metrics(c)}")
        print(f"{'':>12} resume: {resume_command(c, args)}")
    return 0


def show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = _find(client, args.ref)
    c = found.checkpoint
    if args.json:
        print(_to_json(c))
        return 0
    print(f"checkpoint {c.path}")
    print(f"  agent {c.agent_id}   run {c.run_id}   step {c.step:,}   episode {c.episode:,}")
    print(f"  committed {c.created}   {len(c.files)} files, {_size(c.total_bytes)}")
    if c.resumed_from:
        print(f"  resumed from {c.resumed_from}")
    if c.metrics:
        print(f"  metrics {_metrics(c)}")
    print(f"  written with {describe(c.versions)}")
    for f in c.files:
        print(f"  file {f.name:<32} {_size(f.size):>10}  sha256 {f.sha256[:16]}...")
    for b in c.buffers:
        blocks = (f"; its rows in {len(b.blocks)} blocks, {_size(sum(k.size for k in b.blocks))}, in the run's "
                  "blocks/ folder" if b.format == "blocks" else "")
        print(f"  buffer {b.buffer!r} -> {b.file} ({b.episodes_added:,} episodes added, from {b.address}; "
              f"written with {describe(b.versions)}{blocks})")
    if c.config:
        print(f"  config {json.dumps(_struct(c.config), sort_keys=True)}")
    if c.extra:
        print(f"  extra {json.dumps(_struct(c.extra), sort_keys=True)}")
    print(f"  resume: {resume_command(c, args)}")
    return 0


def _struct(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message)


def latest(args: argparse.Namespace) -> int:
    agent_id, run_id = _split_run(args.run)
    with _client(args) as client:
        if args.best is not None:
            found = client.lookup(agent_id, run_id, "best", metric=args.best, mode=args.mode or "",
                                  verify=not args.no_verify)
        else:
            found = client.lookup(agent_id, run_id, "latest", verify=not args.no_verify)
    _warn_skipped(found)
    c = found.checkpoint
    print(c.path)
    print(f"# step {c.step:,}, episode {c.episode:,}, committed {c.created}; resume with:")
    print(f"# {resume_command(c, args)}")
    return 0


def download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with _client(args) as client:
        client.store_endpoints = args.store_endpoints
        found = _find(client, args.ref)
        total = found.checkpoint.total_bytes
        if args.file:
            total = next((f.size for f in found.checkpoint.files if f.name == args.file), 0)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download") as bar:
            c = client.download(found.checkpoint, args.out, file=args.file, progress=lambda _c, n: bar.update(n))
    names = [args.file] if args.file else [f.name for f in c.files]
    print(f"downloaded {len(names)} file(s) of {c.path} into {args.out} (sha256 verified)")
    return 0


def restore_buffers(args: argparse.Namespace) -> int:
    targets = [_buffer_arg("--into", item) for item in args.into]
    with _client(args) as client:
        found = _find(client, args.ref)
        restored = client.restore_buffers(found.checkpoint, [(t.address, t.buffer) for t in targets])
    for b in restored:
        print(f"restored {b.buffer!r} at {b.address}: {b.episodes:,} episodes, {b.transitions:,} transitions, "
              f"{b.episodes_added:,} added (from {found.checkpoint.path})")
    return 0


def _buffer_arg(flag: str, item: str, blocks: bool = True) -> checkpoint_pb2.BufferSource:
    """HOST:PORT/NAME -> the buffer to pull (or restore into); a clear error naming `flag` otherwise."""
    from rewind import buffer_source

    address, _, name = item.rpartition("/")
    if not address or not name:
        raise InvalidArgument(f"{flag}: expected HOST:PORT/NAME, got {item!r}")
    return buffer_source(address, name, blocks=blocks)


def save(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    agent_id, run_id = _split_run(args.run)
    files = {}
    for path in args.files:
        p = Path(path)
        if not p.is_file():
            raise InvalidArgument(f"files: {path} is not a readable file")
        if p.name in files:
            raise InvalidArgument(f"files: two files are named {p.name!r}; rename one")
        files[p.name] = p
    metrics = {}
    for item in args.metric:
        name, _, value = item.partition("=")
        try:
            metrics[name] = float(value)
        except ValueError:
            raise InvalidArgument(f"--metric: expected NAME=NUMBER, got {item!r}") from None
    buffers = [_buffer_arg("--buffer", item, blocks=True) for item in args.buffer]
    buffers += [_buffer_arg("--whole-buffer", item, blocks=False) for item in args.whole_buffer]
    if not files and not buffers:
        raise InvalidArgument("files: nothing to save; give files and/or --buffer HOST:PORT/NAME")
    total = sum(p.stat().st_size for p in files.values())
    with _client(args) as client, \
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload") as bar:
        saved = client.save(agent_id, run_id, args.step, files, episode=args.episode, metrics=metrics,
                            buffers=buffers, resumed_from=args.resumed_from, progress=bar.update,
                            store_endpoints=args.store_endpoints)
    c = saved.checkpoint
    direct = f", {_size(saved.direct_bytes)} straight to the store" if saved.direct_bytes else ""
    print(f"committed {c.path} ({len(c.files)} files, {_size(c.total_bytes)}{direct})")
    for path in saved.deleted:
        print(f"retention deleted {path}")
    return 0


def rm(args: argparse.Namespace) -> int:
    parts = args.ref.strip("/").split("/")
    if "://" not in args.ref and len(parts) == 3 and parts[2] in ("latest", "best"):
        raise InvalidArgument(f"ref: name the step to delete explicitly, not {parts[2]!r}")
    with _client(args) as client:
        found = _find(client, args.ref)
        path = client.delete(found.checkpoint)
    print(f"deleted {path}")
    return 0


def retention(args: argparse.Namespace) -> int:
    agent_id, run_id = _split_run(args.run)
    changes = {k: v for k, v in {"keep_last": args.keep_last, "keep_every": args.keep_every,
                                 "keep_best": args.keep_best, "metric": args.metric, "mode": args.mode}.items()
               if v is not None}
    with _client(args) as client:
        try:
            policy = client.get_retention(agent_id, run_id)
        except NotFound:
            if not changes:
                raise
            policy = None  # a policy may be set before the run's first checkpoint
        if changes and policy is None:
            policy = client.set_retention(agent_id, run_id, **changes)
        elif changes:
            current = {"keep_last": policy.keep_last, "keep_every": policy.keep_every, "keep_best": policy.keep_best,
                       "metric": policy.metric, "mode": policy.mode}
            policy = client.set_retention(agent_id, run_id, **{**current, **changes})
    print(f"retention of {agent_id}/{run_id}: keep_last {policy.keep_last}, keep_every {policy.keep_every}, "
          f"keep_best {policy.keep_best} by {policy.metric or '-'} ({policy.mode})")
    if changes:
        print("applied after the run's next commit")
    return 0


def web(args: argparse.Namespace) -> int:
    """Serve the training history of --store until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from rewind_checkpoint.api import open_existing_store
    from rewind_checkpoint.catalog import Catalog
    from rewind_checkpoint.history import History, install
    from rewind_runtime.auth import Authenticator
    from rewind_runtime.http import HttpHost
    from rewind_runtime.tls import ServerTLS

    if not 0 <= args.http_port <= 65535:
        raise InvalidArgument(f"--http-port: {args.http_port} is outside 0..65535")
    store = open_existing_store(args.store)  # a folder that does not exist is an error, not a new empty store
    store.check()
    tls = ServerTLS(args.tls_cert_file, args.tls_key_file) if args.tls_cert_file or args.tls_key_file else None
    http = HttpHost(host=args.host, port=args.http_port, tls=tls, allow_unauthenticated=args.allow_unauthenticated,
                    authenticator=Authenticator(args.read_tokens_file, args.write_tokens_file),
                    title="Rewind training history")
    # Reading only: no staging is ever old enough to be swept, and nothing here commits or deletes.
    install(http, History(Catalog(store, staging_max_age_s=math.inf)))
    http.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"training history of {store.url}: {http.url}/ (read-only; stop with Ctrl-C)", flush=True)
    stop.wait()
    http.stop()
    print("stopped", flush=True)
    return 0
