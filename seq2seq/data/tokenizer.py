"""SentencePiece subwords with the fixed special ids that batches and the model rely on.

The model lives in memory as its serialized bytes (`model_proto`), so a checkpoint can carry
its tokenizer and no file path has to line up between training and translation.
"""

import functools
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from seq2seq.completion import MAX_TAIL_BYTES, Spelling
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# What SentencePiece's mark "▁" of a piece that begins a word spells: the space it decodes to.
WORD_START = b" "

# SentencePiece's segmentation algorithms; a Literal, so that the training config refuses any
# other name (naming the key and these four) before SentencePiece fails on it mid-setup.
ModelType = Literal["unigram", "bpe", "char", "word"]


class Tokenizer:
    def __init__(self, model_proto: bytes):
        if not model_proto:  # SentencePiece would accept it and fail later, on first use
            raise ValueError("empty SentencePiece model")
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError:
            raise ValueError("not a SentencePiece model (the bytes do not parse)") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"SentencePiece model has pad/unk/bos/eos ids {ids}; "
                f"seq2seq needs {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
            )
        self._model_proto = bytes(model_proto)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        vocab_size: int = 8000,
        model_type: ModelType = "unigram",
        character_coverage: float = 1.0,
        byte_fallback: bool = True,
    ) -> "Tokenizer":
        """Train in memory on already-cleaned sentences (one vocabulary for both languages
        when given both sides)."""
        model = io.BytesIO()
        # Sampling the input (corpora above input_sentence_size) is the only randomness in
        # training; a fixed seed makes the same sentences give the same model bytes.
        spm.set_random_generator_seed(0)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                # corpus.clean already normalized to NFC; the default NFKC would rewrite some
                # characters (e.g. "½" -> "1⁄2") and decode(encode(x)) would no longer give x.
                normalization_rule_name="identity",
                hard_vocab_limit=False,  # a small corpus gets fewer pieces instead of an error
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as e:
            reason = " ".join(str(e).split())  # e.g. vocab_size below the character count
            raise ValueError(f"SentencePiece training failed: {reason}") from None
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._model_proto)

    @property
    def model_proto(self) -> bytes:
        return self._model_proto

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Piece ids per text, without BOS/EOS (batching adds those)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text per id sequence; stops at the first EOS and skips PAD and BOS.

        Rows may be tensors: search output can be decoded without conversion.
        """
        texts = []
        for row in ids:
            row = [int(i) for i in row]
            if EOS_ID in row:
                row = row[: row.index(EOS_ID)]
            texts.append(self._sp.decode([i for i in row if i not in (PAD_ID, BOS_ID)]))
        return texts

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Piece strings, e.g. for the axis labels of an attention plot."""
        return [self._sp.id_to_piece(int(i)) for i in ids]

    @functools.cached_property
    def spelling(self) -> Spelling:
        """The bytes each piece spells, as it decodes: a byte-fallback piece ("<0xC3>") its byte,
        PAD, UNK, BOS and EOS nothing, any other piece its text with "▁" a space. (Spelled as
        "▁", a word's start would also be spelled by the byte pieces of "▁", E2 96 81, which
        decode to the character "▁" itself: "A▁Zürich".) A byte piece of whitespace ("<0x20>")
        is blocked from completing a tail: it spells " " as "▁" does, but it is no word start,
        and decodes as a space of its own (" á bike." for the tail " á", "A  dog")."""
        sp, pieces, blocked = self._sp, [], []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                pieces.append(b"")
            elif sp.is_byte(i):
                pieces.append(bytes([int(piece[3:-1], 16)]))
                if pieces[-1].isspace():
                    blocked.append(i)
            else:
                pieces.append(piece.replace("▁", " ").encode())
        return Spelling(pieces, blocked)

    def split_prefix(self, ids: list[int], ends_word: bool) -> tuple[list[int], bytes]:
        """A prefix's pieces -> (the pieces of its complete words, its tail): the bytes of its
        last word, which the search completes (`seq2seq.completion`). With `ends_word` (the
        prefix ended in a space) every word is complete and the tail is " ": the next piece
        begins a word. A last word with an unknown piece, which spells nothing, is forced as
        it is; of one over MAX_TAIL_BYTES, the pieces before its last MAX_TAIL_BYTES are."""
        if ends_word:
            return ids, WORD_START if ids else b""
        spelled = [self.spelling.pieces[i] for i in ids]
        start = max((n for n, b in enumerate(spelled) if b.startswith(WORD_START)), default=0)
        if UNK_ID in ids[start:]:
            return ids, b""
        while sum(map(len, spelled[start:])) > MAX_TAIL_BYTES:
            start += 1
        return ids[:start], b"".join(spelled[start:])

    def __reduce__(self):
        # Pickle as the model bytes: DataLoader workers and the cache fingerprint of
        # `datasets.map` both pickle the tokenizer, and the bytes are small and deterministic.
        return type(self), (self._model_proto,)
