"""Greedy and batched beam search over the model's interface only.

The model is used through `encode`, `decode_step`, `reorder_state` and `reorder_memory`, so
search knows nothing about LSTMs or attention internals. Lengths count output tokens before EOS:
EOS is blocked until `min_len` tokens exist and forced once `int(max_len_a * src_len +
max_len_b)` do (src_len is the real source length, EOS included).

Scores: `log_prob` is the total log-probability of the output, EOS included; `score` divides it
by the GNMT length penalty ((5 + |y|) / 6) ** alpha of Wu et al. (2016), |y| counting EOS.

Sentences leave the active batch as soon as they are finished, so the work per step shrinks with
the number of sentences still decoding, and no row ever sees another sentence's padding: the
output for a sentence does not depend on what else is in its batch.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, no BOS, no EOS
    score: float  # ranking score: log_prob, length-normalised when alpha > 0
    log_prob: float  # total log-probability, EOS included
    token_log_probs: list[float]  # one per output token, EOS included
    attention: torch.Tensor  # (len(tokens) + 1, src_len) float32 on the CPU


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; length counts EOS."""
    return ((5.0 + length) / 6.0) ** alpha


def _max_lengths(
    src_lengths: torch.Tensor, max_len_a: float, max_len_b: float, min_len: int
) -> torch.Tensor:
    """src_lengths (B,) -> the most output tokens before EOS per sentence (B,), on its device.

    Computed in Python so that a sentence's limit is the same exact number in any batch.
    """
    limits = [max(int(max_len_a * n + max_len_b), min_len) for n in src_lengths.tolist()]
    return torch.tensor(limits, dtype=torch.long, device=src_lengths.device)


def _constrain(log_probs: torch.Tensor, step: int, at_max: torch.Tensor, min_len: int) -> None:
    """In place on log_probs (N, V): never PAD or BOS, no EOS before min_len, only EOS at_max (N,).

    A forced EOS keeps the model's own log-probability, so scores stay true model scores.
    """
    log_probs[:, PAD_ID] = -math.inf
    log_probs[:, BOS_ID] = -math.inf
    if step < min_len:
        log_probs[:, EOS_ID] = -math.inf
    if at_max.any():
        eos = log_probs[:, EOS_ID].clone()  # (N,)
        log_probs.masked_fill_(at_max.unsqueeze(1), -math.inf)
        log_probs[:, EOS_ID] = torch.where(at_max, eos, log_probs[:, EOS_ID])


def _hypothesis(
    tokens: list[int], token_log_probs: list[float], attention: torch.Tensor, alpha: float
) -> Hypothesis:
    """tokens and token_log_probs include the final EOS; attention (T, src_len)."""
    # Summed in float64 from the per-token values, so greedy and beam report identical
    # numbers for identical outputs whatever order they accumulated in.
    log_prob = math.fsum(token_log_probs)
    score = log_prob / length_penalty(len(tokens), alpha) if alpha > 0 else log_prob
    return Hypothesis(tokens[:-1], score, log_prob, token_log_probs, attention)


@torch.inference_mode()
def greedy_search(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 1,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """src (B, S) padded with PAD and ending in EOS, src_lengths (B,) -> one hypothesis each.

    `length_penalty` only scales the reported score, so that it means the same as beam search's.
    """
    batch, src_len = src.shape
    device = src.device
    max_lens = _max_lengths(src_lengths, max_len_a, max_len_b, min_len)  # (B,)
    steps = int(max_lens.max()) + 1
    memory, state = model.encode(src, src_lengths)

    out_tokens = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
    out_log_probs = torch.zeros(batch, steps, device=device)  # (B, T)
    out_alphas = torch.zeros(batch, steps, src_len, device=device)  # (B, T, S)
    out_lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    alive = torch.arange(batch, device=device)  # (N,) batch rows still decoding
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (N,)
    for t in range(steps):
        log_probs, state, alphas = model.decode_step(prev, state, memory)  # (N, V), (N, S)
        _constrain(log_probs, t, max_lens[alive] <= t, min_len)
        best, prev = log_probs.max(dim=1)  # (N,), (N,)
        out_tokens[alive, t] = prev
        out_log_probs[alive, t] = best
        out_alphas[alive, t] = alphas.float()
        done = prev == EOS_ID  # (N,)
        if done.any():
            out_lengths[alive[done]] = t + 1
            keep = (~done).nonzero().squeeze(1)  # (N',)
            if keep.numel() == 0:
                break
            alive, prev = alive[keep], prev[keep]
            state = model.reorder_state(state, keep)
            memory = model.reorder_memory(memory, keep)

    out_alphas = out_alphas.cpu()
    hypotheses = []
    for tokens, log_probs, alphas, length, n in zip(
        out_tokens.tolist(),
        out_log_probs.tolist(),
        out_alphas,
        out_lengths.tolist(),
        src_lengths.tolist(),
        strict=True,
    ):
        hypotheses.append(
            _hypothesis(
                tokens[:length], log_probs[:length], alphas[:length, :n].clone(), length_penalty
            )
        )
    return hypotheses


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
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 1,
) -> list[list[Hypothesis]]:
    """src (B, S) padded with PAD and ending in EOS, src_lengths (B,) -> nbest each, best first.

    The B sentences' k beams are flattened into B*k rows. Each step takes the 2k best
    (beam, token) continuations per sentence: at most k of them are EOS, so k live ones always
    remain. EOS among the k best finishes a hypothesis (exactly what a k-wide beam would keep);
    a sentence stops when it has k finished hypotheses or reaches its length limit, and leaves
    the batch. The survivors' history is kept as back-pointers and read back at the end.
    """
    if beam_size < 1 or not 1 <= nbest <= beam_size:
        raise ValueError(f"need 1 <= nbest <= beam_size, got nbest={nbest}, beam={beam_size}")
    k = beam_size
    batch = src.size(0)
    device = src.device
    max_lens = _max_lengths(src_lengths, max_len_a, max_len_b, min_len)  # (B,)
    memory, state = model.encode(src, src_lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (Bk,)
    memory, state = model.reorder_memory(memory, rows), model.reorder_state(state, rows)

    # Only the first beam is live at the start; the other k-1 copies would repeat it.
    beam_scores = torch.full((batch, k), -math.inf, device=device)  # (N, k)
    beam_scores[:, 0] = 0.0
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)  # (Nk,)
    alive = torch.arange(batch, device=device)  # (N,) original index of each active sentence
    num_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    beam_offsets = torch.arange(2 * k, device=device)  # (2k,) candidate rank, breaks ties
    history: list[_Step] = []
    finished: list[_Finished] = []
    for t in range(int(max_lens.max()) + 1):
        n = alive.numel()
        log_probs, state, alphas = model.decode_step(prev, state, memory)  # (Nk, V), (Nk, S)
        vocab = log_probs.size(1)
        at_max = max_lens[alive] <= t  # (N,)
        _constrain(log_probs, t, at_max.repeat_interleave(k), min_len)

        candidates = (beam_scores.view(-1, 1) + log_probs).view(n, k * vocab)  # (N, kV)
        cand_scores, cand_ids = candidates.topk(2 * k, dim=1)  # (N, 2k)
        sentence_rows = torch.arange(n, device=device).unsqueeze(1) * k  # (N, 1)
        cand_parents = sentence_rows + cand_ids // vocab  # (N, 2k) rows of this step
        cand_tokens = cand_ids % vocab  # (N, 2k)
        is_eos = cand_tokens == EOS_ID

        ends = is_eos[:, :k] & (cand_scores[:, :k] > -math.inf)  # (N, k)
        if ends.any():
            sent, rank = ends.nonzero(as_tuple=True)  # (F,), (F,)
            parent = cand_parents[sent, rank]
            finished.append(
                _Finished(alive[sent], t, parent, log_probs[parent, EOS_ID], alphas[parent])
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
            kept_rows = (sentence_rows[keep] + torch.arange(k, device=device)).view(-1)  # (N'k,)
            memory = model.reorder_memory(memory, kept_rows)
        parents, tokens = parents.view(-1), tokens.view(-1)  # (N'k,)
        history.append(_Step(parents, tokens, log_probs[parents, tokens], alphas[parents]))
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
    """Follow every finished hypothesis's back-pointers to its start, all at once."""
    sentence = torch.cat([f.sentence for f in finished])  # (H,)
    parent = torch.cat([f.parent for f in finished])  # (H,)
    end = torch.cat([torch.full_like(f.parent, f.step) for f in finished])  # (H,)
    num_hyps, steps = sentence.numel(), finished[-1].step + 1
    src_len = finished[0].eos_alphas.size(1)
    device = sentence.device
    hyp_ids = torch.arange(num_hyps, device=device)

    out_tokens = torch.full((num_hyps, steps), PAD_ID, dtype=torch.long, device=device)  # (H, T)
    out_log_probs = torch.zeros(num_hyps, steps, device=device)  # (H, T)
    out_alphas = torch.zeros(num_hyps, steps, src_len, device=device)  # (H, T, S)
    out_tokens[hyp_ids, end] = EOS_ID
    out_log_probs[hyp_ids, end] = torch.cat([f.eos_log_prob for f in finished])
    out_alphas[hyp_ids, end] = torch.cat([f.eos_alphas for f in finished]).float()
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
    lengths = src_lengths.tolist()
    out_alphas = out_alphas.cpu()
    for s, length, tokens, log_probs, alphas in zip(
        sentence.tolist(),
        (end + 1).tolist(),
        out_tokens.tolist(),
        out_log_probs.tolist(),
        out_alphas,
        strict=True,
    ):
        attention = alphas[:length, : lengths[s]].clone()
        per_sentence[s].append(_hypothesis(tokens[:length], log_probs[:length], attention, alpha))
    # A stable sort: equal scores keep the order they finished in, which no batch changes.
    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in per_sentence]
