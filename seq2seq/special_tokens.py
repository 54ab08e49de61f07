"""The special token ids, in one place: SentencePiece models are trained with them, batches
are padded with them, the model masks padding by them and search starts and stops by them.

A SentencePiece model with other ids is refused when it is loaded (`data/tokenizer.py`), and a
checkpoint whose model config names another pad id is refused too (`checkpoint.py`), so every
component that imports these agrees with every tokenizer it meets.
"""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
