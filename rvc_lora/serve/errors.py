"""Request errors of the server: HTTP status, offending field, message; engine errors mapped to 429 / 503."""

from __future__ import annotations

import os
from typing import Any

from rvc_lora.serve.engine import Overloaded, ShuttingDown, TimedOut
from rvc_lora.utils import RVCLoraError


class RequestError(RVCLoraError):
    """A bad request: HTTP ``status``, the offending ``field`` (dotted path, or None) and a message."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message

    def payload(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


ENGINE_ERRORS = (Overloaded, TimedOut, ShuttingDown)


def engine_error(exc: Overloaded | TimedOut | ShuttingDown) -> RequestError:
    """429 for a full queue, 503 for a timeout or a shutdown."""
    return RequestError(429 if isinstance(exc, Overloaded) else 503, None, str(exc))


def without_path(message: str, path: str | os.PathLike, label: str) -> str:
    """An error message with a server-side temporary path replaced by the client's label."""
    return message.replace(str(path), label)
