"""Text in, translations out: cleaning, SentencePiece, length-sorted batches, search."""

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from seq2seq.checkpoint import LoadedModel, load_model
from seq2seq.completion import Tails
from seq2seq.data.batching import pad, source_tensors, target_tensor
from seq2seq.data.corpus import clean, ends_in_space
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.ensemble import Ensemble, load_ensemble
from seq2seq.model import Seq2Seq
from seq2seq.pretrained import load_pretrained
from seq2seq.search import (
    MAX_LEN_A,
    MAX_LEN_B,
    SAMPLING_TOPK,
    SEED,
    TEMPERATURE,
    Hypothesis,
    beam_search,
    check_search_options,
    force_decode,
    greedy_search,
    sample,
)
from seq2seq.special_tokens import EOS_ID

# The defaults of every entry point that translates (translate, decode, the service).
BEAM_SIZE = 5
# Sentences a batch. Larger batches make each decoder step's products larger, and a CPU runs
# those closer to its peak: on test2016 (2-core AVX2 EPYC, 2026-12-03, README "Performance")
# 128 decoded 1.04-1.17x faster than 64 at beam 5 and 1.2-1.3x greedily; 256 no faster at beam 5.
BATCH_SIZE = 128
MAX_SRC_LEN = 250  # source pieces; longer inputs are cut, with a warning

_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass
class TranslationResult:
    text: str  # detokenized
    score: float  # the search's ranking score (see search.Hypothesis)
    log_prob: float  # the output's total log-probability, EOS included
    tokens: list[int]  # output ids, no BOS, no EOS
    token_log_probs: list[float]  # one per output token, EOS included
    attention: torch.Tensor  # (len(tgt_pieces), len(src_pieces)) float32 on the CPU
    src_pieces: list[str]  # the source the model read, EOS included
    tgt_pieces: list[str]  # the output, EOS included
    truncated: bool = False  # the source was cut to max_src_len pieces


def _well_formed(text: str) -> str:
    """Surrogate code points (a str may hold them, e.g. from os.fsdecode or JSON's "\\ud800")
    made U+FFFD, as `translate` does with invalid UTF-8: SentencePiece refuses them."""
    return _SURROGATES.sub("\ufffd", text)


def readable(texts: list[str]) -> list[str]:
    """Texts as the model reads them: `clean`, and surrogates made U+FFFD."""
    return [clean(_well_formed(text)) for text in texts]


def _listed(name: str, texts: Iterable[str], usage: str) -> list[str]:
    """`texts` as a list, read once: a generator read to check it would be empty after.
    TypeError naming `name` unless they are an iterable of str."""
    if isinstance(texts, str):  # would be read as one sentence per character
        raise TypeError(f"{name}: a list of sentences, got one str ({usage})")
    if not isinstance(texts, Iterable):
        raise TypeError(f"{name}: a list of sentences, got {type(texts).__name__} ({usage})")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: a str, got {type(text).__name__}")
    return texts


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")


class PrefixError(ValueError):
    """A prefix that the search cannot take; `index` says which, `problem` what is wrong."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"prefixes[{index}]: {problem}")
        self.index, self.problem = index, problem

    def __reduce__(self):  # from a worker process (--workers), as it was raised
        return type(self), (self.index, self.problem)


def empty_result() -> TranslationResult:
    """What an empty input translates to, without asking the model."""
    return TranslationResult("", 0.0, 0.0, [], [], torch.zeros(0, 0), [], [])


class Translator:
    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        device: torch.device | str = "cpu",
        src_lang: str = "",
        tgt_lang: str = "",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.src_lang, self.tgt_lang = src_lang, tgt_lang  # e.g. "de", "en"; "" if unknown
        # torch.bfloat16: search runs under autocast, the matrix products in bfloat16 (fast on
        # GPUs and CPUs with AMX or avx512_bf16); states and log-probabilities stay float32, and
        # so do the weights unless `use_bfloat16` cast them. None: float32 throughout.
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, device: torch.device | str = "cpu") -> "Translator":
        """What `checkpoint.load_model` (or a folder, an ensemble) returned, on `device`."""
        return cls(
            loaded.model, loaded.src_tokenizer, loaded.tgt_tokenizer, device,
            loaded.src_lang, loaded.tgt_lang,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu"
    ) -> "Translator":
        """Raises checkpoint.CheckpointError (one line) for a file that cannot be used."""
        loaded = load_model(path, map_location="cpu")
        return cls.from_loaded(loaded, device)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        device: torch.device | str = "cpu",
    ) -> "Translator":
        """A model folder (scripts/export.py), or a hub id: downloaded once into the Hugging
        Face cache, read from there after; `revision` is a hub branch, tag or commit.

        Raises checkpoint.CheckpointError (one line) for a folder or repo that cannot be used.
        """
        loaded = load_pretrained(path_or_repo_id, revision=revision, map_location="cpu")
        return cls.from_loaded(loaded, device)

    @classmethod
    def from_checkpoints(
        cls,
        paths: list[str | os.PathLike],
        device: torch.device | str = "cpu",
        combine: str = "log_prob",
    ) -> "Translator":
        """One checkpoint, or an ensemble of several that share both SentencePiece models
        (`combine`: see `seq2seq.ensemble.Ensemble`).

        Raises checkpoint.CheckpointError (one line) for a file that cannot be used or joined.
        """
        loaded = load_ensemble(paths, map_location="cpu", combine=combine)
        return cls.from_loaded(loaded, device)

    def translate(
        self,
        texts: Iterable[str],
        beam_size: int = BEAM_SIZE,
        nbest: int = 1,
        length_penalty: float = 1.0,
        max_len_a: float = MAX_LEN_A,
        max_len_b: float = MAX_LEN_B,
        batch_size: int = BATCH_SIZE,
        max_src_len: int = MAX_SRC_LEN,
        min_len: int = 1,
        sampling: bool = False,
        sampling_topk: int = SAMPLING_TOPK,
        temperature: float = TEMPERATURE,
        seed: int = SEED,
        prefixes: Iterable[str] | None = None,
    ) -> list[list[TranslationResult]]:
        """The nbest translations of each text, best first, in input order.

        An empty text (after cleaning) gets `nbest` empty results and never reaches the model.
        `min_len` blocks EOS until that many tokens exist (benchmarks decode fixed lengths).
        sampling=True draws one translation instead of searching (`search.sample`, which says
        what sampling_topk, temperature and seed do; beam_size is not used there).
        `prefixes[i]`: text that translation i must begin with (interactive translation: what
        the translator has typed so far; "" for none): its complete words are forced as target
        pieces, its last word is completed by whatever pieces agree with it ("A man ri" may go on
        "A man riding"; a prefix ending in a space completes its last word as typed), and the
        search goes on from there; at most `max_src_len` pieces.
        `texts` and `prefixes` may be any iterables of str (a list, a generator).
        Raises search.SearchOptionError (a ValueError) for an option out of range, TypeError
        for texts that are not an iterable of str, and ValueError for prefixes that do not pair
        up with the texts or are too long, before any text is translated.
        """
        check_search_options(
            beam_size, nbest, length_penalty, max_len_a, max_len_b, min_len,
            sampling_topk, temperature, seed, sampling,
        )
        _check_sizes(batch_size=batch_size, max_src_len=max_src_len)
        ids = self.src_tokenizer.encode(readable(_listed("texts", texts, "translate([text])")))
        prefix_parts = self._prefixes(prefixes, len(ids), max_src_len)
        results = [[empty_result() for _ in range(nbest)] for _ in ids]
        # Similar lengths share a batch, so little of it is padding; longest first, so that a
        # batch too large for memory fails at once rather than at the end.
        order = sorted((i for i, x in enumerate(ids) if x), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            src_ids = [ids[i][:max_src_len] for i in batch]
            src, src_lengths = (t.to(self.device) for t in source_tensors(src_ids))
            options = dict(
                max_len_a=max_len_a, max_len_b=max_len_b, length_penalty=length_penalty,
                min_len=min_len, prefixes=None, tails=None,
            )
            if prefix_parts is not None:
                forced, tails = zip(*(prefix_parts[i] for i in batch), strict=True)
                if any(forced):
                    options["prefixes"] = pad(list(forced)).to(self.device)
                if any(tails):
                    options["tails"] = Tails(self.tgt_tokenizer.spelling, list(tails))
            with self._autocast():
                if sampling:
                    drawn = sample(
                        self.model, src, src_lengths, sampling_topk, temperature, seed, **options
                    )
                    nbests = [[h] for h in drawn]
                elif beam_size == 1:
                    nbests = [[h] for h in greedy_search(self.model, src, src_lengths, **options)]
                else:
                    nbests = beam_search(
                        self.model, src, src_lengths, beam_size=beam_size, nbest=nbest, **options
                    )
            for i, source, hyps in zip(batch, src_ids, nbests, strict=True):
                truncated = len(ids[i]) > max_src_len
                results[i] = [self._result(h, source, truncated) for h in hyps]
        return results

    def _prefixes(
        self, prefixes: Iterable[str] | None, count: int, max_len: int
    ) -> list[tuple[list[int], bytes]] | None:
        """Each prefix's forced pieces and tail (`Tokenizer.split_prefix`); ValueError naming
        the one that cannot be used."""
        if prefixes is None:
            return None
        prefixes = _listed("prefixes", prefixes, "translate([text], prefixes=[prefix])")
        cleaned = readable(prefixes)
        if len(cleaned) != count:
            raise ValueError(f"{len(cleaned)} prefixes for {count} texts")
        ids = self.tgt_tokenizer.encode(cleaned)
        for i, prefix in enumerate(ids):
            if len(prefix) > max_len:
                raise PrefixError(i, f"{len(prefix)} pieces; at most {max_len}")
        return [
            self.tgt_tokenizer.split_prefix(prefix, ends_word=ends_in_space(raw))
            for raw, prefix in zip(prefixes, ids, strict=True)
        ]

    def prefix_steps(self, prefixes: Iterable[str]) -> list[int]:
        """The most output steps each prefix can take: its forced pieces, and a piece for each
        byte of its tail (the search never cuts either)."""
        prefixes = _listed("prefixes", prefixes, "prefix_steps([prefix])")
        parts = self._prefixes(prefixes, len(prefixes), max_len=sys.maxsize)
        return [len(ids) + len(tail) for ids, tail in parts]

    def score(
        self,
        sources: Iterable[str],
        targets: Iterable[str],
        length_penalty: float = 1.0,
        batch_size: int = BATCH_SIZE,
        max_len: int = MAX_SRC_LEN,
    ) -> list[TranslationResult | None]:
        """How the model scores given translations: `targets[i]` as the output for `sources[i]`,
        forced token by token (`search.force_decode`). A result's score, log-probability and
        token log-probabilities are what `translate` reports when its search finds that output;
        its attention is the model's alignment of the pair.

        A pair with more than `max_len` pieces on either side is not scored (None): its
        attention alone takes source x target numbers, so the input must be bounded. Raises as
        `translate` for an option out of range or texts that are not iterables of str, and
        ValueError for lists of different lengths.
        """
        check_search_options(length_penalty=length_penalty)
        _check_sizes(batch_size=batch_size, max_len=max_len)
        sources = readable(_listed("sources", sources, "score([src], [tgt])"))
        targets = readable(_listed("targets", targets, "score([src], [tgt])"))
        src_ids, tgt_ids = self.src_tokenizer.encode(sources), self.tgt_tokenizer.encode(targets)
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"{len(src_ids)} sources but {len(tgt_ids)} targets")
        results: list[TranslationResult | None] = [None] * len(src_ids)
        order = sorted(
            (i for i in range(len(src_ids)) if max(len(src_ids[i]), len(tgt_ids[i])) <= max_len),
            key=lambda i: -len(src_ids[i]),
        )
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            src, src_lengths = source_tensors([src_ids[i] for i in batch])
            tgt = target_tensor([tgt_ids[i] for i in batch])
            src, src_lengths, tgt = (t.to(self.device) for t in (src, src_lengths, tgt))
            with self._autocast():
                hyps = force_decode(self.model, src, src_lengths, tgt, length_penalty)
            for i, hyp in zip(batch, hyps, strict=True):
                results[i] = self._result(hyp, src_ids[i], truncated=False)
        return results

    def use_bfloat16(self) -> None:
        """Decode in bfloat16, as --bf16 does: the model's weights cast to bfloat16 once, in
        place, and the search under bfloat16 autocast (`autocast_dtype`). Autocast alone would
        cast each weight again at every decoder step: on an AMX Xeon, test2016 beam 5 took 2.97 s
        with the weights cast once against 3.34 s without (float32: 4.83 s). Layer norms keep
        float32 parameters: autocast runs them in float32, and their kernel takes one dtype."""
        self.model.to(torch.bfloat16)
        for module in self.model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()
        self.autocast_dtype = torch.bfloat16

    def _autocast(self) -> torch.autocast:
        """The search's precision: `autocast_dtype`, or float32 throughout when it is None."""
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _result(self, hyp: Hypothesis, source: list[int], truncated: bool) -> TranslationResult:
        return TranslationResult(
            text=self.tgt_tokenizer.decode([hyp.tokens])[0],
            score=hyp.score,
            log_prob=hyp.log_prob,
            tokens=hyp.tokens,
            token_log_probs=hyp.token_log_probs,
            attention=hyp.attention,
            src_pieces=self.src_tokenizer.pieces(source + [EOS_ID]),
            tgt_pieces=self.tgt_tokenizer.pieces(hyp.tokens + [EOS_ID]),
            truncated=truncated,
        )
