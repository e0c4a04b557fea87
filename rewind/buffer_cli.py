"""`rewind buffer ...` commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from google.protobuf import json_format
from tqdm import tqdm

from rewind.buffer_client import BufferClient
from rewind.local_service import LocalService


def run(args: argparse.Namespace) -> int:
    return {"serve": serve, "stats": stats, "snapshot": snapshot, "restore": restore, "demo": demo}[args.command](args)


def serve(args: argparse.Namespace) -> int:
    from rewind_buffer.config import default_config_text, load_config
    from rewind_buffer.server import serve as start

    if args.print_config:
        print(default_config_text(), end="")
        return 0
    config = load_config(args.config)
    config = config.replace(
        settings=config.settings.replace(
            buffer_size=args.buffer_size, batch_size=args.batch_size,
            min_history=args.min_history, horizon=args.horizon,
        ),
        host=args.host,
        port=args.port,
        buffers=tuple(b.strip() for b in args.buffers.split(",") if b.strip()) if args.buffers else None,
        storage_device=args.storage_device,
        seed=args.seed,
        max_message_mb=args.max_message_mb,
        grace_s=args.grace_s,
        torch_threads=args.torch_threads,
    )
    host = start(config, handle_signals=True)
    if args.port_file:
        Path(args.port_file).write_text(str(host.port))
    print(f"buffer service listening on {host.address} (buffers: {', '.join(config.buffers)}); "
          "stop with Ctrl-C or SIGTERM", flush=True)
    host.wait()
    print("buffer service stopped", flush=True)
    return 0


def _client(args: argparse.Namespace) -> BufferClient:
    return BufferClient(args.address, args.buffer, timeout=args.timeout)


def stats(args: argparse.Namespace) -> int:
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
    return 0


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


def _synthetic_episode(index: int, steps: int, obs_dim: int = 16, action_dim: int = 4) -> dict[str, torch.Tensor]:
    """A smooth random walk, so sampled sequences visibly continue step to step."""
    g = torch.Generator().manual_seed(index)
    action = torch.tanh(torch.randn(steps, action_dim, generator=g))
    obs = torch.cumsum(0.1 * torch.randn(steps, obs_dim, generator=g), dim=0)
    obs[:, 0] = torch.arange(steps, dtype=torch.float32)  # step counter, checked below
    reward = -obs[:, 1:].pow(2).mean(-1)
    done = torch.zeros(steps)
    action[0] = reward[0] = float("nan")  # TD-MPC2: step 0 has no action or reward
    return {"obs": obs, "action": action, "reward": reward, "done": done}


def demo(args: argparse.Namespace) -> int:
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


