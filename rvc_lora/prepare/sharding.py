"""Sharding ``rvc-lora prepare`` over torchrun ranks with a gloo process group.

``torchrun --nproc-per-node N -m rvc_lora.cli prepare ...`` starts N copies; each joins the job described by
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and takes the input files
whose index ``i`` has ``i % WORLD_SIZE == RANK``. Ranks share the experiment folder and meet twice, each time
exchanging a small payload with every other rank (``all_gather_object``):

1. ``ingest``: every rank's usable seconds, so every rank applies ``min_total_seconds`` to the whole data set;
2. ``result``: every rank's manifest rows and problems; rank 0 then writes ``manifest.csv``, the filelist,
   ``experiment.json`` and the index. The other ranks return.

A rank that fails still takes part in the meetings it has not reached, carrying its error, so the others stop
with a message naming it instead of waiting. A meeting gives up after ``data.shard_timeout_s`` seconds (the
process group's timeout). Finished work is cached per input file (``.prepare/files``), independent of the
number of ranks, so a job resumes with any number of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rvc_lora import distributed
from rvc_lora.utils import RVCLoraError

STAGES = ("ingest", "result")


@dataclass
class Shard:
    """This process's place among the preparation ranks, and the meetings it has taken part in."""

    rank: int = 0
    world_size: int = 1
    initialised_here: bool = False
    timeout_s: float = 86400.0
    stages_done: list[str] = field(default_factory=list)

    def owns(self, file_index: int) -> bool:
        return file_index % self.world_size == self.rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, stage: str, payload: dict[str, Any] | None = None, error: str | None = None) -> list[dict]:
        """Give ``payload`` (or the ``error`` that stopped this rank) to every rank; return every rank's
        payload by rank. Raises ``RVCLoraError`` when another rank reports an error or the wait times out."""
        self.stages_done.append(stage)
        if self.world_size == 1:
            return [payload or {}]
        try:
            bodies = distributed.gather_objects({"error": error, "payload": payload}, self._info())
        except RuntimeError as exc:  # gloo's timeout, or a rank that vanished
            raise RVCLoraError(f"prepare rank {self.rank}: gave up waiting for the other ranks at the {stage} "
                               f"stage (data.shard_timeout_s={self.timeout_s:g}): {str(exc).splitlines()[0]}"
                               ) from None
        failed = [(rank, body["error"]) for rank, body in enumerate(bodies) if body["error"]]
        if failed and error is None:
            rank, message = failed[0]
            raise RVCLoraError(f"prepare rank {rank} failed: {message}")
        return [body["payload"] or {} for body in bodies]

    def fail_remaining(self, message: str) -> None:
        """Take part in the meetings not reached yet, carrying ``message``, so the other ranks stop."""
        for stage in STAGES[len(self.stages_done):]:
            self.exchange(stage, error=message)

    def _info(self) -> distributed.DistInfo:
        return distributed.DistInfo(rank=self.rank, world_size=self.world_size)


def join(timeout_s: float) -> Shard:
    """Join the torchrun job with a gloo process group when ``WORLD_SIZE > 1``; a single process otherwise."""
    try:
        info = distributed.init_distributed(backend="gloo", timeout=timedelta(seconds=float(timeout_s)))
    except ValueError as err:
        raise RVCLoraError(f"cannot join the torchrun job: {err}") from None
    return Shard(info.rank, info.world_size, info.initialised_here, float(timeout_s))


def leave(shard: Shard) -> None:
    """Close the process group if :func:`join` created it."""
    distributed.shutdown_distributed(distributed.DistInfo(rank=shard.rank, world_size=shard.world_size,
                                                          initialised_here=shard.initialised_here))
