"""Additive attention (Bahdanau et al., 2015, "Neural Machine Translation by Jointly Learning
to Align and Translate", eq. 6): score(s, h_j) = v^T tanh(W s + U h_j).

Computed through tanh(z) = 2 sigmoid(2z) - 1:

    v^T tanh(W s + U h_j) = 2 v^T sigmoid(2 W s + 2 U h_j) - v^T 1

and the softmax over j ignores -v^T 1, which is the same for every j. So the keys are 2 U h_j,
the query 2 W s, and the energies 2 v^T sigmoid(keys + query): the alphas (and context) are the
paper's, the energies differ from its scores by that constant per query. Why: this elementwise
op over (B, S, A) at every decoder step was the largest single cost of beam search, and PyTorch's
CPU sigmoid is ~3.5x faster than its tanh (AVX2, torch 2.13; README "Performance").

The module is stateless: `project_keys` turns encoder outputs into keys once per batch, and
`padding_bias` the source mask into what masks the energies; the caller carries them (with the
values) from step to step, so nothing about one batch survives into the next.
"""

import torch
from torch import nn


class BahdanauAttention(nn.Module):
    def __init__(self, query_size: int, value_size: int, attention_size: int):
        super().__init__()
        self.key_layer = nn.Linear(value_size, attention_size, bias=False)  # U
        self.query_layer = nn.Linear(query_size, attention_size, bias=True)  # W (+ bias)
        self.energy_layer = nn.Linear(attention_size, 1, bias=False)  # v

    def project_keys(self, values: torch.Tensor) -> torch.Tensor:
        """values (B, S, value_size) -> keys 2 U h_j (B, S, attention_size)."""
        return 2 * self.key_layer(values)

    @staticmethod
    def padding_bias(mask: torch.Tensor) -> torch.Tensor:
        """mask (B, S) bool, True at real tokens -> (B, S) float32 added to the energies: 0 at
        real tokens, float32's minimum at padding, so that padding gets exactly zero weight.
        Made once per batch: one addition per step, where a masked_fill would also need the
        mask's negation at every step."""
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        return bias.masked_fill_(~mask, torch.finfo(torch.float32).min)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        padding_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One attention read for N sentences, each read by k consecutive query rows: k = 1 in
        training and greedy search, the sentence's k beams in beam search, so that the memory is
        held (and read) once per sentence rather than once per beam.

        query  (N*k, query_size): the decoder states the reads are conditioned on
        keys   (N, S, attention_size): from `project_keys`
        values (N, S, value_size): encoder outputs
        padding_bias (N, S) float32: from `padding_bias`; every row has a real token

        Returns context (N*k, value_size) in the values' dtype and alphas (N*k, S) in float32.
        """
        sentences, _, attention_size = keys.shape
        if query.size(0) % sentences:
            raise ValueError(
                f"{query.size(0)} attention queries cannot be split among {sentences} sentences"
            )
        query = 2 * self.query_layer(query).view(sentences, -1, 1, attention_size)  # (N, k, 1, A)
        # In place: the sum is needed only as the sigmoid's input (one (N, k, S, A) tensor).
        summed = (keys.unsqueeze(1) + query).sigmoid_()  # (N, k, S, A)
        energies = 2 * self.energy_layer(summed).squeeze(3)  # (N, k, S)
        # Scores and softmax in float32, so that masking and normalisation are safe under
        # bf16/fp16 autocast.
        energies = energies.float() + padding_bias.unsqueeze(1)
        alphas = torch.softmax(energies, dim=-1)  # (N, k, S)
        context = torch.bmm(alphas.to(values.dtype), values)  # (N, k, V)
        return context.flatten(0, 1), alphas.flatten(0, 1)
