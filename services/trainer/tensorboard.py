"""TensorBoard scalars of a run (--tensorboard): each metrics.csv row, at its environment step.

    <out_dir>/<agent_id>/<run_id>/tensorboard/events.out.tfevents.*

Tags: train/episode_return, train/steps_per_s and each loss of a training row
(train/total_loss, ...), eval/episode_return. The values are the ones
metrics.csv holds, and x is environment steps (agent steps x action_repeat),
as on the learning curve. An optional extra: pip install 'rewind[tensorboard]'.
"""

from __future__ import annotations

from pathlib import Path

from rewind.errors import FailedPrecondition

FOLDER = "tensorboard"
# The columns of a metrics row that are not scalars of their own.
NOT_SCALARS = ("step", "episode", "kind", "episode_steps")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FailedPrecondition("tensorboard: the tensorboard package is not installed; pip install "
                                 "'rewind[tensorboard]', or train without --tensorboard") from None
    return SummaryWriter


def check_installed() -> None:
    """Raises FailedPrecondition (one line, naming the extra) unless TensorBoard can be written."""
    _summary_writer()


class TensorBoardLog:
    """Writes metrics rows as TensorBoard scalars.

    Args:
        run_dir: the run's folder; events go to its tensorboard/ folder.
        action_repeat: environment steps per agent step.
        resumed_at: the agent step a resumed run continues from (None: a fresh run). Events past it,
            written by the session that was cut, are hidden, as metrics.csv drops its rows past it.

    Raises:
        FailedPrecondition: tensorboard is not installed.
    """

    def __init__(self, run_dir: Path, action_repeat: int, resumed_at: int | None = None) -> None:
        writer = _summary_writer()
        self.action_repeat = action_repeat
        self.folder = run_dir / FOLDER
        purge = None if resumed_at is None else resumed_at * action_repeat + 1
        self.writer = writer(log_dir=str(self.folder), purge_step=purge)

    def write(self, row: dict[str, str]) -> None:
        """One metrics row (column -> text as in metrics.csv); empty columns are skipped."""
        kind = row.get("kind") or "train"
        x = int(row["step"]) * self.action_repeat
        for name, value in row.items():
            if name in NOT_SCALARS or value == "":
                continue
            self.writer.add_scalar(f"{kind}/{name}", float(value), global_step=x)

    def close(self) -> None:
        self.writer.close()
