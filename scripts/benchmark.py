"""The same command as `seq2seq-benchmark` (see seq2seq/commands/benchmark.py)."""

import sys

from seq2seq.commands.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
