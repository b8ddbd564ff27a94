"""Request errors of the server: HTTP status, offending field, message; engine errors mapped to 429 / 503,
library errors to 4xx (the request's input) or 503 (the server's own file system)."""

from __future__ import annotations

import logging
import os
from typing import Any

from rvc_lora.serve.engine import Overloaded, ShuttingDown, TimedOut
from rvc_lora.utils import RVCLoraError, StorageError

log = logging.getLogger("rvc_lora.serve")


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


def library_error(exc: RVCLoraError | OSError, status: int, field: str | None,
                  hide: tuple[str | os.PathLike, str] | None = None) -> RequestError:
    """The answer to a library error raised while serving a request.

    Bad input (an RVCLoraError, exit code 2 in the CLI) gets ``status`` naming ``field``, with the server path
    ``hide[0]`` replaced by the client's label ``hide[1]``. The server's file system refusing (StorageError or
    OSError, exit code 1 in the CLI: disk full, permissions) is not the client's fault: 503, without server
    paths; its one-line message goes to the log.
    """
    if isinstance(exc, OSError):
        exc = StorageError.from_os_error(exc, writing=False)
    if isinstance(exc, StorageError):
        log.error("rvc-lora serve: %s", exc)
        return RequestError(503, None, "the server could not read or write one of its files (see the server log); "
                                       "retry later")
    message = str(exc) if hide is None else without_path(str(exc), *hide)
    return RequestError(status, field, message)
