"""Additive attention (Bahdanau et al., 2015, "Neural Machine Translation by Jointly Learning
to Align and Translate", eq. 6): score(s, h_j) = v^T tanh(W s + U h_j).

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
        """values (B, S, value_size) -> keys (B, S, attention_size)."""
        return self.key_layer(values)

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
        """One attention read.

        query  (B, query_size): the decoder state the read is conditioned on
        keys   (B, S, attention_size): from `project_keys`
        values (B, S, value_size): encoder outputs
        padding_bias (B, S) float32: from `padding_bias`; every row has a real token

        Returns context (B, value_size) in the values' dtype and alphas (B, S) in float32.
        """
        query = self.query_layer(query).unsqueeze(1)  # (B, 1, A)
        energies = self.energy_layer(torch.tanh(keys + query)).squeeze(2)  # (B, S)
        # Scores and softmax in float32, so that masking and normalisation are safe under
        # bf16/fp16 autocast.
        energies = energies.float() + padding_bias
        alphas = torch.softmax(energies, dim=-1)  # (B, S)
        context = torch.bmm(alphas.unsqueeze(1).to(values.dtype), values).squeeze(1)  # (B, V)
        return context, alphas
