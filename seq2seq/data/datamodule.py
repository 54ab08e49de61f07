"""`TranslationDataModule`: corpus -> SentencePiece ids -> length-bucketed token batches."""

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seq2seq.data.batching import TokenBatchSampler, collate
from seq2seq.data.corpus import CorpusError, length_filter, load_corpus
from seq2seq.data.tokenizer import ModelType, Tokenizer

log = logging.getLogger(__name__)

# Inside the package, so that an installed (non-editable) copy finds it too; the repository's
# data/multi30k links here.
BUNDLED_MULTI30K = Path(__file__).resolve().parent / "multi30k"
# A single corpus file's validation part: 5% of its pairs, at most 1,000 (Multi30k's val has
# 1,014), at least one.
HELD_OUT_SHARE, HELD_OUT_MAX = 0.05, 1000


@dataclass(frozen=True)
class TranslationTask:
    """What the training module needs to know of the data, handed over in one object: the
    tokenizers (the vocabulary sizes are theirs), the languages and the validation text."""

    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    src_lang: str
    tgt_lang: str
    joint_vocab: bool  # one SentencePiece model for both languages
    val_sources: list[str]
    val_references: list[str]


class TranslationDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        src_lang: str = "de",
        tgt_lang: str = "en",
        train_split: str = "train",
        val_split: str = "val",
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        spm_model_type: ModelType = "unigram",
        max_tokens: int = 4000,
        max_len: int = 100,
        max_ratio: float = 3.0,
        train_lines: int | None = None,
        val_lines: int | None = None,
        seed: int = 1234,
        num_workers: int = 0,
    ):
        """
        Args:
            data_dir: folder with `<split>.<lang>[.gz]` files, or a .jsonl/.tsv file (whose
                validation part is held out: 5% of its pairs, at most 1,000, seeded by `seed`);
                default: the Multi30k copy bundled with the repository.
            hf_dataset: a Hugging Face hub dataset name, used instead of `data_dir`
                (e.g. `bentrevett/multi30k`, or `wmt14` with `hf_config: de-en`).
            vocab_size: SentencePiece vocabulary size (one joint model when `joint_vocab`).
            max_tokens: token budget of a training batch, padding included.
            max_len, max_ratio: training pairs longer than `max_len` pieces on either side,
                or with a length ratio above `max_ratio`, are dropped (and counted).
            train_lines, val_lines: use only the first N lines of a split (quick runs, tests).
        """
        super().__init__()
        for key in ("vocab_size", "max_tokens", "max_len"):
            if locals()[key] <= 0:
                raise ValueError(f"data.{key} must be > 0, got {locals()[key]}")
        for key in ("train_lines", "val_lines"):  # None: the whole split
            if locals()[key] is not None and locals()[key] <= 0:
                raise ValueError(f"data.{key} must be > 0 (or null: all), got {locals()[key]}")
        for key in ("data_dir", "hf_dataset", "hf_config"):  # "" would read as "not given"
            if locals()[key] is not None and not str(locals()[key]).strip():
                raise ValueError(f"data.{key} is empty: give a value, or null for the default")
        if num_workers < 0:  # the DataLoader would refuse it only once the data is read
            raise ValueError(f"data.num_workers must be >= 0 (0: none), got {num_workers}")
        if not max_ratio >= 1:  # a pair's ratio is its longer side over its shorter: >= 1
            raise ValueError(f"data.max_ratio must be at least 1, got {max_ratio}")
        if max_tokens < max_len + 1:
            raise ValueError(
                f"data.max_tokens ({max_tokens}) is smaller than the longest allowed sentence "
                f"(data.max_len + 1 = {max_len + 1})"
            )
        self.save_hyperparameters()
        self.source = hf_dataset or data_dir or str(BUNDLED_MULTI30K)
        self.src_tokenizer: Tokenizer | None = None
        self.tgt_tokenizer: Tokenizer | None = None
        self.task: TranslationTask | None = None  # set by setup
        self._sampler_state: dict | None = None

    def use_tokenizers(self, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer) -> None:
        """Tokenize with these instead of training SentencePiece (a resumed run keeps the
        tokenizers its checkpoint was trained with, a fine-tuned one the pretrained model's).
        Call before `setup`."""
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer

    @property
    def joint_vocab(self) -> bool:
        """One SentencePiece model for both languages: the given models' case, else what
        data.joint_vocab asks training to build."""
        if self.src_tokenizer is None:
            return self.hparams.joint_vocab
        return self.src_tokenizer.model_proto == self.tgt_tokenizer.model_proto

    def _load(self):
        """-> the training and validation pairs, each cut to data.train_lines / val_lines."""
        hp = self.hparams
        if Path(self.source).expanduser().is_file():
            # One .jsonl/.tsv file is the whole corpus: validating on it would score pairs the
            # model trained on. A seeded part is held out instead, as Hugging Face's examples do.
            corpus = load_corpus(self.source, hp.train_split, hp.src_lang, hp.tgt_lang)
            if len(corpus) < 2:
                raise CorpusError(
                    f"{self.source}: {len(corpus)} sentence pair(s); a single file needs at least "
                    "2, one held out for validation"
                )
            held_out = min(HELD_OUT_MAX, max(1, round(len(corpus) * HELD_OUT_SHARE)))
            parts = corpus.train_test_split(test_size=held_out, seed=hp.seed)
            train, val = parts["train"], parts["test"]
        else:
            train, val = (
                load_corpus(self.source, split, hp.src_lang, hp.tgt_lang, hub_config=hp.hf_config)
                for split in (hp.train_split, hp.val_split)
            )
        return tuple(
            corpus if lines is None else corpus.select(range(min(lines, len(corpus))))
            for corpus, lines in ((train, hp.train_lines), (val, hp.val_lines))
        )

    def setup(self, stage: str | None = None) -> None:
        if self.task is not None:
            return
        hp = self.hparams
        train, val = self._load()
        # SentencePiece training is deterministic, so every DDP rank builds the same model.
        if self.src_tokenizer is not None:
            log.info("data: using the given SentencePiece models (not training new ones)")
        else:
            self._train_tokenizers(train)
        self.train_examples = self._tokenize(train, hp.max_len, hp.max_ratio)
        # Lightning would only say "No training batches" and end with status 0.
        if len(self.train_examples) == 0:
            raise CorpusError(
                f"{self.source}: no training pair is within data.max_len ({hp.max_len} pieces a "
                f"side) and data.max_ratio ({hp.max_ratio:g}): nothing to train on"
            )
        self.val_examples = self._tokenize(val)
        self.task = TranslationTask(
            self.src_tokenizer, self.tgt_tokenizer, hp.src_lang, hp.tgt_lang,
            joint_vocab=self.joint_vocab,
            val_sources=list(val["src"]), val_references=list(val["tgt"]),
        )
        log.info(
            "data: %d training pairs, %d validation pairs, vocabulary %d / %d",
            len(self.train_examples),
            len(self.val_examples),
            self.src_tokenizer.vocab_size,
            self.tgt_tokenizer.vocab_size,
        )

    def _train_tokenizers(self, train) -> None:
        hp = self.hparams
        try:
            if hp.joint_vocab:
                self.src_tokenizer = self.tgt_tokenizer = Tokenizer.train(
                    [*train["src"], *train["tgt"]], hp.vocab_size, hp.spm_model_type
                )
            else:
                self.src_tokenizer = Tokenizer.train(train["src"], hp.vocab_size, hp.spm_model_type)
                self.tgt_tokenizer = Tokenizer.train(train["tgt"], hp.vocab_size, hp.spm_model_type)
        except ValueError as e:  # e.g. data.vocab_size below the corpus's character count
            raise CorpusError(f"{self.source}: data.vocab_size {hp.vocab_size}: {e}") from None

    def _tokenize(self, corpus, max_len: int | None = None, max_ratio: float | None = None):
        """corpus (src, tgt texts) -> TokenizedPairs, optionally length-filtered."""
        src_tok, tgt_tok = self.src_tokenizer, self.tgt_tokenizer
        ids = corpus.map(
            lambda b: {"src_ids": src_tok.encode(b["src"]), "tgt_ids": tgt_tok.encode(b["tgt"])},
            batched=True,
            remove_columns=corpus.column_names,
        )
        pairs = TokenizedPairs(ids)
        if max_len is not None:
            pairs.keep(length_filter(pairs.src_lengths, pairs.tgt_lengths, max_len, max_ratio))
        return pairs

    def _loader(self, examples, shuffle: bool, max_tokens: int) -> DataLoader:
        trainer = self.trainer
        sampler = TokenBatchSampler(
            examples.src_lengths,
            examples.tgt_lengths,
            max_tokens=max_tokens,
            shuffle=shuffle,
            seed=self.hparams.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        return DataLoader(
            examples,
            batch_sampler=sampler,
            collate_fn=collate,
            # Its own generator: starting an iterator then draws nothing from the global RNG,
            # whose stream (dropout) a resumed run must continue exactly.
            generator=torch.Generator().manual_seed(self.hparams.seed),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_examples, True, self.hparams.max_tokens)
        if self._sampler_state is not None:
            loader.batch_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        self._train_sampler = loader.batch_sampler
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_examples, False, self.hparams.max_tokens)

    def state_dict(self) -> dict:
        """The training sampler's place in its epoch, for exact resume."""
        sampler = getattr(self, "_train_sampler", None)
        if sampler is None or self.trainer is None:
            return {}
        # Batches whose training step has run in this epoch; Lightning's own `completed`
        # counter lags by one while on_train_batch_end checkpoints are written.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": sampler.epoch, "start_batch": done}

    def load_state_dict(self, state: dict) -> None:
        self._sampler_state = state or None



class TokenizedPairs(Dataset):
    """A split's token ids, held as two flat int32 arrays with offsets (read straight from the
    Arrow table `datasets.map` built) rather than as Python lists: WMT-sized corpora stay a few
    bytes per token. Item k is (index in the split, src_ids, tgt_ids), as `collate` takes."""

    def __init__(self, ids):
        self.index = np.arange(len(ids))
        self._src_values, self._src_offsets = _flat(ids.data.column("src_ids"))
        self._tgt_values, self._tgt_offsets = _flat(ids.data.column("tgt_ids"))

    def keep(self, indices: list[int]) -> None:
        self.index = self.index[np.asarray(indices, dtype=np.int64)]

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self._src_offsets)[self.index]

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self._tgt_offsets)[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[int, list[int], list[int]]:
        i = int(self.index[k])
        src = self._src_values[self._src_offsets[i] : self._src_offsets[i + 1]]
        tgt = self._tgt_values[self._tgt_offsets[i] : self._tgt_offsets[i + 1]]
        return i, src.tolist(), tgt.tolist()


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list<int> column -> (values (N,) int32, offsets (rows + 1,) int64)."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.flatten().to_numpy().astype(np.int32)  # flatten() honours a sliced array
    return values, offsets - offsets[0]
