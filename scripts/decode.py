"""The same command as `seq2seq-decode` (see seq2seq/commands/decode.py)."""

import sys

from seq2seq.commands.decode import main

if __name__ == "__main__":
    sys.exit(main())
