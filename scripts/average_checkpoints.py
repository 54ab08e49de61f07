"""The same command as `seq2seq-average` (see seq2seq/commands/average.py)."""

import sys

from seq2seq.commands.average import main

if __name__ == "__main__":
    sys.exit(main())
