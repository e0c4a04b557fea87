"""`rewind buffer ...`: serve the buffer service, inspect it, snapshot and restore, and a demo."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rewind import addresses
from rewind_buffer.settings import BufferServiceSettings
from rewind_cli import serving

EXAMPLES = """examples:
  rewind buffer serve --port 50051 --min-history 1000
  rewind buffer serve --config my-buffer.toml --horizon 5
  rewind buffer serve --print-config > my-buffer.toml
  rewind buffer stats --address 127.0.0.1:50051 --buffer test_buffer
  rewind buffer snapshot --buffer buffer --out buffer.snap
  rewind buffer restore --buffer buffer --in buffer.snap
  rewind buffer rate-limiter --buffer buffer                     # show it
  rewind buffer rate-limiter --samples-per-insert 4 --min-size-to-sample 10000 --error-buffer 20000
  rewind buffer rate-limiter --pause                             # preload freely, then --resume
  rewind buffer demo
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind buffer`."""
    group = groups.add_parser("buffer", help="the replay-buffer service", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = group.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the buffer service until SIGTERM",
                                       description="Run the buffer service.")
    serving.add_settings(serve_parser, BufferServiceSettings,
                         "TOML file with [config] and [service] tables (see --print-config)")
    serve_parser.add_argument("--print-config", action="store_true",
                              help="print the default TOML file (every setting, with its help) and exit")
    serve_parser.set_defaults(func=serve)

    for name, text, func in (("stats", "print a buffer's statistics", stats),
                             ("snapshot", "save a buffer's contents to a file", snapshot),
                             ("restore", "replace a buffer's contents from a snapshot file", restore)):
        p = commands.add_parser(name, help=text)
        p.add_argument("--address", default=addresses.BUFFER_ADDRESS, help="host:port of the buffer service")
        p.add_argument("--buffer", default="buffer", help="buffer name (default: buffer)")
        p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
        p.set_defaults(func=func)
        if name == "stats":
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        elif name == "snapshot":
            p.add_argument("--out", required=True, help="file to write")
        else:
            p.add_argument("--in", dest="src", required=True, help="snapshot file to read")

    limiter = commands.add_parser("rate-limiter", help="show or change a buffer's rate limiter",
                                  description="Show a buffer's rate limiter, or change it (new settings, "
                                              "or a pause and its end; both start the counts again).")
    limiter.add_argument("--address", default=addresses.BUFFER_ADDRESS, help="host:port of the buffer service")
    limiter.add_argument("--buffer", default="buffer", help="buffer name (default: buffer)")
    limiter.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    limiter.add_argument("--samples-per-insert", type=float, help="sequences sampled per transition inserted "
                         "(0, with --min-size-to-sample 0: no limiter)")
    limiter.add_argument("--min-size-to-sample", type=int, help="transitions stored before a sample may go")
    limiter.add_argument("--error-buffer", help="X (a window of +-X) or MIN,MAX")
    limiter.add_argument("--inserts-wait", action=argparse.BooleanOptionalAction, default=None,
                         help="whether inserts wait when ahead of samples")
    paused = limiter.add_mutually_exclusive_group()
    paused.add_argument("--pause", dest="paused", action="store_const", const=True, help="let every call through")
    paused.add_argument("--resume", dest="paused", action="store_const", const=False, help="end a pause")
    limiter.set_defaults(func=rate_limiter)

    demo_parser = commands.add_parser("demo", help="start a buffer service, exercise it with a short client, stop it")
    demo_parser.add_argument("--address", help="use a running service instead of starting one")
    demo_parser.add_argument("--episodes", type=_positive, default=40, help="episodes to add (default 40)")
    demo_parser.add_argument("--steps", type=_positive, default=250, help="steps per episode (default 250)")
    demo_parser.add_argument("--batches", type=_positive, default=300, help="batches to stream (default 300)")
    demo_parser.add_argument("--out-dir", default="rewind-data", help="where the demo writes its snapshot")
    demo_parser.set_defaults(func=demo)


def serve(args: argparse.Namespace) -> int:
    from rewind_buffer.server import serve as start
    from rewind_buffer.settings import default_config_text

    if args.print_config:
        print(default_config_text(), end="")
        return 0
    return serving.serve(args, BufferServiceSettings, start, "buffer service",
                         lambda host, settings: f"buffers: {', '.join(settings.buffers)}")


def _client(args: argparse.Namespace):
    from rewind import BufferClient

    return BufferClient(args.address, args.buffer, timeout=args.timeout)


def stats(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        s = client.stats()
    if args.json:
        print(json_format.MessageToJson(s, always_print_fields_with_no_presence=True))
        return 0
    st = s.settings
    print(f"buffer {s.name!r} on {s.device or '(not allocated yet)'}")
    print(f"  transitions {s.transitions:,} / {st.buffer_size:,}   episodes {s.episodes:,} "
          f"(added {s.episodes_added:,}, evicted {s.episodes_evicted:,})")
    print(f"  ready {s.ready} (min_history {st.min_history:,})   batch {st.batch_size} x {st.horizon + 1} steps")
    print(f"  storage {s.bytes / 2**20:,.1f} MiB   batches sampled {s.batches_sampled:,}")
    for spec in s.schema:
        print(f"  field {spec.name}: {spec.dtype} per-step shape {list(spec.shape)}")
    print(f"  {describe_limiter(s)}")
    return 0


def rate_limiter(args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in ("samples_per_insert", "min_size_to_sample", "error_buffer",
                                                      "inserts_wait") if getattr(args, name) is not None}
    with _client(args) as client:
        if changes or args.paused is not None:
            s = client.set_rate_limiter(paused=args.paused, **changes)
        else:
            s = client.stats()
    print(f"buffer {s.name!r}: {describe_limiter(s)}")
    return 0


def describe_limiter(s) -> str:
    """One line on a buffer's rate limiter (BufferStats)."""
    if not s.HasField("rate_limiter"):
        return "no rate limiter"
    r = s.rate_limiter
    kind = (f"samples wait for {r.min_size_to_sample:,} transitions" if r.min_diff == float("-inf") else
            f"{r.samples_per_insert:g} sequences per transition after {r.min_size_to_sample:,}, window "
            f"[{r.min_diff:g}, {r.max_diff:g}]" + ("" if r.inserts_wait else ", inserts never wait"))
    state = "paused; " if r.paused else ""
    return (f"rate limiter: {kind}; {state}{r.inserts:,} in, {r.samples:,} out; "
            f"can insert {'yes' if r.can_insert else 'no'}, can sample {'yes' if r.can_sample else 'no'}; "
            f"held back: inserts {r.inserts_blocked_calls:,} calls {r.inserts_blocked_seconds:.1f} s, "
            f"samples {r.samples_blocked_calls:,} calls {r.samples_blocked_seconds:.1f} s")


def snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        size = client.snapshot(args.out)
    print(f"wrote {size:,} bytes to {args.out}")
    return 0


def restore(args: argparse.Namespace) -> int:
    with _client(args) as client:
        s = client.restore(args.src)
    print(f"restored buffer {s.name!r}: {s.episodes:,} episodes, {s.transitions:,} transitions")
    return 0


def _synthetic_episode(index: int, steps: int, obs_dim: int = 16, action_dim: int = 4) -> dict:
    """A smooth random walk, so sampled sequences visibly continue step to step."""
    import torch

    g = torch.Generator().manual_seed(index)
    action = torch.tanh(torch.randn(steps, action_dim, generator=g))
    obs = torch.cumsum(0.1 * torch.randn(steps, obs_dim, generator=g), dim=0)
    obs[:, 0] = torch.arange(steps, dtype=torch.float32)  # step counter, checked below
    reward = -obs[:, 1:].pow(2).mean(-1)
    done = torch.zeros(steps)
    action[0] = reward[0] = float("nan")  # TD-MPC2: step 0 has no action or reward
    return {"obs": obs, "action": action, "reward": reward, "done": done}


def demo(args: argparse.Namespace) -> int:
    from rewind_runtime.local import LocalService

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.address is not None:
        _exercise(args.address, args, out_dir)
        return 0
    serve_args = ["--log-level", "WARNING", "buffer", "serve", "--min-history", str(args.episodes * args.steps // 2),
                  "--buffer-size", str(args.episodes * args.steps), "--batch-size", "256", "--horizon", "3"]
    print(f"starting the buffer service: rewind {' '.join(serve_args)}")
    service = LocalService(serve_args)
    try:
        _exercise(service.address, args, out_dir)
    finally:
        print(f"buffer service drained and exited with code {service.terminate()}")
    return 0


def _exercise(address: str, args: argparse.Namespace, out_dir: Path) -> None:
    import torch
    from tqdm import tqdm

    from rewind import BufferClient

    client = BufferClient(address, "buffer")
    client.wait_until_serving()
    print(f"connected to {address}")
    for i in tqdm(range(args.episodes), desc="adding episodes", unit="ep"):
        client.add(_synthetic_episode(i, args.steps))
    s = client.stats()
    print(f"buffer holds {s.episodes} episodes / {s.transitions:,} transitions on {s.device}; ready={s.ready}")

    obs, action, reward, done = client.sample()
    print(f"one batch: obs {tuple(obs.shape)}, action {tuple(action.shape)}, "
          f"reward {tuple(reward.shape)}, done {tuple(done.shape)}")
    steps = obs[..., 0]
    contiguous = bool(((steps[1:] - steps[:-1]) == 1).all())
    print(f"every sampled sequence is {obs.shape[0]} consecutive steps of one episode: {contiguous}")

    start = time.perf_counter()
    with client.batches(prefetch=4, num_batches=args.batches) as stream:
        for _ in tqdm(stream, total=args.batches, desc="streaming batches", unit="batch"):
            pass
    rate = args.batches / (time.perf_counter() - start)
    print(f"streamed {args.batches} batches at {rate:,.0f} batches/s")

    path = out_dir / "demo-buffer.snapshot"
    size = client.snapshot(path)
    restored = client.using("demo_restored")
    restored.restore(path)
    same = all(torch.equal(a, b) for a, b in zip(client.sample(), restored.sample(), strict=True))
    print(f"snapshot {size / 2**20:.1f} MiB -> {path}; restored copy samples the same next batch: {same}")
    client.close()
    restored.close()
    if not (contiguous and same):
        raise SystemExit("demo: a check failed (see above)")
    print("demo finished: next, run `make test`, or start your own service with `rewind buffer serve`")


