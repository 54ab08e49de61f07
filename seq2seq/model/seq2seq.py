"""The encoder-decoder and the one interface that training and search use."""

from dataclasses import dataclass, fields

import torch
from torch import nn

from seq2seq.model.decoder import DecoderLSTM, DecoderState, EncoderMemory
from seq2seq.model.encoder import EncoderLSTM


@dataclass
class ModelConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction
    encoder_layers: int = 1
    decoder_hidden_size: int = 512
    decoder_layers: int = 1
    attention_size: int = 256
    dropout: float = 0.3
    embedding_dropout: float = 0.1
    tie_output_embedding: bool = True  # decoder output layer = target embedding
    share_embeddings: bool = True  # one table for source and target (joint vocabulary)
    pad_id: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is int and f.name != "pad_id" and value <= 0:
                raise ValueError(f"model config: {f.name} must be > 0, got {value}")
            if f.type is float and not 0.0 <= value < 1.0:
                raise ValueError(f"model config: {f.name} must be in [0, 1), got {value}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "model config: share_embeddings needs src_vocab_size == tgt_vocab_size, got "
                f"{self.src_vocab_size} and {self.tgt_vocab_size}"
            )


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        src_embedding = nn.Embedding(
            config.src_vocab_size, config.embedding_size, padding_idx=config.pad_id
        )
        tgt_embedding = (
            src_embedding
            if config.share_embeddings
            else nn.Embedding(config.tgt_vocab_size, config.embedding_size, config.pad_id)
        )
        # Small embeddings keep the tied output layer's initial logits near zero.
        for embedding in {src_embedding, tgt_embedding}:
            nn.init.normal_(embedding.weight, std=config.embedding_size**-0.5)
            with torch.no_grad():
                embedding.weight[config.pad_id].zero_()
        self.encoder = EncoderLSTM(
            src_embedding,
            config.encoder_hidden_size,
            config.encoder_layers,
            config.dropout,
            config.embedding_dropout,
        )
        self.decoder = DecoderLSTM(
            tgt_embedding,
            self.encoder.output_size,
            config.decoder_hidden_size,
            config.decoder_layers,
            config.attention_size,
            config.dropout,
            config.embedding_dropout,
            config.tie_output_embedding,
        )

    def tie_weights(self) -> None:
        """Make the shared embeddings and the tied output layer one tensor again (after loading
        weights by assignment, each key holds its own)."""
        decoder = self.decoder
        if self.config.share_embeddings:
            decoder.embedding.weight = self.encoder.embedding.weight
        if self.config.tie_output_embedding:
            decoder.output_layer.weight = decoder.embedding.weight

    def encode(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[EncoderMemory, DecoderState]:
        """src (B, S), src_lengths (B,) -> the memory to attend to and the initial state."""
        values, final = self.encoder(src, src_lengths)  # (B, S, C), (B, C)
        mask = src != self.config.pad_id  # (B, S)
        keys = self.decoder.attention.project_keys(values)  # (B, S, A)
        return EncoderMemory(values, keys, mask), self.decoder.init_state(final)

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, V)."""
        memory, state = self.encode(src, src_lengths)
        return self.decoder(tgt_in, state, memory)

    def decode_step(
        self, prev_tokens: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev_tokens (B,) -> log_probs (B, V) in float32, the next state, alphas (B, S)."""
        logits, state, alphas = self.decoder.step(prev_tokens, state, memory)
        return torch.log_softmax(logits.float(), dim=-1), state, alphas

    @staticmethod
    def reorder_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Select batch rows `index` (N,) of a state (L, B, H) -> (L, N, H)."""
        return DecoderState(state.h.index_select(1, index), state.c.index_select(1, index))

    @staticmethod
    def reorder_memory(memory: EncoderMemory, index: torch.Tensor) -> EncoderMemory:
        """Select batch rows `index` (N,) of the memory (B, S, ...) -> (N, S, ...)."""
        return EncoderMemory(*(t.index_select(0, index) for t in memory))
