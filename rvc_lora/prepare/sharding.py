"""Sharding ``rvc-lora prepare`` over torchrun ranks with a small file protocol (no process group).

``torchrun --nproc-per-node N -m rvc_lora.cli prepare ...`` starts N copies; each reads ``RANK`` and
``WORLD_SIZE`` from the environment and takes the input files whose index ``i`` has
``i % WORLD_SIZE == RANK``. Ranks share the experiment folder and meet twice through JSON files in
``<experiment>/.prepare/``:

1. after ingest every rank writes ``ingest.rank{r}.json`` (its usable seconds) and waits for all of
   them, so every rank applies the ``min_total_seconds`` check to the whole data set;
2. after pitch and content every rank writes ``result.rank{r}.json`` (its manifest rows and problems);
   rank 0 waits for all of them, then writes ``manifest.csv``, the filelist, ``experiment.json`` and
   the index. Other ranks return right after writing their result.

Each file carries a token (a hash of the input file list, settings, world size and torchrun's run id)
so files left by an earlier run with different inputs are ignored; a rank deletes its own old files
when it starts. A rank that fails writes an error file so the others stop instead of waiting.
Waiting gives up after ``data.shard_timeout_s`` seconds, naming the missing ranks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rvc_lora.utils import RVCLoraError, atomic_write

KINDS = ("ingest", "result")


@dataclass(frozen=True)
class Shard:
    """This process's place among the preparation ranks."""

    rank: int = 0
    world_size: int = 1
    run_id: str = ""

    def owns(self, file_index: int) -> bool:
        return file_index % self.world_size == self.rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """Rank and world size from torchrun's ``RANK`` / ``WORLD_SIZE`` (0 / 1 when unset)."""
    env = os.environ if env is None else env
    try:
        rank = int(env.get("RANK", "0"))
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise RVCLoraError(f"RANK / WORLD_SIZE must be integers ({err})") from None
    if world < 1 or not 0 <= rank < world:
        raise RVCLoraError(f"invalid sharding: RANK={rank}, WORLD_SIZE={world}")
    return Shard(rank, world, env.get("TORCHELASTIC_RUN_ID", ""))


def shard_file(state_dir: Path, kind: str, rank: int) -> Path:
    return Path(state_dir) / f"{kind}.rank{rank}.json"


def clear_own(state_dir: Path, shard: Shard) -> None:
    """Remove this rank's files from an earlier run."""
    for kind in KINDS:
        shard_file(state_dir, kind, shard.rank).unlink(missing_ok=True)


def publish(state_dir: Path, kind: str, shard: Shard, token: str, payload: dict | None = None,
            error: str | None = None) -> None:
    """Write this rank's ``kind`` file (atomically): its payload, or the error that stopped it."""
    body = {"token": token, "rank": shard.rank, "error": error, "payload": payload}
    with atomic_write(shard_file(state_dir, kind, shard.rank)) as tmp:
        tmp.write_text(json.dumps(body))


def gather(state_dir: Path, kind: str, shard: Shard, token: str, timeout_s: float = 86400.0,
           poll_s: float = 0.5) -> list[dict]:
    """Wait until every rank has published ``kind`` with ``token``; return the payloads by rank.

    Raises ``RVCLoraError`` when a rank published an error or when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + float(timeout_s)
    payloads: dict[int, dict] = {}
    while True:
        for rank in range(shard.world_size):
            if rank in payloads:
                continue
            path = shard_file(state_dir, kind, rank)
            try:
                body = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if body.get("token") != token:
                continue  # left over from another run
            if body.get("error"):
                raise RVCLoraError(f"prepare rank {rank} failed: {body['error']}")
            payloads[rank] = body.get("payload") or {}
        if len(payloads) == shard.world_size:
            return [payloads[r] for r in range(shard.world_size)]
        if time.monotonic() > deadline:
            missing = sorted(set(range(shard.world_size)) - set(payloads))
            raise RVCLoraError(
                f"prepare rank {shard.rank}: gave up after {timeout_s:g} s waiting for rank(s) {missing} "
                f"to finish the {kind} stage (files {Path(state_dir)}/{kind}.rank*.json)"
            )
        time.sleep(poll_s)
