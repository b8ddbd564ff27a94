"""How a command reports a failure: one line on stderr and an exit code; the traceback only on request.

Exit codes: 0 done; 1 the file system refused (no space, permission, read-only folder) or some inputs
of a batch failed; 2 bad input (arguments, settings, unusable files); 3 internal error (a bug);
130 interrupted. ``--debug`` or ``RVC_LORA_DEBUG=1`` adds the traceback, for bug reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback

from rvc_lora.utils import RVCLoraError, StorageError

__all__ = ["EXIT_CODES", "debug_requested", "one_line_thread_failures", "report_failure"]

EXIT_CODES = """exit codes:
  0    done
  1    the file system refused (no space, permission, read-only folder), or some inputs of a batch failed
  2    bad input: arguments, settings, or a model / adapter / audio file that cannot be used
  3    internal error (a bug: please report it with the output of --debug)
  130  interrupted (training saved a checkpoint: run the same command to resume)"""


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` or ``RVC_LORA_DEBUG=1``: show tracebacks instead of one-line errors."""
    return bool(getattr(args, "debug", False)) or os.environ.get("RVC_LORA_DEBUG", "") not in ("", "0")


def report_failure(exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as one line on stderr (with the traceback when ``debug``); return the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, RVCLoraError):
        print(f"rvc-lora: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, OSError):
        print(f"rvc-lora: error: {StorageError.from_os_error(exc, writing=False)}", file=sys.stderr)
        return StorageError.exit_code
    if isinstance(exc, MemoryError):
        print("rvc-lora: error: out of memory; use shorter inputs, a smaller batch or fewer workers",
              file=sys.stderr)
        return 1
    hint = "" if debug else " (re-run with --debug or RVC_LORA_DEBUG=1 for the traceback)"
    print(f"rvc-lora: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}; please report it",
          file=sys.stderr)
    return 3


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def one_line_thread_failures(debug: bool) -> None:
    """Report an exception that ends a background thread (e.g. TensorBoard's event writer on a full disk)
    in one line instead of a traceback, unless ``debug``. The main thread reports what it means."""
    if debug:
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        print(f"rvc-lora: background thread {name} stopped: {args.exc_type.__name__}: {_one_line(args.exc_value)}",
              file=sys.stderr)

    threading.excepthook = hook
