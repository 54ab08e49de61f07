"""Several models decoding as one: at each step, the average of their next-token log-probabilities
(a product of experts, renormalised), or of their probabilities.

`Ensemble` has the interface search uses (`encode`, `decode_step`, `reorder_state`,
`reorder_memory`), so greedy and beam search run it unchanged. Its memory and state are tuples
holding each member's own, so members may differ in architecture; they must share the source
and target SentencePiece models, since one token id has to mean the same piece to all of them.
"""

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from seq2seq.checkpoint import LoadedModel, check_distinct, check_same_vocabulary, load_model
from seq2seq.model import DecoderState, EncoderMemory, Seq2Seq

COMBINE = ("log_prob", "prob")
Memories = tuple[EncoderMemory, ...]  # one per member
States = tuple[DecoderState, ...]  # one per member


class Ensemble(nn.Module):
    def __init__(self, models: Sequence[Seq2Seq], combine: str = "log_prob"):
        """combine: "log_prob" averages the members' log-probabilities (OpenNMT-py's rule) and,
        unlike OpenNMT-py, renormalises, so that scores stay log-probabilities: a token must
        convince every member; "prob" averages probabilities (fairseq's rule): one confident
        member suffices."""
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if combine not in COMBINE:
            raise ValueError(f"ensemble combine must be one of {COMBINE}, got {combine!r}")
        self.combine = combine
        sizes = {(m.src_vocab_size, m.tgt_vocab_size) for m in models}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members disagree on (source, target) vocab sizes: {sizes}")
        self.models = nn.ModuleList(models)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Memories, States]:
        """src (B, S), src_lengths (B,) -> each member's memory and initial state."""
        memories, states = zip(*(m.encode(src, src_lengths) for m in self.models), strict=True)
        return memories, states

    def decode_step(
        self, prev_tokens: torch.Tensor, states: States, memories: Memories
    ) -> tuple[torch.Tensor, States, torch.Tensor]:
        """prev_tokens (B,) -> the combined log-probabilities (B, V) in float32, the next
        states, and the first member's alphas (B, S): one attention to show, not a blend of
        alignments that need not agree."""
        steps = [
            m.decode_step(prev_tokens, s, mem)
            for m, s, mem in zip(self.models, states, memories, strict=True)
        ]
        if len(steps) == 1:  # bit for bit the model alone: renormalising would round
            log_probs, state, alphas = steps[0]
            return log_probs, (state,), alphas
        log_probs = torch.stack([lp for lp, _, _ in steps])  # (M, B, V)
        if self.combine == "log_prob":
            combined = torch.log_softmax(log_probs.mean(dim=0), dim=-1)  # (B, V)
        else:
            # log(mean(p)) in log space: probabilities of rare tokens would underflow as p.
            combined = torch.logsumexp(log_probs, dim=0) - math.log(len(steps))  # (B, V)
        return combined, tuple(s for _, s, _ in steps), steps[0][2]

    def reorder_state(self, states: States, index: torch.Tensor) -> States:
        return tuple(m.reorder_state(s, index) for m, s in zip(self.models, states, strict=True))

    def reorder_memory(self, memories: Memories, index: torch.Tensor) -> Memories:
        return tuple(
            m.reorder_memory(mem, index) for m, mem in zip(self.models, memories, strict=True)
        )


def load_ensemble(
    paths: Sequence[str | os.PathLike], map_location="cpu", combine: str = "log_prob"
) -> LoadedModel:
    """One checkpoint loads as its Seq2Seq; several as an Ensemble of them (see `Ensemble` for
    `combine`).

    Raises checkpoint.CheckpointError (one line naming the file) for a file that cannot be
    loaded, that does not match the first (other SentencePiece models or other languages), or
    that is given twice.
    """
    if not paths:
        raise ValueError("load_ensemble needs at least one checkpoint")
    check_distinct(paths)
    first, *others = [load_model(p, map_location) for p in paths]
    for path, other in zip(paths[1:], others, strict=True):
        check_same_vocabulary(paths[0], first, path, other)
    if not others:
        return first
    return first._replace(model=Ensemble([first.model, *(o.model for o in others)], combine).eval())
