"""The same command as `seq2seq-plot-curves` (see seq2seq/commands/plot_curves.py)."""

import sys

from seq2seq.commands.plot_curves import main

if __name__ == "__main__":
    sys.exit(main())
