"""Seed 003 (the checkpointing system of a Stable-Baselines3 trainer), its usages as written:

    python training/trainer.py --checkpoint-interval-episodes 50            # also 100, and 0
    python training/trainer.py --keep-last-n-checkpoints 3                  # also 10
    python training/trainer.py --checkpoint-dir checkpoints
    python training/trainer.py --mode full --total-timesteps 1000000 --checkpoint-interval-episodes 50 \\
        --keep-last-n-checkpoints 3                                                        # Example 1
    python training/trainer.py --resume-from-checkpoint checkpoints/ppo_agent/run123/ep000100.zip \\
        --total-timesteps 1000000                                                          # Example 2
    python training/trainer.py --resume-from-checkpoint checkpoints/ppo_agent/run123/ep000200.zip \\
        --learning-rate 0.0001 --total-timesteps 2000000                                   # Example 3
    python training/trainer.py --config config_resume.yaml                                 # Example 4
    list_checkpoints(checkpoint_dir="checkpoints", run_id=..., agent_id="ppo_agent")

Rewind's names: `rewind train`; `rewind-data/tdmpc2/pendulum-v1-seed1/step-N` for
`checkpoints/ppo_agent/run123/epN.zip` (Rewind's default folder, agent and run); `--mode full`
is left out (Rewind has one mode). Example 1's million steps run until a SIGTERM, as the seed's
"training crashed at episode 150" does; the resumes then continue from where it stopped.
The training-history web page and its API are issue 13's.
"""

from __future__ import annotations

import re

import pytest

import rewind
from tests.support.seeds import Workspace, command, interrupt, printed_checkpoint, workspace


@pytest.fixture
def ws(tmp_path, store_url, monkeypatch) -> Workspace:
    ws = workspace(tmp_path, store_url, "rewind-data", default_store=True)
    monkeypatch.chdir(ws.cwd)  # list_checkpoints runs here, in the user's folder
    return ws


def stopped_at(ws: Workspace, stdout: str) -> int:
    path = printed_checkpoint(stdout)
    step = int(path.rsplit("step-", 1)[1])
    assert path == ws.checkpoint_url(step)
    return step


def test_crash_resume_fine_tune_and_config_file_resume(ws):
    example_1 = interrupt(ws, "--total-timesteps", "1000000", "--checkpoint-interval-episodes", "50",
                          "--keep-last-n-checkpoints", "3")
    assert example_1.returncode == 0, example_1.stdout
    crashed = stopped_at(ws, example_1.stdout)
    assert crashed >= example_1.checkpoint_step > 0

    example_2 = interrupt(ws, "--resume-from-checkpoint", ws.checkpoint(crashed), "--total-timesteps", "1000000")
    assert example_2.returncode == 0, example_2.stdout
    assert f"resuming {ws.checkpoint_url(crashed)} at step {crashed}\n" in example_2.stdout + "\n"  # no overrides
    resumed = stopped_at(ws, example_2.stdout)
    assert resumed > crashed

    example_3 = interrupt(ws, "--resume-from-checkpoint", ws.checkpoint(resumed), "--learning-rate", "0.0001",
                          "--total-timesteps", "2000000")
    assert example_3.returncode == 0, example_3.stdout
    assert (f"resuming {ws.checkpoint_url(resumed)} at step {resumed} with overrides: "
            "learning_rate 0.0003 -> 0.0001, steps 1000000 -> 2000000") in example_3.stdout
    tuned = stopped_at(ws, example_3.stdout)

    found = rewind.list_checkpoints(checkpoint_dir=ws.root, run_id="pendulum-v1-seed1", agent_id="tdmpc2")
    assert len(found) == 3 and found[-1] == ws.checkpoint_url(tuned)  # --keep-last-n-checkpoints 3 holds

    (ws.cwd / "config_resume.yaml").write_text(
        "total_timesteps: 2000000\ncheckpoint_interval_episodes: 50\nkeep_last_n_checkpoints: 5\n"
        f"resume_from_checkpoint: {found[-1]}\nlearning_rate: 0.0001\n")  # a listed path works unchanged
    example_4 = interrupt(ws, "--config", "config_resume.yaml")
    assert example_4.returncode == 0, example_4.stdout
    assert (f"resuming {ws.checkpoint_url(tuned)} at step {tuned} with overrides: keep_last_n_checkpoints 3 -> 5"
            in example_4.stdout)
    assert stopped_at(ws, example_4.stdout) > tuned


def test_checkpoint_dir_and_only_a_final_checkpoint(ws, store_url):
    folder = "checkpoints" if store_url.startswith("file://") else ws.root.replace("rewind-data", "checkpoints")
    done = command(ws, "train", "--checkpoint-dir", folder, "--checkpoint-interval-episodes", "0", steps=5)
    assert done.returncode == 0, done.stdout
    assert [re.sub(r".*/", "", p) for p in rewind.list_checkpoints(checkpoint_dir=folder)] == ["step-0000000005"]
    listed = command(ws, "ckpt", "ls", "--store", folder, "tdmpc2/pendulum-v1-seed1")
    assert listed.returncode == 0 and "step-0000000005" in listed.stdout, listed.stdout


def test_interval_and_retention_flags_and_their_config_keys(tmp_path):
    ws = workspace(tmp_path, f"file://{tmp_path}/store", "rewind-data")  # settings only: no store is touched

    def shown(*args: str) -> dict[str, str]:
        printed = command(ws, "train", *args, "--print-config")
        assert printed.returncode == 0, printed.stdout
        return dict(re.match(r"(\w+): (\S+)", line).groups() for line in printed.stdout.splitlines())

    assert shown("--checkpoint-interval-episodes", "100")["checkpoint_interval_episodes"] == "100"
    assert shown("--checkpoint-interval-episodes", "0")["checkpoint_interval_episodes"] == "0"
    assert shown("--keep-last-n-checkpoints", "10")["keep_last_n_checkpoints"] == "10"
    assert shown("--checkpoint-dir", "checkpoints")["checkpoint_dir"] == '"checkpoints"'
    (ws.cwd / "config.yaml").write_text("checkpoint_interval_episodes: 50  # Save every 50 episodes\n")
    assert shown("--config", "config.yaml")["checkpoint_interval_episodes"] == "50"
