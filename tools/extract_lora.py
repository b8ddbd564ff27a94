"""Thin wrapper: `python tools/extract_lora.py ARGS` is `rvc-lora extract ARGS` (see `--help`)."""

import sys

from rvc_lora.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
