"""Bidirectional multi-layer recurrent encoder.

The plain LSTM and the GRU without recurrent dropout run as PyTorch's fused `nn.LSTM` / `nn.GRU`
over packed sequences; every other cell (seq2seq/model/cells.py) runs as written-out layers whose
padded steps leave the state unchanged. Either way a sentence's encoding does not depend on how
much padding its batch adds.
"""

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.model.cells import CELLS, FUSED_WEIGHTS, LAYER_WEIGHTS, CellLayer, load_other_layout

FUSED = {"lstm": nn.LSTM, "gru": nn.GRU}  # cells PyTorch runs as one fused recurrence


class EncoderLSTM(nn.Module):
    def __init__(
        self,
        embedding: nn.Embedding,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        embedding_dropout: float,
        cell: str = "lstm",
        recurrent_dropout: float = 0.0,
        forget_bias: float = 0.0,
    ):
        super().__init__()
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        emb_size = embedding.embedding_dim
        self.fused = cell in FUSED and recurrent_dropout == 0.0
        if self.fused:
            self.rnn = FUSED[cell](
                emb_size,
                hidden_size,
                num_layers=num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=dropout if num_layers > 1 else 0.0,
            )
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    CELLS[cell].add_forget_bias(bias, forget_bias)
        else:
            # layers[l] = (forward, backward); layer l > 0 reads both directions of layer l - 1.
            self.layers = nn.ModuleList(
                nn.ModuleList(
                    CellLayer(
                        cell,
                        emb_size if layer == 0 else 2 * hidden_size,
                        hidden_size,
                        forget_bias,
                        recurrent_dropout,
                    )
                    for _ in range(2)
                )
                for layer in range(num_layers)
            )
            self.layer_dropout = nn.Dropout(dropout)  # between layers, as nn.LSTM's dropout
        self.output_dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden_size
        if cell in FUSED:
            self.register_load_state_dict_pre_hook(_load_either_layout(cell, num_layers))

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) token ids, src_lengths (B,) on any device.

        Returns outputs (B, S, 2H), zero at padded positions, and final (B, 2H): the top
        layer's last forward state joined with its first backward state.
        """
        embedded = self.embedding_dropout(self.embedding(src))  # (B, S, E)
        if self.fused:
            outputs, final = self._fused(embedded, src_lengths)
        else:
            outputs, final = self._written_out(embedded, src_lengths)
        return self.output_dropout(outputs), final

    def _fused(
        self, embedded: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Packing keeps padding out of the recurrence.
        float32_rnn = _cpu_without_bf16_rnn(embedded)
        if float32_rnn:
            embedded = embedded.float()
        packed = pack_padded_sequence(
            embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        with torch.autocast("cpu", enabled=False) if float32_rnn else nullcontext():
            packed_outputs, h_n = self.rnn(packed)
        if isinstance(h_n, tuple):  # the LSTM's (h_n, c_n)
            h_n = h_n[0]  # (layers * 2, B, H)
        outputs, _ = pad_packed_sequence(
            packed_outputs, batch_first=True, total_length=embedded.size(1)
        )  # (B, S, 2H)
        return outputs, torch.cat([h_n[-2], h_n[-1]], dim=-1)

    def _written_out(
        self, embedded: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps = embedded.size(1)
        mask = torch.arange(steps, device=embedded.device) < src_lengths.to(
            embedded.device
        ).unsqueeze(1)  # (B, S)
        outputs = embedded
        for layer, (forward, backward) in enumerate(self.layers):
            if layer > 0:
                outputs = self.layer_dropout(outputs)
            forward_outputs, (forward_final, *_) = forward(outputs, mask)  # (B, S, H), (B, H)
            backward_outputs, (backward_final, *_) = backward(outputs, mask, reverse=True)
            outputs = torch.cat([forward_outputs, backward_outputs], dim=-1)  # (B, S, 2H)
        return outputs, torch.cat([forward_final, backward_final], dim=-1)


def _load_either_layout(cell: str, num_layers: int):
    """A load_state_dict pre-hook: weights saved fused load into written-out layers and the
    other way round (`load_other_layout`), one layer and direction at a time."""

    def hook(module: EncoderLSTM, state_dict: dict, prefix: str, *_) -> None:
        for layer in range(num_layers):
            for direction, suffix in enumerate(("", "_reverse")):
                load_other_layout(
                    state_dict,
                    cell,
                    {name: f"{prefix}rnn.{name}_l{layer}{suffix}" for name in FUSED_WEIGHTS},
                    {name: f"{prefix}layers.{layer}.{direction}.{name}"
                     for name in LAYER_WEIGHTS[cell]},
                    module.fused,
                )

    return hook


def _cpu_without_bf16_rnn(embedded: torch.Tensor) -> bool:
    """True under CPU autocast on a CPU whose oneDNN has no bf16 LSTM/GRU (it needs AVX-512
    BF16 or AMX and fails elsewhere): the recurrence then runs in float32. GPUs are not
    affected."""
    return (
        embedded.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
