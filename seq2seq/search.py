"""Greedy and batched beam search, and forced decoding of given outputs, over the model's
interface only.

The model is used through `encode`, `decode_step`, `reorder_state` and `reorder_memory`, so
search knows nothing about LSTMs or attention internals. Beam search keeps the state per beam
and the memory per sentence: `decode_step` gets N*k state rows and N memory rows, the k beams
of sentence i in rows i*k .. i*k + k - 1. Lengths count output tokens before EOS:
EOS is blocked until `min_len` tokens exist and forced once `int(max_len_a * src_len +
max_len_b)` do (src_len is the real source length, EOS included).

Scores: `log_prob` is the total log-probability of the output, EOS included; `score` divides it
by the GNMT length penalty ((5 + |y|) / 6) ** alpha of Wu et al. (2016), |y| counting EOS. Totals
are summed in float64 token by token, the same way in both searches, so a beam of one reproduces
greedy search exactly and long outputs do not lose precision.

Interactive translation: an output may have to begin with given tokens (`prefixes`, forced one
a step), then with the rest of a word being typed (`tails`: only the pieces that spell what is
left of it are allowed, `seq2seq.completion`); the search goes on freely from there.

Sentences leave the active batch as soon as they are finished, so the work per step shrinks with
the number of sentences still decoding, and no row ever sees another sentence's padding: the
output for a sentence does not depend on what else is in its batch.
"""

import hashlib
import math
import numbers
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

import torch

from seq2seq.completion import Completer, Tails
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID

# The output length limit a * source length + b, for every caller that does not choose its own.
MAX_LEN_A = 1.5
MAX_LEN_B = 10
# ... and never more than this: four times the longest source the model reads (MAX_SRC_LEN),
# so that a huge a or b (1e300) is no tensor size that torch refuses or memory cannot hold.
MAX_OUTPUT_LEN = 1000
# The options that only sampling has, and what `sample` takes when they are not given: every
# entry point refuses them without sampling, where they would be silently ignored.
SAMPLING_TOPK = 0  # 0: draw from every token
TEMPERATURE = 1.0  # the model's own probabilities
SEED = 0
SAMPLING_DEFAULTS = {"sampling_topk": SAMPLING_TOPK, "temperature": TEMPERATURE, "seed": SEED}
# `top_candidates` reads rows in chunks of 16 to 64 columns (a divisor of the row width)
# where its m chunks hold at most a quarter of the row; plain topk otherwise.
CHUNK_SIZES = range(64, 15, -1)


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, no BOS, no EOS
    score: float  # ranking score: log_prob, length-normalised when alpha > 0
    log_prob: float  # total log-probability, EOS included
    token_log_probs: list[float]  # one per output token, EOS included
    attention: torch.Tensor  # (len(tokens) + 1, src_len) float32 on the CPU


def ranking_score(log_prob: float, length: int, alpha: float) -> float:
    """log_prob over the GNMT length penalty ((5 + length) / 6) ** alpha; length counts EOS."""
    if alpha == 0:
        return log_prob
    try:
        return log_prob / ((5.0 + length) / 6.0) ** alpha
    except OverflowError:  # alpha in the hundreds: the penalty is past any float, the score 0
        return log_prob / math.inf


class SearchOptionError(ValueError):
    """A search option out of its range. `option` is its argument name ("length_penalty"), so
    that a command can name its flag and the service its field."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


def check_search_options(
    beam_size: int = 1,
    nbest: int = 1,
    length_penalty: float = 1.0,
    max_len_a: float = MAX_LEN_A,
    max_len_b: float = MAX_LEN_B,
    min_len: int = 1,
    sampling_topk: int = SAMPLING_TOPK,
    temperature: float = TEMPERATURE,
    seed: int = SEED,
    sampling: bool = False,
) -> None:
    """The one rule for the search options; raises SearchOptionError naming the first one out of
    range. A NaN or infinite length penalty or limit would fail every sentence (or rank
    silently by log-probability), so it is refused here, before any sentence is searched."""
    # A bool is an int to Python, and 2.0 is no beam size: either failed deep inside torch.
    for option, value in (
        ("beam_size", beam_size), ("nbest", nbest), ("min_len", min_len),
        ("sampling_topk", sampling_topk), ("seed", seed),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SearchOptionError(option, f"must be an integer, got {value!r}")
    for option, value in (
        ("length_penalty", length_penalty), ("max_len_a", max_len_a), ("max_len_b", max_len_b),
        ("temperature", temperature),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SearchOptionError(option, f"must be a number, got {value!r}")
    if beam_size < 1:
        raise SearchOptionError("beam_size", f"must be at least 1, got {beam_size}")
    if sampling and nbest != 1:
        raise SearchOptionError("nbest", f"sampling draws one translation a sentence, got {nbest}")
    if not 1 <= nbest <= beam_size and not sampling:
        raise SearchOptionError(
            "nbest", f"need 1 <= nbest <= beam_size, got nbest={nbest}, beam_size={beam_size}"
        )
    # The GNMT penalty's alpha: 0 ranks by log-probability, larger values favour longer outputs.
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise SearchOptionError(
            "length_penalty", f"must be a finite number >= 0, got {length_penalty}"
        )
    # A negative slope would give longer sources shorter limits; b may be negative (min_len
    # is the floor either way).
    if not (math.isfinite(max_len_a) and max_len_a >= 0):
        raise SearchOptionError("max_len_a", f"must be a finite number >= 0, got {max_len_a}")
    if not math.isfinite(max_len_b):
        raise SearchOptionError("max_len_b", f"must be a finite number, got {max_len_b}")
    if min_len < 0:
        raise SearchOptionError("min_len", f"must be at least 0, got {min_len}")
    if sampling_topk < 0:
        raise SearchOptionError("sampling_topk", f"must be at least 0, got {sampling_topk}")
    # 1 / temperature scales the log-probabilities: 0 would divide by zero, a huge value give
    # every token the same chance.
    if not (math.isfinite(temperature) and temperature > 0):
        raise SearchOptionError("temperature", f"must be a finite number > 0, got {temperature}")


def check_applicable(sampling: bool, given: Collection[str], switch: str = "sampling") -> None:
    """Of the options a caller set itself (`given`), refuse those its mode would silently
    ignore: beam_size when sampling, the sampling options when searching. SearchOptionError
    naming the first; `switch` is sampling's name as the caller spells it ("--sampling")."""
    if sampling and "beam_size" in given:
        raise SearchOptionError("beam_size", f"does not apply with {switch} (nothing is searched)")
    for name in SAMPLING_DEFAULTS:
        if name in given and not sampling:
            raise SearchOptionError(name, f"applies with {switch} only")


def output_limit(
    src_length: int, max_len_a: float = MAX_LEN_A, max_len_b: float = MAX_LEN_B, min_len: int = 1
) -> int:
    """The most output tokens before EOS for a source of `src_length` pieces, EOS included."""
    return max(int(min(max_len_a * src_length + max_len_b, MAX_OUTPUT_LEN)), min_len)


def _max_lengths(
    src_lengths: torch.Tensor,
    max_len_a: float,
    max_len_b: float,
    min_len: int,
    prefixes: torch.Tensor | None = None,
    completer: Completer | None = None,
) -> torch.Tensor:
    """src_lengths (B,) -> the most output tokens before EOS per sentence (B,), on its device;
    never fewer than its prefix has, nor than its tail could take at a byte a piece (EOS may
    then follow at once).

    Computed in Python so that a sentence's limit is the same exact number in any batch.
    """
    limits = [output_limit(n, max_len_a, max_len_b, min_len) for n in src_lengths.tolist()]
    limits = torch.tensor(limits, dtype=torch.long, device=src_lengths.device)
    if prefixes is not None:
        limits = torch.maximum(limits, (prefixes != PAD_ID).sum(1).to(limits.device))
    if completer is not None:
        limits = torch.maximum(limits, completer.starts + completer.lengths)
    return limits


def _completer(
    prefixes: torch.Tensor | None, tails: Tails | None, batch: int, device: torch.device
) -> Completer | None:
    """The tails of a search, each beginning after its sentence's forced prefix; ValueError
    unless there is one a sentence."""
    if tails is None:
        return None
    if len(tails.texts) != batch:
        raise ValueError(f"tails: {len(tails.texts)} for a batch of {batch}")
    if prefixes is None:
        starts = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        starts = (prefixes != PAD_ID).sum(1).to(device)
    return Completer(tails, starts)


def _check_prefixes(prefixes: torch.Tensor | None, batch: int) -> None:
    """prefixes (B, P): the output ids each output must begin with, padded with PAD at the end
    (a row of PAD: no prefix). ValueError for anything else."""
    if prefixes is None:
        return
    if prefixes.dim() != 2 or prefixes.size(0) != batch:
        raise ValueError(
            f"prefixes must be a (batch, length) tensor for a batch of {batch}, got shape "
            f"{tuple(prefixes.shape)}"
        )
    real = prefixes != PAD_ID  # (B, P)
    in_place = torch.arange(prefixes.size(1), device=prefixes.device) < real.sum(1, keepdim=True)
    if not bool((real == in_place).all()):
        raise ValueError("a prefix has PAD before its end")
    if bool(((prefixes == BOS_ID) | (prefixes == EOS_ID)).any()):
        raise ValueError("a prefix cannot hold BOS or EOS")


def _forced(prefixes: torch.Tensor | None, rows: torch.Tensor, step: int) -> torch.Tensor | None:
    """The token each of `rows` (N,) (rows of prefixes) must take at `step` (N,), PAD where it
    is free; None where no row is forced any more."""
    if prefixes is None or step >= prefixes.size(1):
        return None
    return prefixes[rows, step]


def _constrain(
    log_probs: torch.Tensor,
    step: int,
    at_max: torch.Tensor,
    min_len: int,
    forced: torch.Tensor | None = None,
) -> None:
    """In place on log_probs (N, V): the forced token (N,) alone where one is given (not PAD),
    never PAD or BOS, no EOS before min_len, only EOS at_max (N,).

    A forced token keeps the model's own log-probability, so scores stay true model scores.
    """
    if forced is not None:
        rows = (forced != PAD_ID).unsqueeze(1)  # (N, 1)
        kept = log_probs.gather(1, forced.unsqueeze(1))  # (N, 1) free rows: PAD's, reset below
        log_probs.masked_fill_(rows, -math.inf)
        log_probs.scatter_(1, forced.unsqueeze(1), kept)
    log_probs[:, PAD_ID] = -math.inf
    log_probs[:, BOS_ID] = -math.inf
    if step < min_len:
        log_probs[:, EOS_ID] = -math.inf
    if at_max.any():
        eos = log_probs[:, EOS_ID].clone()  # (N,)
        log_probs.masked_fill_(at_max.unsqueeze(1), -math.inf)
        log_probs[:, EOS_ID] = torch.where(at_max, eos, log_probs[:, EOS_ID])


class _RowRules:
    """For the searches that go token by token (a row per sentence): each sentence's length
    limit, prefix and tail. `constrain(log_probs (N, V), alive (N,), step)` masks the rows of
    the sentences `alive` before a token is picked, `chose(alive, tokens (N,))` records it."""

    def __init__(
        self,
        src_lengths: torch.Tensor,
        max_len_a: float,
        max_len_b: float,
        min_len: int,
        prefixes: torch.Tensor | None,
        tails: Tails | None,
    ):
        batch, device = src_lengths.numel(), src_lengths.device
        self.prefixes, self.min_len = prefixes, min_len
        self.completer = _completer(prefixes, tails, batch, device)
        self.max_lens = _max_lengths(
            src_lengths, max_len_a, max_len_b, min_len, prefixes, self.completer
        )  # (B,)
        self.steps = int(self.max_lens.max()) + 1
        self.spelled = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) tail bytes
        self.spelling = torch.zeros(batch, dtype=torch.bool, device=device)  # (N,) this step

    def constrain(self, log_probs: torch.Tensor, alive: torch.Tensor, t: int) -> None:
        if self.completer is not None:
            self.spelling = self.completer.restrict(log_probs, alive, self.spelled[alive], t)
        forced = _forced(self.prefixes, alive, t)
        _constrain(log_probs, t, self.max_lens[alive] <= t, self.min_len, forced)

    def chose(self, alive: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.completer is not None:
            spelled = self.completer.advance(self.spelled[alive], self.spelling, tokens)
            self.spelled[alive] = spelled


@torch.inference_mode()
def greedy_search(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float = MAX_LEN_A,
    max_len_b: float = MAX_LEN_B,
    min_len: int = 1,
    length_penalty: float = 1.0,
    prefixes: torch.Tensor | None = None,
    tails: Tails | None = None,
) -> list[Hypothesis]:
    """src (B, S) padded with PAD and ending in EOS, src_lengths (B,) -> one hypothesis each.

    `length_penalty` only scales the reported score, so that it means the same as beam search's.
    `prefixes` (B, P), padded with PAD: output ids each output begins with (forced, and scored
    as the model scores them), the search going on from there; the length limit never cuts one.
    `tails`: the unfinished word each output goes on with after its prefix, spelled by any
    pieces that agree with it (`seq2seq.completion`); the length limit never cuts one either.
    """
    check_search_options(1, 1, length_penalty, max_len_a, max_len_b, min_len)
    _check_prefixes(prefixes, src.size(0))
    if src.size(0) == 0:
        return []
    rules = _RowRules(src_lengths, max_len_a, max_len_b, min_len, prefixes, tails)

    def most_probable(log_probs: torch.Tensor, alive: torch.Tensor, t: int) -> torch.Tensor:
        rules.constrain(log_probs, alive, t)
        tokens = log_probs.max(dim=1).indices  # (N,)
        rules.chose(alive, tokens)
        return tokens

    return _token_by_token(model, src, src_lengths, rules.steps, most_probable, length_penalty)


@torch.inference_mode()
def sample(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    sampling_topk: int = SAMPLING_TOPK,
    temperature: float = TEMPERATURE,
    seed: int = SEED,
    max_len_a: float = MAX_LEN_A,
    max_len_b: float = MAX_LEN_B,
    min_len: int = 1,
    length_penalty: float = 1.0,
    prefixes: torch.Tensor | None = None,
    tails: Tails | None = None,
) -> list[Hypothesis]:
    """src (B, S) as for greedy search -> one translation each, drawn token by token from the
    model's distribution (back-translation by sampling, Edunov et al. 2018, "Understanding
    Back-Translation at Scale"): from the `sampling_topk` most probable tokens (0: all), with
    probabilities proportional to p ** (1 / temperature). The length limits and min_len hold as
    in search; the reported log-probabilities are the model's own, untempered.

    Sentence i draws from a generator of its own, seeded by `seed` and its source ids, so its
    sample depends on neither its batch nor its place in the input (identical sources get the
    same sample): the same seed gives the same samples at any batch size and on any workers.
    `prefixes` and `tails` as for greedy search: the draws begin after them.
    """
    check_search_options(
        1, 1, length_penalty, max_len_a, max_len_b, min_len, sampling_topk, temperature, seed
    )
    _check_prefixes(prefixes, src.size(0))
    if src.size(0) == 0:
        return []
    rules = _RowRules(src_lengths, max_len_a, max_len_b, min_len, prefixes, tails)
    steps = rules.steps
    generators = [
        _sentence_generator(seed, row[:n])
        for row, n in zip(src.cpu(), src_lengths.tolist(), strict=True)
    ]
    uniforms = torch.stack(  # (B, T): each sentence's draws, one a step
        [torch.rand(steps, dtype=torch.float64, generator=g) for g in generators]
    ).to(src.device)

    def drawn(log_probs: torch.Tensor, alive: torch.Tensor, t: int) -> torch.Tensor:
        rules.constrain(log_probs, alive, t)
        # In float64 (where a temperature of 1e-300 is not 0), shifted so that each row's best
        # is 0 before the division: a tiny temperature sends the others to -inf, never all of
        # them (softmax would be NaN).
        scores = log_probs.double()
        scores = (scores - scores.max(dim=1, keepdim=True).values) / temperature  # (N, V)
        if sampling_topk:
            scores, tokens = scores.topk(min(sampling_topk, scores.size(1)), dim=1)  # (N, K)
        cdf = scores.softmax(dim=1).cumsum(dim=1)  # (N, K)
        # The first token whose cumulative probability exceeds the draw; "right" never picks a
        # token of probability 0 (a constrained one), whose cdf equals its predecessor's.
        point = (uniforms[alive, t] * cdf[:, -1]).unsqueeze(1)  # (N, 1)
        index = torch.searchsorted(cdf, point, right=True).clamp(max=cdf.size(1) - 1)  # (N, 1)
        chosen = (tokens.gather(1, index) if sampling_topk else index).squeeze(1)  # (N,)
        rules.chose(alive, chosen)
        return chosen

    return _token_by_token(model, src, src_lengths, steps, drawn, length_penalty)


def _sentence_generator(seed: int, source: torch.Tensor) -> torch.Generator:
    """A generator seeded by `seed` and a sentence's source ids (EOS included): the same for
    that sentence wherever it is decoded."""
    data = f"{seed}:".encode() + source.numpy().tobytes()  # any int; ":" ends its digits
    digest = hashlib.blake2b(data, digest_size=8)
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


@torch.inference_mode()
def force_decode(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    targets: torch.Tensor,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """src (B, S) as for search, targets (B, T): output ids, each ending in EOS, padded with PAD
    -> the hypothesis each target is, scored exactly as the searches score theirs (token by
    token, float64 totals, the same length penalty), with the attention that produced it.

    This is the model's probability of a given translation: scoring references (perplexity),
    reranking, filtering a corpus, or the attention as an alignment of a given pair.
    """
    check_search_options(length_penalty=length_penalty)
    if targets.size(0) != src.size(0):
        raise ValueError(f"{targets.size(0)} targets for {src.size(0)} sources")
    # The loop below ends a row at its EOS: one EOS, last, or a row would never end.
    lengths = (targets != PAD_ID).sum(1, keepdim=True)  # (B, 1) EOS included
    last = targets.gather(1, (lengths - 1).clamp(min=0))  # (B, 1)
    if not bool(((targets == EOS_ID).sum(1) == 1).all() and (last == EOS_ID).all()):
        raise ValueError("each target must end in its only EOS, with PAD only after it")
    return _token_by_token(
        model, src, src_lengths, targets.size(1), lambda _, alive, t: targets[alive, t],
        length_penalty,
    )


def _token_by_token(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    steps: int,
    choose: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    length_penalty: float,
) -> list[Hypothesis]:
    """One token a step for each sentence, until its EOS or `steps`: the token that
    choose(log_probs (N, V), alive (N,) batch rows, step) picks for each row (N,); it may mask
    log_probs in place first (the length constraints), never change the value it picks.
    Greedy search picks the most probable token, sampling draws one, forced decoding takes the
    target's."""
    batch, src_len = src.shape
    if batch == 0:
        return []
    device = src.device
    memory, state = model.encode(src, src_lengths)

    out_tokens = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
    out_log_probs = torch.zeros(batch, steps, device=device)  # (B, T)
    out_alphas = torch.zeros(batch, steps, src_len, device=device)  # (B, T, S)
    out_lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) EOS included
    out_totals = torch.zeros(batch, dtype=torch.float64, device=device)  # (B,)
    alive = torch.arange(batch, device=device)  # (N,) batch rows still decoding
    totals = torch.zeros(batch, dtype=torch.float64, device=device)  # (N,) running log-probs
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (N,)
    for t in range(steps):
        log_probs, state, alphas = model.decode_step(prev, state, memory)  # (N, V), (N, S)
        prev = choose(log_probs, alive, t)  # (N,)
        best = log_probs.gather(1, prev.unsqueeze(1)).squeeze(1)  # (N,)
        totals = totals + best.double()  # the same sums as beam search's: beam 1 == greedy
        out_tokens[alive, t] = prev
        out_log_probs[alive, t] = best
        out_alphas[alive, t] = alphas.float()
        done = prev == EOS_ID  # (N,)
        if done.any():
            out_lengths[alive[done]] = t + 1
            out_totals[alive[done]] = totals[done]
            keep = (~done).nonzero().squeeze(1)  # (N',)
            if keep.numel() == 0:
                break
            alive, prev, totals = alive[keep], prev[keep], totals[keep]
            state = model.reorder_state(state, keep)
            memory = model.reorder_memory(memory, keep)

    out_alphas = out_alphas.cpu()
    hypotheses = []
    for tokens, log_probs, total, alphas, length, n in zip(
        out_tokens.tolist(),
        out_log_probs.tolist(),
        out_totals.tolist(),
        out_alphas,
        out_lengths.tolist(),
        src_lengths.tolist(),
        strict=True,
    ):
        score = ranking_score(total, length, length_penalty)
        attention = alphas[:length, :n].clone()
        hypotheses.append(
            Hypothesis(tokens[: length - 1], score, total, log_probs[:length], attention)
        )
    return hypotheses


def top_candidates(candidates: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """candidates (N, W) -> the m largest of each row (N, m), sorted, and their columns (N, m):
    the values of `candidates.topk(m, dim=1)`, and its columns but among equal values (which
    topk orders as it likes anyway), in a third of the time on beam search's wide rows.

    Why: on a CPU topk costs ~0.65 ns a number (a step of 128 sentences x 5 beams x 8,000
    tokens: 3.3 ms, a seventh of beam search's time in bfloat16), while a max over fixed-size
    chunks is vectorised. The m largest numbers of a row lie in the m chunks with the largest
    maxima: a chunk below those has m chunks above it, each holding a larger number than any of
    its own. So topk runs on the chunk maxima, then on those m chunks' numbers only.
    """
    rows, width = candidates.shape
    chunk = next((c for c in CHUNK_SIZES if width % c == 0 and 4 * m * c <= width), None)
    if chunk is None:
        return candidates.topk(m, dim=1)
    maxima = candidates.view(rows, width // chunk, chunk).amax(2)  # (N, W / c)
    chunks = maxima.topk(m, dim=1).indices  # (N, m)
    offsets = torch.arange(chunk, device=candidates.device)  # (c,)
    columns = (chunks.unsqueeze(2) * chunk + offsets).view(rows, m * chunk)  # (N, m * c)
    values, picked = candidates.gather(1, columns).topk(m, dim=1)  # (N, m)
    return values, columns.gather(1, picked)


class _Step(NamedTuple):
    """The beams that survive one step, in the next step's row order (N'k,)."""

    parents: torch.Tensor  # rows of this step they extend
    tokens: torch.Tensor  # token each appended
    log_probs: torch.Tensor  # that token's log-probability
    alphas: torch.Tensor  # (N'k, S) the attention that produced it


class _Finished(NamedTuple):
    """Hypotheses that ended in EOS at one step (F,)."""

    sentence: torch.Tensor  # index in the original batch
    step: int
    parent: torch.Tensor  # row of that step they extend
    log_prob: torch.Tensor  # the hypothesis's total, float64
    eos_log_prob: torch.Tensor
    eos_alphas: torch.Tensor  # (F, S)


@torch.inference_mode()
def beam_search(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam_size: int = 5,
    nbest: int = 1,
    length_penalty: float = 1.0,
    max_len_a: float = MAX_LEN_A,
    max_len_b: float = MAX_LEN_B,
    min_len: int = 1,
    prefixes: torch.Tensor | None = None,
    tails: Tails | None = None,
) -> list[list[Hypothesis]]:
    """src (B, S) padded with PAD and ending in EOS, src_lengths (B,) -> nbest each, best first.

    The B sentences' k beams are flattened into B*k rows. Each step takes the 2k best
    (beam, token) continuations per sentence: at most k of them are EOS, so k live ones always
    remain. EOS among the k best finishes a hypothesis (exactly what a k-wide beam would keep);
    a sentence stops when it has k finished hypotheses or reaches its length limit, and leaves
    the batch. The survivors' history is kept as back-pointers and read back at the end.
    `prefixes` as for greedy search: while a sentence's prefix lasts, its one live beam takes
    the prefix's token (as at the start, the other k-1 stay empty); the beam opens after it.
    `tails` as for greedy search: each beam spells its sentence's tail its own way.
    """
    check_search_options(beam_size, nbest, length_penalty, max_len_a, max_len_b, min_len)
    k = beam_size
    batch = src.size(0)
    _check_prefixes(prefixes, batch)
    if batch == 0:
        return []
    device = src.device
    completer = _completer(prefixes, tails, batch, device)
    max_lens = _max_lengths(src_lengths, max_len_a, max_len_b, min_len, prefixes, completer)
    memory, state = model.encode(src, src_lengths)
    # The state per beam (Bk rows), the memory per sentence (B rows): decode_step's contract.
    state = model.reorder_state(state, torch.arange(batch, device=device).repeat_interleave(k))

    # Only the first beam is live at the start; the other k-1 copies would repeat it.
    beam_scores = torch.full((batch, k), -math.inf, device=device)  # (N, k) ranks candidates
    beam_scores[:, 0] = 0.0
    totals = beam_scores.double().view(-1)  # (Nk,) the same sums in float64, for reporting
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)  # (Nk,)
    alive = torch.arange(batch, device=device)  # (N,) original index of each active sentence
    num_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    beam_offsets = torch.arange(2 * k, device=device)  # (2k,) candidate rank, breaks ties
    spelled = torch.zeros(batch * k, dtype=torch.long, device=device)  # (Nk,) tail bytes
    history: list[_Step] = []
    finished: list[_Finished] = []
    for t in range(int(max_lens.max()) + 1):
        n = alive.numel()
        log_probs, state, alphas = model.decode_step(prev, state, memory)  # (Nk, V), (Nk, S)
        vocab = log_probs.size(1)
        at_max = max_lens[alive] <= t  # (N,)
        rows = alive.repeat_interleave(k)  # (Nk,) each row's sentence
        if completer is not None:
            spelling = completer.restrict(log_probs, rows, spelled, t)  # (Nk,)
        _constrain(log_probs, t, at_max.repeat_interleave(k), min_len, _forced(prefixes, rows, t))

        candidates = (beam_scores.view(-1, 1) + log_probs).view(n, k * vocab)  # (N, kV)
        cand_scores, cand_ids = top_candidates(candidates, 2 * k)  # (N, 2k)
        sentence_rows = torch.arange(n, device=device).unsqueeze(1) * k  # (N, 1)
        cand_parents = sentence_rows + cand_ids // vocab  # (N, 2k) rows of this step
        cand_tokens = cand_ids % vocab  # (N, 2k)
        is_eos = cand_tokens == EOS_ID

        ends = is_eos[:, :k] & (cand_scores[:, :k] > -math.inf)  # (N, k)
        if ends.any():
            sent, rank = ends.nonzero(as_tuple=True)  # (F,), (F,)
            parent = cand_parents[sent, rank]
            eos_log_probs = log_probs[parent, EOS_ID]  # (F,)
            total = totals[parent] + eos_log_probs.double()
            finished.append(
                _Finished(alive[sent], t, parent, total, eos_log_probs, alphas[parent])
            )
            num_finished.index_add_(0, alive[sent], torch.ones_like(sent))

        # The k best non-EOS candidates continue, in score order.
        live = (is_eos.long() * 2 * k + beam_offsets).argsort(dim=1)[:, :k]  # (N, k)
        beam_scores = cand_scores.gather(1, live)  # (N, k)
        parents = cand_parents.gather(1, live)  # (N, k)
        tokens = cand_tokens.gather(1, live)  # (N, k)

        done = at_max | (num_finished[alive] >= k)  # (N,)
        if done.any():
            keep = (~done).nonzero().squeeze(1)  # (N',)
            if keep.numel() == 0:
                break
            alive, beam_scores = alive[keep], beam_scores[keep]
            parents, tokens = parents[keep], tokens[keep]
            memory = model.reorder_memory(memory, keep)
        parents, tokens = parents.view(-1), tokens.view(-1)  # (N'k,)
        token_log_probs = log_probs[parents, tokens]  # (N'k,)
        totals = totals[parents] + token_log_probs.double()
        history.append(_Step(parents, tokens, token_log_probs, alphas[parents]))
        if completer is not None:
            spelled = completer.advance(spelled[parents], spelling[parents], tokens)
        state = model.reorder_state(state, parents)
        prev = tokens

    return _collect(finished, history, src_lengths, batch, nbest, length_penalty)


def _collect(
    finished: list[_Finished],
    history: list[_Step],
    src_lengths: torch.Tensor,
    batch: int,
    nbest: int,
    alpha: float,
) -> list[list[Hypothesis]]:
    """Pick each sentence's nbest finished hypotheses, then follow their back-pointers to the
    start, all at once."""
    sentence = torch.cat([f.sentence for f in finished]).tolist()
    lengths = [f.step + 1 for f in finished for _ in range(f.parent.numel())]
    totals = torch.cat([f.log_prob for f in finished]).tolist()
    scores = [ranking_score(p, n, alpha) for p, n in zip(totals, lengths, strict=True)]
    candidates: list[list[int]] = [[] for _ in range(batch)]
    for h, s in enumerate(sentence):
        candidates[s].append(h)
    # A stable sort: equal scores keep the order they finished in, which no batch changes.
    chosen = [h for hyps in candidates for h in sorted(hyps, key=lambda h: -scores[h])[:nbest]]

    device = finished[0].parent.device
    pick = torch.tensor(chosen, device=device)  # (H,)
    parent = torch.cat([f.parent for f in finished])[pick]  # (H,) rows at the EOS step
    end = torch.tensor(lengths, device=device)[pick] - 1  # (H,) the EOS step
    num_hyps, steps = len(chosen), int(end.max()) + 1
    hyp_ids = torch.arange(num_hyps, device=device)
    out_tokens = torch.full((num_hyps, steps), PAD_ID, dtype=torch.long, device=device)  # (H, T)
    out_log_probs = torch.zeros(num_hyps, steps, device=device)  # (H, T)
    out_alphas = torch.zeros(num_hyps, steps, finished[0].eos_alphas.size(1), device=device)
    out_log_probs[hyp_ids, end] = torch.cat([f.eos_log_prob for f in finished])[pick]
    out_alphas[hyp_ids, end] = torch.cat([f.eos_alphas for f in finished])[pick].float()
    cursor = parent.clone()  # (H,) each hypothesis's row at the step being read
    for t in range(steps - 1, 0, -1):
        active = (end >= t).nonzero().squeeze(1)
        row = cursor[active]
        step = history[t - 1]
        out_tokens[active, t - 1] = step.tokens[row]
        out_log_probs[active, t - 1] = step.log_probs[row]
        out_alphas[active, t - 1] = step.alphas[row].float()
        cursor[active] = step.parents[row]

    per_sentence: list[list[Hypothesis]] = [[] for _ in range(batch)]
    src_lens = src_lengths.tolist()
    for h, tokens, log_probs, alphas in zip(
        chosen, out_tokens.tolist(), out_log_probs.tolist(), out_alphas.cpu(), strict=True
    ):
        s, length = sentence[h], lengths[h]
        attention = alphas[:length, : src_lens[s]].clone()
        per_sentence[s].append(
            Hypothesis(tokens[: length - 1], scores[h], totals[h], log_probs[:length], attention)
        )
    return per_sentence
