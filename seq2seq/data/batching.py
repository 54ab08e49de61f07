"""Batches under a token budget: similar lengths together, seeded, resumable, sharded for DDP."""

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler

from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID


class Batch(NamedTuple):
    src: torch.Tensor  # (B, S) long: source ids + EOS, padded with PAD_ID
    src_lengths: torch.Tensor  # (B,) long: real source tokens, EOS included
    tgt_in: torch.Tensor  # (B, T) long: BOS + target ids, the decoder's teacher-forced input
    tgt_out: torch.Tensor  # (B, T) long: target ids + EOS, what the decoder must predict
    index: torch.Tensor  # (B,) long: each example's position in its split


def collate(examples: list[tuple[int, list[int], list[int]]]) -> Batch:
    """(index, src_ids, tgt_ids) examples -> one padded Batch."""
    index, src, tgt = zip(*examples, strict=True)
    src, src_lengths = source_tensors(src)
    return Batch(
        src=src,  # (B, S)
        src_lengths=src_lengths,  # (B,)
        tgt_in=pad([[BOS_ID, *t] for t in tgt]),  # (B, T)
        tgt_out=target_tensor(tgt),  # (B, T)
        index=torch.tensor(index, dtype=torch.long),  # (B,)
    )


def source_tensors(ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source piece ids (no EOS) -> src (B, S) with EOS appended and PAD after it, and
    src_lengths (B,), EOS included: what training and translation both feed the encoder.

    The source gets an EOS: the encoder sees where the sentence ends, and even an empty line
    has one real token for attention to attend to.
    """
    rows = [[*s, EOS_ID] for s in ids]
    return pad(rows), torch.tensor([len(row) for row in rows], dtype=torch.long)


def target_tensor(ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Target piece ids (no BOS, no EOS) -> (B, T) with EOS appended and PAD after it: what the
    decoder must predict, in training and in `search.force_decode`."""
    return pad([[*t, EOS_ID] for t in ids])


def pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of ids -> (B, longest row) long, padded with PAD_ID."""
    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=PAD_ID)


class TokenBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices whose padded size fits in `max_tokens`.

    A batch costs len(batch) * its longest row, where a row is source + EOS or BOS + target,
    whichever is longer: the number of tokens the padded tensors hold. Lengths are raw id counts.
    An evaluation example longer than the budget makes a batch of its own.

    shuffle=True: the examples are packed once, as fairseq does: a seeded permutation, sorted by
    row size within pools of about 100 batches (similar lengths, little padding). Each epoch
    then runs those batches in an order of its own (seeded by seed + epoch). The batches stay
    the same so that every epoch has as many steps as the first, which Lightning counts on: with
    `val_check_interval: 1.0` it validates after that many batches of each epoch.
    shuffle=False: sorted by (src_len, tgt_len, index), for validation and test, whose results
    go back in order by `Batch.index`.

    With num_replicas > 1 every rank computes the same global batch list and takes every
    num_replicas-th batch, after the largest batches are split until the count divides evenly:
    each example is seen exactly once per epoch and all ranks run the same number of steps.
    """

    def __init__(
        self,
        src_lengths: Sequence[int],
        tgt_lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.src_lengths = [int(n) for n in src_lengths]
        self.tgt_lengths = [int(n) for n in tgt_lengths]
        pairs = zip(self.src_lengths, self.tgt_lengths, strict=True)
        self.sizes = [max(s, t) + 1 for s, t in pairs]  # a row: source + EOS or BOS + target
        longest = max(self.sizes, default=0)
        # Training pairs are length-filtered, so only a budget below that filter's limit trips
        # this. Evaluation keeps every sentence (corpus BLEU needs them all): one longer than
        # the budget is decoded in a batch of its own.
        if shuffle and longest > max_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is smaller than the longest example ({longest} tokens "
                "with BOS/EOS); raise max_tokens or filter long sentences out"
            )
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        # Training sorts by row size first, which is what the budget counts: on Multi30k that
        # fills batches to ~98% where sorting by source length reaches ~89% (targets vary more).
        # Evaluation sorts by source length first, which bounds how long decoding a batch takes.
        self._train_key = list(zip(self.sizes, self.src_lengths, self.tgt_lengths, strict=True))
        self._eval_key = list(zip(self.src_lengths, self.tgt_lengths, strict=True))
        mean_size = sum(self.sizes) / len(self.sizes) if self.sizes else 1.0
        self.pool_size = 100 * max(1, round(max_tokens / mean_size))  # examples per sorted pool
        self.epoch = 0
        self.start_batch = 0  # batches the next __iter__ skips (set by load_state_dict)
        self._position = 0  # batches of this epoch handed out so far, skipped ones included
        self._packed: list[list[int]] | None = None  # every rank's batches, packed once
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a saved position belongs to the epoch it was saved in
            self.start_batch = self._position = 0
        self.epoch = epoch

    @property
    def sampler(self) -> "TokenBatchSampler":
        """Lightning calls `set_epoch` at each epoch start on `loader.sampler` and on
        `loader.batch_sampler.sampler` (where PyTorch's BatchSampler keeps its index sampler),
        never on a batch sampler itself: without this, every epoch would repeat the batches of
        the first, in the same order."""
        return self

    def state_dict(self) -> dict:
        """Where this rank is: the epoch and how many of its batches `__iter__` has yielded.

        A prefetching DataLoader runs ahead of the training loop; a caller that knows how many
        batches were actually trained on should store that number as `start_batch` instead.
        """
        return {"epoch": self.epoch, "start_batch": self._position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.start_batch = self._position = state["start_batch"]

    def __len__(self) -> int:
        # The whole epoch, also after load_state_dict: Lightning restores how many batches of the
        # epoch have run and counts on from there, so the epoch ends after the skipped ones plus
        # what __iter__ yields (a shorter length would end a resumed epoch early).
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        start, self.start_batch = self.start_batch, 0
        self._position = start
        for batch in batches[start:]:
            self._position += 1
            yield batch

    def _batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch, in order."""
        if self._cache is None or self._cache[0] != self.epoch:
            if self._packed is None:
                self._packed = self._even(self._global_batches())
            order = range(len(self._packed))
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(len(self._packed), generator=generator).tolist()
            epoch = [self._packed[i] for i in order]
            self._cache = (self.epoch, epoch[self.rank :: self.num_replicas])
        return self._cache[1]

    def _global_batches(self) -> list[list[int]]:
        n = len(self.sizes)
        if not self.shuffle:  # a stable sort: ties stay in index order
            return self._pack(sorted(range(n), key=self._eval_key.__getitem__))
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=generator).tolist()
        batches = []
        for start in range(0, n, self.pool_size):
            pool = sorted(order[start : start + self.pool_size], key=self._train_key.__getitem__)
            batches += self._pack(pool)
        return batches

    def _pack(self, indices: list[int]) -> list[list[int]]:
        """Greedily cut length-sorted indices into batches within the token budget."""
        batches, batch, longest = [], [], 0
        for i in indices:
            if batch and (len(batch) + 1) * max(longest, self.sizes[i]) > self.max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, self.sizes[i])
        if batch:
            batches.append(batch)
        return batches

    def _even(self, batches: list[list[int]]) -> list[list[int]]:
        # Ranks with unequal step counts would deadlock in DDP's all-reduce; splitting batches
        # evens them out without repeating examples, so evaluation sees each one exactly once.
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda b: len(batches[b]))
            batch = batches[largest]
            if len(batch) < 2:
                raise ValueError(
                    f"cannot give {self.num_replicas} replicas equal numbers of batches: all "
                    f"{len(batches)} batches hold a single example; raise max_tokens or use "
                    "fewer replicas"
                )
            half = len(batch) // 2
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        return batches
