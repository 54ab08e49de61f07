"""The same command as `seq2seq-score` (see seq2seq/commands/score.py)."""

import sys

from seq2seq.commands.score import main

if __name__ == "__main__":
    sys.exit(main())
