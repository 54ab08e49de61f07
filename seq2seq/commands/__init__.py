"""The console scripts (`seq2seq-train`, `seq2seq-decode`, ...): each module has a `main`.

`scripts/*.py` call these too, so that `python scripts/train.py` works in a clone."""
