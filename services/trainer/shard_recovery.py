"""ShardRecovery: a lost shard of a sharded run comes back only as the run left it.

A shard that stops answering gets weight 0 at once (ShardedBufferClient), and
training goes on with the others. When it answers again, it is a restarted,
empty service, or one that missed the episodes routed elsewhere meanwhile: it
is not a shard of the run until the trainer has restored it from the run's last
cut (or, before the first cut, emptied it with the run's settings), at the
run's current generation. Only then is it readmitted, so that batches draw from
it again.
"""

from __future__ import annotations

import logging

from rewind.checkpoint.v1.checkpoint_pb2 import BufferTarget
from rewind.errors import RewindError
from rewind_trainer.checkpointer import Checkpointer
from rewind_trainer.connections import BufferPart, Services, check_buffer, reset
from rewind_trainer.hparams import AgentConfig

log = logging.getLogger(__name__)


class ShardRecovery:
    """Restores each shard of the run that answers again, then readmits it.

    Args:
        services: the run's connections (a sharded `buffer`).
        cfg: the agent's config (shapes of a buffer emptied before the first cut).
        checkpointer: whose last committed checkpoint is the cut to restore from.
        generation: the run's generation, which the restored shard takes.
    """

    def __init__(self, services: Services, cfg: AgentConfig, checkpointer: Checkpointer, generation: int) -> None:
        assert services.sharded is not None
        self.services, self.cfg, self.checkpointer, self.generation = services, cfg, checkpointer, generation
        self.restored: list[tuple[str, str]] = []   # (address, the cut it was restored from: "" when emptied)

    def attach(self) -> None:
        """Be told (on the sharded client's probing thread) when a lost shard answers again."""
        self.services.sharded.on_answering = self.on_answering

    def parts_on(self, address: str) -> list[BufferPart]:
        """The run's buffers on the service at `address`: its shard, and test_buffer on the first shard."""
        return [part for part in self.services.parts if part.client.address == address]

    def on_answering(self, address: str) -> None:
        sharded = self.services.sharded
        cut = self.checkpointer.status.path
        parts = self.parts_on(address)
        try:
            if cut:
                targets = [BufferTarget(address=p.client.address, buffer=p.name, file=p.file) for p in parts]
                self.services.ckpt.restore_buffers(cut, targets, generation=self.generation)
            else:
                for part in parts:
                    reset(part, self.cfg)
            for part in parts:
                check_buffer(part.client, self.cfg)
            sharded.readmit(address)
        except RewindError as exc:
            log.warning("shard %s answers again, but could not be restored (%s); it stays out of the run and "
                        "is tried again", address, exc)
            sharded.drop(sharded.shard(address), f"restore: {exc.message}")
            return
        self.restored.append((address, cut))
        log.warning("shard %s answers again: restored from %s and readmitted", address,
                    cut or "nothing (no cut yet: emptied with the run's settings)")
