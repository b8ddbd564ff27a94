"""Thin wrapper: `python tools/merge_lora.py ARGS` is `rvc-lora merge ARGS` (see `--help`)."""

import sys

from rvc_lora.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
