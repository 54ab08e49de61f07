"""The translation model in plain PyTorch: no Lightning, no I/O."""

from seq2seq.model.attention import BahdanauAttention
from seq2seq.model.config import DROPOUTS, ModelConfig
from seq2seq.model.decoder import DecoderLSTM, DecoderState, EncoderMemory
from seq2seq.model.encoder import EncoderLSTM
from seq2seq.model.seq2seq import Seq2Seq, check_vocab_sizes

__all__ = [
    "DROPOUTS",
    "BahdanauAttention",
    "DecoderLSTM",
    "DecoderState",
    "EncoderLSTM",
    "EncoderMemory",
    "ModelConfig",
    "Seq2Seq",
    "check_vocab_sizes",
]
