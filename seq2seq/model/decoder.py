"""LSTM decoder with Bahdanau attention.

Order of one step t, as in Bahdanau et al. (2015):
  1. attention is queried with the previous top-layer state s_{t-1} -> context c_t, alphas_t
  2. the first LSTM layer reads [E y_{t-1}; c_t]; further layers read the layer below
  3. readout r_t = tanh(W_r [s_t; c_t; E y_{t-1}]), logits = W_o r_t (W_o may be E, tied)

The first layer's input weight is kept in two parts, embedding and context, so that teacher
forcing applies the embedding part to all T steps in one matrix product before the loop.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from seq2seq.model.attention import BahdanauAttention


class EncoderMemory(NamedTuple):
    """What the decoder attends to; made once per batch by `Seq2Seq.encode`."""

    values: torch.Tensor  # (B, S, C) encoder outputs
    keys: torch.Tensor  # (B, S, A) projected once per batch
    mask: torch.Tensor  # (B, S) bool, True at real tokens


class DecoderState(NamedTuple):
    h: torch.Tensor  # (L, B, H)
    c: torch.Tensor  # (L, B, H)


class DecoderLSTM(nn.Module):
    def __init__(
        self,
        embedding: nn.Embedding,
        encoder_size: int,
        hidden_size: int,
        num_layers: int,
        attention_size: int,
        dropout: float,
        embedding_dropout: float,
        tie_output_embedding: bool,
    ):
        super().__init__()
        emb_size = embedding.embedding_dim
        vocab_size = embedding.num_embeddings
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.attention = BahdanauAttention(hidden_size, encoder_size, attention_size)
        self.bridge = nn.Linear(encoder_size, num_layers * hidden_size)
        self.num_layers = num_layers
        self.hidden_size = hidden_size

        # First layer, written out so its input weight can be split (see module docstring).
        self.weight_emb = nn.Parameter(torch.empty(4 * hidden_size, emb_size))
        self.weight_ctx = nn.Parameter(torch.empty(4 * hidden_size, encoder_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in (self.weight_emb, self.weight_ctx, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)
        self.upper_layers = nn.ModuleList(
            nn.LSTMCell(hidden_size, hidden_size) for _ in range(num_layers - 1)
        )
        self.layer_dropout = nn.Dropout(dropout)

        self.readout = nn.Linear(hidden_size + encoder_size + emb_size, emb_size)
        self.readout_dropout = nn.Dropout(dropout)
        self.output_layer = nn.Linear(emb_size, vocab_size, bias=False)
        if tie_output_embedding:
            self.output_layer.weight = embedding.weight

    def init_state(self, encoder_final: torch.Tensor) -> DecoderState:
        """encoder_final (B, C) -> the initial state, h (L, B, H) bridged, c zeros.

        The state is float32 even under bf16/fp16 autocast: the matrix products run in low
        precision, but the cell state, summed over every step, keeps full precision.
        """
        batch = encoder_final.size(0)
        h = torch.tanh(self.bridge(encoder_final)).float()  # (B, L * H)
        h = h.view(batch, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        return DecoderState(h, torch.zeros_like(h))

    def _embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, ...) -> embedded (B, ..., E) and the first layer's gate input (B, ..., 4H)."""
        embedded = self.embedding_dropout(self.embedding(tokens))
        return embedded, nn.functional.linear(embedded, self.weight_emb, self.bias)

    def _step(
        self,
        emb_gates: torch.Tensor,
        h: list[torch.Tensor],
        c: list[torch.Tensor],
        memory: EncoderMemory,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One decoder step from per-layer states h[l], c[l] (B, H) and emb_gates (B, 4H).

        Returns the new per-layer states, context (B, C) and alphas (B, S).
        """
        context, alphas = self.attention(h[-1], memory.keys, memory.values, memory.mask)
        gates = torch.addmm(emb_gates, context, self.weight_ctx.t())
        gates = torch.addmm(gates, h[0], self.weight_hh.t())  # (B, 4H), order i, f, g, o
        i, f, g, o = gates.chunk(4, dim=1)
        c0 = torch.sigmoid(f) * c[0] + torch.sigmoid(i) * torch.tanh(g)
        h0 = torch.sigmoid(o) * torch.tanh(c0)
        new_h, new_c = [h0], [c0]
        for layer, cell in enumerate(self.upper_layers, start=1):
            hl, cl = cell(self.layer_dropout(new_h[-1]), (h[layer], c[layer]))
            new_h.append(hl)
            new_c.append(cl)
        return new_h, new_c, context, alphas

    def _logits(
        self, top: torch.Tensor, context: torch.Tensor, embedded: torch.Tensor
    ) -> torch.Tensor:
        """top (..., H), context (..., C), embedded (..., E) -> logits (..., V)."""
        readout = torch.tanh(self.readout(torch.cat([top, context, embedded], dim=-1)))
        return self.output_layer(self.readout_dropout(readout))

    def forward(
        self, tgt_in: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> torch.Tensor:
        """Teacher forcing. tgt_in (B, T) starts with BOS -> logits (B, T, V)."""
        embedded, emb_gates = self._embed(tgt_in)  # (B, T, E), (B, T, 4H)
        h, c = list(state.h.unbind(0)), list(state.c.unbind(0))
        tops, contexts = [], []
        # unbind, not emb_gates[:, t]: indexing would make backward build and sum T full-size
        # gradient tensors, one per step.
        for emb_gates_t in emb_gates.unbind(1):
            h, c, context, _ = self._step(emb_gates_t, h, c, memory)
            tops.append(h[-1])
            contexts.append(context)
        top = torch.stack(tops, dim=1)  # (B, T, H)
        context = torch.stack(contexts, dim=1)  # (B, T, C)
        return self._logits(top, context, embedded)

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev_tokens (B,) -> logits (B, V), the next state, alphas (B, S)."""
        embedded, emb_gates = self._embed(prev_tokens)  # (B, E), (B, 4H)
        h, c, context, alphas = self._step(
            emb_gates, list(state.h.unbind(0)), list(state.c.unbind(0)), memory
        )
        logits = self._logits(h[-1], context, embedded)
        return logits, DecoderState(torch.stack(h), torch.stack(c)), alphas
