"""`ModelConfig`: the network's shape, the one place its defaults and checks live.

Training reads this dataclass directly (every field is a `--model.<field>` option and YAML key),
checkpoints and model folders store it, and the FLOP count reads it. The vocabulary sizes are not
here: they come from the SentencePiece models, and `Seq2Seq` takes them beside the config.
"""

import math
from dataclasses import dataclass, fields

from seq2seq.model.cells import CELLS

# The fields that leave the weights' shapes and meaning alone: fine-tuning takes them from its
# config, a resume may change them, and averaging ignores them.
DROPOUTS = ("dropout", "embedding_dropout", "recurrent_dropout")

# Upper bounds far beyond any model that fits in memory. A config.json may claim anything: a
# size past 2**63 fails deep inside PyTorch (a TypeError, not a message), and a million layers
# take hours to build even on the meta device. A SentencePiece id is an int32 anyway.
MAX_SIZE = 2**31 - 1  # hidden units, embedding, attention, vocabulary
MAX_LAYERS = 100


def check_size(name: str, value, limit: int = MAX_SIZE) -> None:
    """ValueError naming `name` unless `value` is an int in [1, limit]."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    if value > limit:
        raise ValueError(f"{name} must be at most {limit}, got {value!r}")


@dataclass
class ModelConfig:
    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction
    encoder_layers: int = 1
    decoder_hidden_size: int = 512
    decoder_layers: int = 1
    attention_size: int = 256
    dropout: float = 0.3  # encoder outputs, between layers, readout
    embedding_dropout: float = 0.1
    tie_output_embedding: bool = True  # decoder output layer = target embedding
    share_embeddings: bool = True  # one table for source and target: needs a joint vocabulary
    cell: str = "lstm"  # a key of seq2seq.model.cells.CELLS; docs/lstm.md compares them
    recurrent_dropout: float = 0.0  # on h_{t-1}, one mask per sequence (Gal & Ghahramani 2016)
    forget_bias: float = 0.0  # added to the forget gate's initial bias (Jozefowicz et al.: 1)

    def __post_init__(self):
        for f in fields(ModelConfig):  # a subclass checks its own fields
            value = getattr(self, f.name)
            if f.type is int:
                check_size(f"model.{f.name}", value,
                           MAX_LAYERS if f.name.endswith("_layers") else MAX_SIZE)
            if f.type is float and f.name != "forget_bias" and not (
                isinstance(value, (int, float)) and 0.0 <= value < 1.0
            ):
                raise ValueError(f"model.{f.name} must be in [0, 1), got {value!r}")
            if f.type is bool and not isinstance(value, bool):
                raise ValueError(f"model.{f.name} must be true or false, got {value!r}")
        if type(self.cell) is not str or self.cell not in CELLS:
            raise ValueError(f"model.cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        forget_bias = self.forget_bias
        if type(forget_bias) not in (int, float) or not math.isfinite(forget_bias):
            raise ValueError(f"model.forget_bias must be a finite number, got {forget_bias!r}")
