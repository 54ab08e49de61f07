"""The encoder-decoder and the one interface that training and search use."""

import torch
from torch import nn

from seq2seq.model.cells import CELLS
from seq2seq.model.config import ModelConfig, check_size
from seq2seq.model.decoder import DecoderLSTM, DecoderState, EncoderMemory
from seq2seq.model.encoder import EncoderLSTM
from seq2seq.special_tokens import PAD_ID


def check_vocab_sizes(src_vocab_size: int, tgt_vocab_size: int) -> None:
    for name, size in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
        check_size(name, size)


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        check_vocab_sizes(src_vocab_size, tgt_vocab_size)
        if config.share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(
                "model.share_embeddings needs one vocabulary for both languages, got "
                f"{src_vocab_size} source and {tgt_vocab_size} target pieces"
            )
        self.config = config
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        src_embedding = nn.Embedding(src_vocab_size, config.embedding_size, padding_idx=PAD_ID)
        tgt_embedding = (
            src_embedding
            if config.share_embeddings
            else nn.Embedding(tgt_vocab_size, config.embedding_size, padding_idx=PAD_ID)
        )
        # Small embeddings keep the tied output layer's initial logits near zero.
        for embedding in {src_embedding, tgt_embedding}:
            nn.init.normal_(embedding.weight, std=config.embedding_size**-0.5)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()
        self.encoder = EncoderLSTM(
            src_embedding,
            config.encoder_hidden_size,
            config.encoder_layers,
            config.dropout,
            config.embedding_dropout,
            config.cell,
            config.recurrent_dropout,
            config.forget_bias,
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
            config.cell,
            config.recurrent_dropout,
            config.forget_bias,
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
        attention = self.decoder.attention
        keys = attention.project_keys(values)  # (B, S, A)
        padding_bias = attention.padding_bias(src != PAD_ID)  # (B, S)
        return EncoderMemory(values, keys, padding_bias), self.decoder.init_state(final)

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: src (B, S), src_lengths (B,), tgt_in (B, T) -> logits (B, T, V)."""
        memory, state = self.encode(src, src_lengths)
        return self.decoder(tgt_in, state, memory)

    def decode_step(
        self, prev_tokens: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev_tokens (N*k,) -> log_probs (N*k, V) in float32, the next state, alphas (N*k, S).

        The state has N*k rows and the memory N: rows i*k .. i*k + k - 1 read the memory's row
        i (beam search's k beams of sentence i; k = 1 elsewhere), so a memory is never copied
        per beam."""
        logits, state, alphas = self.decoder.step(prev_tokens, state, memory)
        return torch.log_softmax(logits.float(), dim=-1), state, alphas

    @staticmethod
    def reorder_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Select batch rows `index` (N,) of a state (L, B, H) -> (L, N, H)."""
        return DecoderState(state.h.index_select(1, index), state.c.index_select(1, index))

    @staticmethod
    def reorder_memory(memory: EncoderMemory, index: torch.Tensor) -> EncoderMemory:
        """Select sentences `index` (N,) of the memory (B, S, ...) -> (N, S, ...)."""
        return EncoderMemory(*(t.index_select(0, index) for t in memory))

    def training_flops(self, src_tokens: int, tgt_tokens: int, pairs: int) -> float:
        """Forward + backward FLOPs of training on these token counts (as nanoGPT's estimate:
        matrix products only, a multiply-add is 2 FLOPs, backward = 2 x forward):

        per source token   2 * G He * (in_l + He) * 2 directions, summed over encoder layers
                           (in_1 = E, in_l = 2He), + 2 * C * A for the attention keys
        per target token   2 * Hd * A (query) + 2 * G Hd * (E + C + Hd) (first decoder layer)
                           + 2 * G Hd * 2Hd per further layer + 2 * (Hd + C + E) * E (readout)
                           + 2 * E * V (output layer)
        per (target token, real source token) pair   2 * A (energy) + 2 * C (context)

        E embedding, He encoder hidden per direction, C = 2He, Hd decoder hidden, A attention
        size, V target vocabulary, G the cell's gate blocks (4 for the LSTMs, 3 for CIFG and
        the GRU); the cells' element-wise work (peepholes, layer norm) is not counted.
        `pairs` counts (target token, real source token) pairs.
        """
        c = self.config
        E, He, Hd = c.embedding_size, c.encoder_hidden_size, c.decoder_hidden_size
        A, C, V = c.attention_size, 2 * c.encoder_hidden_size, self.tgt_vocab_size
        G = CELLS[c.cell].num_gates
        encoder = sum(
            2 * 2 * G * He * ((E if layer == 0 else C) + He) for layer in range(c.encoder_layers)
        )
        per_src = encoder + 2 * C * A
        decoder = 2 * G * Hd * (E + C + Hd) + (c.decoder_layers - 1) * 2 * G * Hd * 2 * Hd
        per_tgt = 2 * Hd * A + decoder + 2 * (Hd + C + E) * E + 2 * E * V
        per_pair = 2 * A + 2 * C
        return 3.0 * (src_tokens * per_src + tgt_tokens * per_tgt + pairs * per_pair)
