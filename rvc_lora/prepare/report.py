"""The outcome of ``rvc-lora prepare``: manifest rows, a problem list and a printable summary."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from rvc_lora.data.experiment import ManifestRow


@dataclass
class PrepareReport:
    """What ``run_prepare`` did.

    ``rows``: the manifest (one row per piece, plus one per rejected file); ``problems``: (file, problem,
    action) triples for the summary table; ``total_seconds``: usable audio found (overlaps counted once);
    ``timings``: wall-clock seconds per stage; ``counts``: work done vs. skipped on resume
    (``decoded``, ``pieces_written``, ``pitch_computed``, ``content_computed``, ``index_built``, ...).
    """

    rows: list[ManifestRow] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    total_seconds: float = 0.0
    experiment_dir: Path | None = None
    files: int = 0
    index_path: Path | None = None
    pitch_method: str = ""
    rank: int = 0
    world_size: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok_rows(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.status == "ok"]

    def format_table(self) -> str:
        """A plain-text summary: totals, then one line per problem (file, problem, action)."""
        ok = self.ok_rows
        val = sum(1 for r in ok if r.split == "val")
        lines = [
            f"experiment: {self.experiment_dir}" + (f" (rank {self.rank}/{self.world_size})"
                                                    if self.world_size > 1 else ""),
            f"input files: {self.files}, usable audio: {self.total_seconds:.1f} s "
            f"({self.total_seconds / 60:.1f} min)",
            f"pieces: {len(ok)} ({len(ok) - val} train, {val} val); pitch: {self.pitch_method or 'none'}",
        ]
        if self.index_path is not None:
            lines.append(f"index: {self.index_path}")
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        if not self.problems:
            lines.append("problems: none")
            return "\n".join(lines)
        headers = ("file", "problem", "action")
        widths = [max(len(h), *(len(str(p[i])) for p in self.problems)) for i, h in enumerate(headers)]
        widths = [widths[0]] + [min(w, 60) for w in widths[1:]]

        def fmt(cells) -> list[str]:
            """One table row; long cells wrap onto continuation lines instead of being cut."""
            wrapped = [textwrap.wrap(str(c), widths[i], break_long_words=True) or [""] if i else [str(c)]
                       for i, c in enumerate(cells)]
            height = max(len(w) for w in wrapped)
            return ["  ".join((w[k] if k < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)).rstrip()
                    for k in range(height)]

        lines += ["", f"problems ({len(self.problems)}):", *fmt(headers), *fmt("-" * w for w in widths)]
        for problem in self.problems:
            lines += fmt(problem)
        lines.append(f"(every piece and rejected file, with its status and problem: "
                     f"{Path(self.experiment_dir) / 'manifest.csv'})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()
