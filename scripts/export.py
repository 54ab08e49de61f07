"""Checkpoint(s) -> a model folder in the Hugging Face layout: see seq2seq/commands/export.py."""

import sys

from seq2seq.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
