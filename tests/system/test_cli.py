"""The `rewind` command line: help with examples, one-line errors, the demo."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO
from tests.support.processes import rewind


def test_help_has_examples():
    result = rewind("--help")
    assert result.returncode == 0 and "rewind buffer serve --port 50051" in result.stdout
    result = rewind("buffer", "serve", "--help")
    assert result.returncode == 0 and "--min-history" in result.stdout


def test_bad_config_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[config]\nhorizon = -1\n")
    result = rewind("buffer", "serve", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == "rewind: error: horizon: must be a positive integer, got -1"


def test_bad_flag_value_is_one_line_naming_the_setting():
    result = rewind("buffer", "serve", "--buffer-size", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == "rewind: error: buffer_size: must be a positive integer, got 0"
    result = rewind("buffer", "serve", "--buffer-size", "ten")
    assert result.returncode == 2 and "invalid literal for int() with base 10: 'ten'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_service_names_the_address():
    result = rewind("buffer", "stats", "--address", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rewind: error:") and "127.0.0.1:1" in lines[0]


def test_health_command_exit_codes():
    result = rewind("health", "--address", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_print_config_is_the_packaged_default():
    result = rewind("buffer", "serve", "--print-config")
    assert result.returncode == 0 and "buffer_size = 1_000_000" in result.stdout


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rewind_cli", "buffer", "demo", "--episodes", "8", "--steps", "100", "--batches", "20",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every sampled sequence is 4 consecutive steps of one episode: True" in result.stdout
    assert "restored copy samples the same next batch: True" in result.stdout
    assert "exited with code 0" in result.stdout
    assert (tmp_path / "demo-buffer.snapshot").stat().st_size > 0


def test_stats_snapshot_restore_commands(tmp_path):
    from rewind import BufferClient
    from tests.support.episodes import episode
    from tests.support.processes import ServiceProcess

    proc = ServiceProcess(tmp_path, "--min-history", "10", "--buffer-size", "1000")
    try:
        with BufferClient(proc.address) as client:
            client.add(episode(0, 50))
        result = rewind("buffer", "stats", "--address", proc.address)
        assert result.returncode == 0 and "transitions 50 / 1,000" in result.stdout
        snap = tmp_path / "b.snap"
        assert rewind("buffer", "snapshot", "--address", proc.address, "--out", str(snap)).returncode == 0
        result = rewind("buffer", "restore", "--address", proc.address, "--buffer", "copy", "--in", str(snap))
        assert result.returncode == 0 and "1 episodes, 50 transitions" in result.stdout
    finally:
        proc.stop()


def test_rate_limiter_command_shows_changes_pauses_and_refuses_in_one_line(tmp_path):
    from rewind import BufferClient
    from tests.support.episodes import episode
    from tests.support.processes import ServiceProcess

    proc = ServiceProcess(tmp_path, "--min-history", "0", "--buffer-size", "1000", "--batch-size", "4",
                          "--max-episode-length", "50")
    address = ("--address", proc.address)
    try:
        shown = rewind("buffer", "rate-limiter", *address)
        assert shown.returncode == 0 and shown.stdout.strip() == "buffer 'buffer': no rate limiter"
        set_ = rewind("buffer", "rate-limiter", *address, "--samples-per-insert", "2", "--min-size-to-sample", "100",
                      "--error-buffer", "300")
        assert set_.returncode == 0, set_.stderr
        assert "2 sequences per transition after 100, window [-100, 500]; 0 in, 0 out" in set_.stdout
        with BufferClient(proc.address) as client:
            client.add(episode(0, 50))
        stats = rewind("buffer", "stats", *address)
        assert "rate limiter: 2 sequences per transition after 100" in stats.stdout and "50 in, 0 out" in stats.stdout
        assert "can sample no" in stats.stdout  # 50 of the 100 it waits for
        paused = rewind("buffer", "rate-limiter", *address, "--pause")
        assert "paused; 50 in" in paused.stdout and "can sample yes" in paused.stdout
        refused = rewind("buffer", "rate-limiter", *address, "--error-buffer", "2")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1
        assert lines[0].startswith("rewind: error: change.settings.error_buffer: the window")
        both = rewind("buffer", "rate-limiter", *address, "--pause", "--resume")
        assert both.returncode == 2 and "not allowed with argument" in both.stderr
    finally:
        proc.stop()
