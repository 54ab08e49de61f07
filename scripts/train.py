"""Train a model: the same command as `seq2seq-train` (see seq2seq/commands/train.py)."""

from seq2seq.commands.train import main

if __name__ == "__main__":
    main()
