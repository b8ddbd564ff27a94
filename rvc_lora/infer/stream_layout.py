"""The block layout of a stream (:class:`StreamSettings` in seconds, :class:`BlockLayout` in 10 ms frames),
apart from the converter so that command lines and servers can state and check it without loading torch.
See :mod:`rvc_lora.infer.streaming` for what each region does."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rvc_lora.features.pitch_extractor import FRAMES_PER_SECOND
from rvc_lora.utils import RVCLoraError


def _frames(seconds: float, name: str, multiple: int = 1, minimum: int = 0) -> int:
    if not math.isfinite(seconds) or seconds < 0:
        raise RVCLoraError(f"streaming {name} must be a non-negative number of seconds, got {seconds}")
    frames = int(round(seconds * FRAMES_PER_SECOND / multiple)) * multiple
    if frames < minimum:
        raise RVCLoraError(f"streaming {name} must be at least {minimum / FRAMES_PER_SECOND:g} s, got {seconds}")
    return frames


@dataclass(frozen=True)
class StreamSettings:
    """Block layout of :class:`StreamingConverter`, in seconds (rounded to 10 ms frames).

    ``block``: new audio per step (a multiple of 20 ms, HuBERT's stride); ``crossfade``: SOLA crossfade;
    ``search``: SOLA offset search range (RVC uses 0.01 s because its sine restarts every block; here the
    phase continues, so the default 0 is a plain crossfade); ``context``: audio before the output
    region that the text encoder attends over; ``content_context``: audio before the decoded frames that
    HuBERT sees each block; ``pitch_context``: the same for the pitch extractor; ``margin``: frames decoded
    before the output region and dropped (the decoder's warm-up).
    """

    block: float = 0.5
    crossfade: float = 0.05
    search: float = 0.0
    context: float = 2.0
    content_context: float = 1.0
    pitch_context: float = 0.3
    margin: float = 0.1

    def __post_init__(self) -> None:
        if not math.isfinite(self.block) or not 0.02 <= self.block <= 10.0:
            raise RVCLoraError(f"streaming block must be within 0.02..10 s, got {self.block}")
        layout = self.layout()
        if layout.crossfade > layout.block:
            raise RVCLoraError(f"streaming crossfade ({self.crossfade} s) must not exceed the block ({self.block} s)")
        if self.context < self.margin:
            raise RVCLoraError(f"streaming context ({self.context} s) must be at least the margin ({self.margin} s)")

    def layout(self) -> BlockLayout:
        """The layout in frames (10 ms)."""
        block = _frames(self.block, "block", multiple=2, minimum=2)
        crossfade = _frames(self.crossfade, "crossfade")
        search = _frames(self.search, "search")
        margin = _frames(self.margin, "margin")
        output = block + crossfade + search
        context = max(_frames(self.context, "context"), margin)
        context += (context + output) % 2  # an even window keeps HuBERT's 20 ms grid on absolute time
        decoded = margin + output
        content = min(context + output, _frames(self.content_context, "content context") + decoded)
        content += content % 2
        pitch = min(context + output, _frames(self.pitch_context, "pitch context") + decoded)
        return BlockLayout(block, crossfade, search, margin, context, content, pitch)


@dataclass(frozen=True)
class BlockLayout:
    """Frame counts (10 ms) of a stream: see :class:`StreamSettings`; ``content`` / ``pitch`` are the
    frames HuBERT / the pitch extractor run on per block (context included)."""

    block: int
    crossfade: int
    search: int
    margin: int
    context: int
    content: int
    pitch: int

    @property
    def output(self) -> int:
        """Frames of the output region: block + crossfade + search."""
        return self.block + self.crossfade + self.search

    @property
    def decoded(self) -> int:
        """Frames the decoder runs on per block: margin + output region."""
        return self.margin + self.output

    @property
    def window(self) -> int:
        """Frames held: context + output region."""
        return self.context + self.output
