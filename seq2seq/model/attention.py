"""Additive attention (Bahdanau et al., 2015, "Neural Machine Translation by Jointly Learning
to Align and Translate", eq. 6): score(s, h_j) = v^T tanh(W s + U h_j).

The module is stateless: `project_keys` turns encoder outputs into keys once per batch and the
caller carries them (with the values and the mask) from step to step, so nothing about one batch
survives into the next.
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

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One attention read.

        query  (B, query_size): the decoder state the read is conditioned on
        keys   (B, S, attention_size): from `project_keys`
        values (B, S, value_size): encoder outputs
        mask   (B, S) bool: True at real source tokens; every row has at least one

        Returns context (B, value_size) in the values' dtype and alphas (B, S) in float32.
        """
        query = self.query_layer(query).unsqueeze(1)  # (B, 1, A)
        energies = self.energy_layer(torch.tanh(keys + query)).squeeze(2)  # (B, S)
        # Scores and softmax in float32, so that masking and normalisation are safe under
        # bf16/fp16 autocast; the float32 minimum makes padded weights exactly zero.
        energies = energies.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        alphas = torch.softmax(energies, dim=-1)  # (B, S)
        context = torch.bmm(alphas.unsqueeze(1).to(values.dtype), values).squeeze(1)  # (B, V)
        return context, alphas
