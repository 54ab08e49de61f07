"""Recurrent decoder with Bahdanau attention; its cell is any of seq2seq/model/cells.py.

Order of one step t, as in Bahdanau et al. (2015):
  1. attention is queried with the previous top-layer state s_{t-1} -> context c_t, alphas_t
  2. the first layer reads [E y_{t-1}; c_t]; further layers read the layer below
  3. readout r_t = tanh(W_r [s_t; c_t; E y_{t-1}]), logits = W_o r_t (W_o may be E, tied)

The first layer's input weight is kept in two parts, embedding and context, so that teacher
forcing applies the embedding part to all T steps in one matrix product before the loop; its
cell then gets x_gates = (that part) + W_ctx c_t and h_gates = W_hh s_{t-1}.
"""

from typing import NamedTuple

import torch
from torch import nn

from seq2seq.model.attention import BahdanauAttention
from seq2seq.model.cells import (
    FUSED_WEIGHTS,
    LAYER_WEIGHTS,
    CellLayer,
    State,
    load_other_layout,
    make_cell,
    recurrent_dropout_mask,
)


class EncoderMemory(NamedTuple):
    """What the decoder attends to; made once per batch by `Seq2Seq.encode`. One row per
    sentence: beam search's k rows of a sentence all read that sentence's row."""

    values: torch.Tensor  # (B, S, C) encoder outputs
    keys: torch.Tensor  # (B, S, A) projected once per batch
    padding_bias: torch.Tensor  # (B, S) float32: BahdanauAttention.padding_bias of the mask


class DecoderState(NamedTuple):
    h: torch.Tensor  # (L, B, H)
    c: torch.Tensor  # (L, B, H) the cell state; (L, B, 0) for the GRU, which has none


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
        cell: str = "lstm",
        recurrent_dropout: float = 0.0,
        forget_bias: float = 0.0,
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

        # First layer: W_x split in two (see module docstring), W_h, b, and the cell's equations.
        self.cell = make_cell(cell, hidden_size, forget_bias)
        self.weight_emb = self.cell.gate_weight(emb_size)
        self.weight_ctx = self.cell.gate_weight(encoder_size)
        self.weight_hh = self.cell.gate_weight(hidden_size)
        self.bias = self.cell.gate_bias(forget_bias)
        self.recurrent_dropout = recurrent_dropout
        # The plain LSTM without recurrent dropout keeps PyTorch's cell (and its parameter names).
        self.upper_layers = nn.ModuleList(
            nn.LSTMCell(hidden_size, hidden_size)
            if cell == "lstm" and recurrent_dropout == 0.0
            else CellLayer(cell, hidden_size, hidden_size, forget_bias, recurrent_dropout)
            for _ in range(num_layers - 1)
        )
        for upper in self.upper_layers:
            if isinstance(upper, nn.LSTMCell):
                self.cell.add_forget_bias(upper.bias_ih, forget_bias)
        if cell == "lstm":
            self.register_load_state_dict_pre_hook(_load_either_layout)
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
        return self._stack([self.cell.init_state(h_l) for h_l in h.unbind(0)])

    def _unstack(self, state: DecoderState) -> list[State]:
        """(L, B, H) tensors -> the cell's state tuple of (B, H) tensors, per layer."""
        if self.cell.state_size == 1:
            return [(h,) for h in state.h.unbind(0)]
        return list(zip(state.h.unbind(0), state.c.unbind(0), strict=True))

    def _stack(self, states: list[State]) -> DecoderState:
        h = torch.stack([s[0] for s in states])  # (L, B, H)
        if self.cell.state_size == 1:
            return DecoderState(h, h.new_zeros(*h.shape[:2], 0))
        return DecoderState(h, torch.stack([s[1] for s in states]))

    def _embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, ...) -> embedded (B, ..., E) and the first layer's W_emb E y + b
        (B, ..., G*H)."""
        embedded = self.embedding_dropout(self.embedding(tokens))
        return embedded, nn.functional.linear(embedded, self.weight_emb, self.bias)

    def _step(
        self,
        emb_gates: torch.Tensor,
        states: list[State],
        memory: EncoderMemory,
        h_masks: list[torch.Tensor | None],
    ) -> tuple[list[State], torch.Tensor, torch.Tensor]:
        """One decoder step from per-layer states (tuples of (B, H)) and emb_gates (B, G*H);
        h_masks: per layer, the recurrent dropout mask (B, H) or None. The memory has B / k
        rows: each is read by k consecutive rows (see `BahdanauAttention.forward`).

        Returns the new per-layer states, context (B, C) and alphas (B, S).
        """
        context, alphas = self.attention(
            states[-1][0], memory.keys, memory.values, memory.padding_bias
        )
        # linear with the parameter itself, not addmm with weight.t(): in training, bf16
        # autocast casts a parameter once per forward pass and caches it, but a view such as
        # .t() at every step. (Search caches nothing: Translator.use_bfloat16 casts the weights.)
        x_gates = nn.functional.linear(context, self.weight_ctx, emb_gates)  # (B, G*H)
        h = states[0][0] if h_masks[0] is None else states[0][0] * h_masks[0]
        new = [self.cell(x_gates, nn.functional.linear(h, self.weight_hh), states[0])]
        for upper, state, h_mask in zip(self.upper_layers, states[1:], h_masks[1:], strict=True):
            x = self.layer_dropout(new[-1][0])
            if isinstance(upper, nn.LSTMCell):
                new.append(upper(x, state))
            else:
                new.append(upper.step(upper.input_gates(x), state, h_mask))
        return new, context, alphas

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
        embedded, emb_gates = self._embed(tgt_in)  # (B, T, E), (B, T, G*H)
        states = self._unstack(state)
        h_masks = [  # one per layer for the whole sequence (Gal & Ghahramani 2016)
            recurrent_dropout_mask(
                tgt_in.size(0), self.hidden_size, self.recurrent_dropout, self.training, state.h
            )
            for _ in range(self.num_layers)
        ]
        tops, contexts = [], []
        # unbind, not emb_gates[:, t]: indexing would make backward build and sum T full-size
        # gradient tensors, one per step.
        for emb_gates_t in emb_gates.unbind(1):
            states, context, _ = self._step(emb_gates_t, states, memory, h_masks)
            tops.append(states[-1][0])
            contexts.append(context)
        top = torch.stack(tops, dim=1)  # (B, T, H)
        context = torch.stack(contexts, dim=1)  # (B, T, C)
        return self._logits(top, context, embedded)

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev_tokens (B,) -> logits (B, V), the next state, alphas (B, S). For search, which
        runs in eval mode: no recurrent dropout."""
        embedded, emb_gates = self._embed(prev_tokens)  # (B, E), (B, G*H)
        no_masks = [None] * self.num_layers
        states, context, alphas = self._step(emb_gates, self._unstack(state), memory, no_masks)
        logits = self._logits(states[-1][0], context, embedded)
        return logits, self._stack(states), alphas


def _load_either_layout(module: DecoderLSTM, state_dict: dict, prefix: str, *_) -> None:
    """A load_state_dict pre-hook: the LSTM's upper layers saved as nn.LSTMCell load into
    `CellLayer`s and the other way round (`load_other_layout`)."""
    for index, upper in enumerate(module.upper_layers):
        load_other_layout(
            state_dict,
            "lstm",
            {name: f"{prefix}upper_layers.{index}.{name}" for name in FUSED_WEIGHTS},
            {name: f"{prefix}upper_layers.{index}.{name}" for name in LAYER_WEIGHTS["lstm"]},
            isinstance(upper, nn.LSTMCell),
        )
