"""Completing the last word of a prefix: which pieces may spell what is left of it.

A translator's prefix may end inside a word ("A man ri"). Forcing the pieces that the tokenizer
makes of that fragment ("▁r", "i") would make the model go on from a split it would never choose
for "riding". So search forces the prefix's complete words as pieces and leaves its last word,
the tail (" ri", as bytes), to be spelled by any pieces whose bytes agree with it: "▁riding" at
once, or "▁ri" then "ding", or "▁r", "i", "ding". The output then begins with the prefix's text
exactly, and the model, not the tokenizer, chooses how the word goes on. A prefix that ends in
a space has the tail " ": the next piece begins a new word.

Pieces are compared as the bytes they decode to ("▁" a space: `Tokenizer.spelling`), so that
SentencePiece's byte-fallback pieces (<0xC3>) spell their byte and a character outside the
vocabulary can still be spelled.
"""

import bisect
import math
from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch

# The longest tail completed as a whole; of a longer last word (a URL, a typed-in hash) only the
# end is, its beginning forced as pieces. A tail bounds the output by a step a byte, and the
# search's memory and time with it: this keeps a prefix's steps near its pieces' (at most 250).
# A piece spells at most 16 characters (SentencePiece's max_sentencepiece_length), 64 bytes.
MAX_TAIL_BYTES = 64
# Distinct rests whose allowed pieces a Spelling keeps; a server decodes tails for as long as it
# runs, so the memo is bounded (each entry is at most a vocabulary of ids).
_MEMO_SIZE = 4096


class Spelling:
    """The bytes each piece of a vocabulary spells, and which pieces can continue a text."""

    def __init__(self, pieces: Sequence[bytes], blocked: Collection[int] = ()):
        """pieces[i]: what piece i spells; b"" for one that spells nothing (PAD, UNK, BOS, EOS),
        which is never allowed while a tail is left to spell, nor is a piece in `blocked`."""
        self.pieces = list(pieces)
        self.lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)  # (V,)
        blocked = set(blocked)
        self._sorted = sorted((p, i) for i, p in enumerate(pieces) if p and i not in blocked)
        self._keys = [p for p, _ in self._sorted]
        self._memo: dict[bytes, torch.Tensor] = {}

    def allowed(self, rest: bytes) -> torch.Tensor:
        """The ids (K,) of the pieces that may come next while `rest` (not empty) is left to
        spell: those that begin with all of it, and those that are a beginning of it."""
        ids = self._memo.get(rest)
        if ids is None:
            found = []
            start = bisect.bisect_left(self._keys, rest)  # the pieces that begin with rest
            for key, i in self._sorted[start:]:
                if not key.startswith(rest):
                    break
                found.append(i)
            for n in range(1, len(rest)):  # the pieces that are rest[:n] exactly
                j = bisect.bisect_left(self._keys, rest[:n])
                while j < len(self._keys) and self._keys[j] == rest[:n]:
                    found.append(self._sorted[j][1])
                    j += 1
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            ids = self._memo[rest] = torch.tensor(sorted(found), dtype=torch.long)
        return ids


class Tails(NamedTuple):
    """The unfinished last word of each sentence's prefix (B,), as bytes (b"": none), and the
    spelling of the output vocabulary."""

    spelling: Spelling
    texts: list[bytes]


class Completer:
    """One search's tails: each begins once its sentence's forced pieces (`starts`, (B,)) are
    out; a row (a sentence's output, or one of its beams) carries how many bytes of its tail it
    has spelled."""

    def __init__(self, tails: Tails, starts: torch.Tensor):
        self.tails = tails
        self.starts = starts  # (B,)
        device = starts.device
        self.lengths = torch.tensor([len(t) for t in tails.texts], device=device)  # (B,)
        self.piece_lengths = tails.spelling.lengths.to(device)  # (V,)

    def restrict(
        self, log_probs: torch.Tensor, sentences: torch.Tensor, spelled: torch.Tensor, step: int
    ) -> torch.Tensor:
        """In place on log_probs (R, V) of rows of `sentences` (R,) that have spelled (R,) bytes
        of their tails: -inf for every piece that disagrees with what is left. -> the rows
        still spelling (R,) bool: they must add their token's bytes (`advance`)."""
        active = (step >= self.starts[sentences]) & (spelled < self.lengths[sentences])  # (R,)
        rows = active.nonzero().squeeze(1).tolist()
        if rows:
            banned = torch.ones(len(rows), log_probs.size(1), dtype=torch.bool)  # (A, V)
            for a, (s, n) in enumerate(
                zip(sentences[rows].tolist(), spelled[rows].tolist(), strict=True)
            ):
                banned[a, self.tails.spelling.allowed(self.tails.texts[s][n:])] = False
            index = torch.tensor(rows, device=log_probs.device)
            kept = log_probs[index].masked_fill(banned.to(log_probs.device), -math.inf)
            log_probs[index] = kept
        return active

    def advance(
        self, spelled: torch.Tensor, active: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """spelled (R,) after the rows appended tokens (R,): the bytes of the active rows'."""
        return spelled + torch.where(active, self.piece_lengths[tokens], 0)
