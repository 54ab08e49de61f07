"""Bidirectional multi-layer LSTM encoder over packed sequences."""

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class EncoderLSTM(nn.Module):
    def __init__(
        self,
        embedding: nn.Embedding,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        embedding_dropout: float,
    ):
        super().__init__()
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.rnn = nn.LSTM(
            embedding.embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden_size

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) token ids, src_lengths (B,) on any device.

        Returns outputs (B, S, 2H), zero at padded positions, and final (B, 2H): the top
        layer's last forward state joined with its first backward state.
        """
        embedded = self.embedding_dropout(self.embedding(src))  # (B, S, E)
        # Packing keeps padding out of the recurrence, so a sentence's encoding does not
        # depend on how much padding its batch adds.
        float32_rnn = _cpu_without_bf16_lstm(src)
        if float32_rnn:
            embedded = embedded.float()
        packed = pack_padded_sequence(
            embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        with torch.autocast("cpu", enabled=False) if float32_rnn else nullcontext():
            packed_outputs, (h_n, _) = self.rnn(packed)  # h_n (layers * 2, B, H)
        outputs, _ = pad_packed_sequence(
            packed_outputs, batch_first=True, total_length=src.size(1)
        )  # (B, S, 2H)
        final = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (B, 2H)
        return self.output_dropout(outputs), final


def _cpu_without_bf16_lstm(src: torch.Tensor) -> bool:
    """True under CPU autocast on a CPU whose oneDNN has no bf16 LSTM (it needs AVX-512 BF16
    or AMX and fails elsewhere): the recurrence then runs in float32. GPUs are not affected."""
    return (
        src.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
