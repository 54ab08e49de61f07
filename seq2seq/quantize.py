"""int8 inference on the CPU: weights stored as int8, activations quantized per row at each
product (dynamic quantization), through torchao's `quantize_`, PyTorch's supported successor
of the deprecated `torch.ao.quantization.quantize_dynamic`.

torchao quantizes `nn.Linear` layers (attention, bridge, readout, output layer). It has no
quantized LSTM: the encoder's LSTM and the decoder's gate products stay float32. The attention's
energy layer (one output, applied at every source position of every step) stays float32 too:
quantizing its input costs more than its one multiply-add per input saves (measured: beam 5
~1.6x slower with it).
"""

import copy
import logging

import torch
from torch import nn

from seq2seq.ensemble import Ensemble
from seq2seq.model import Seq2Seq

INSTALL_HINT = "--int8 needs torchao: pip install 'seq2seq-nmt[int8]'"


def _torchao():
    """torchao's quantize_ and its int8 config. Its CPU wheel logs a warning for each of its
    CUDA kernels it cannot load, and torch one for an Enum it registers: not ours to show."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return quantize_, Int8DynamicActivationInt8WeightConfig


def quantize_int8(model: Seq2Seq | Ensemble) -> Seq2Seq | Ensemble:
    """An int8 copy of `model` for CPU inference, in eval mode; `model` itself is unchanged.

    Raises ImportError (one line) without torchao.
    """
    quantize_, int8_config = _torchao()
    model = copy.deepcopy(model).cpu().eval()
    # A tied output layer shares its weight with the embedding table, which must stay float
    # for lookups: the linear layer gets its own copy to quantize.
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in embedding_weights:
            module.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)
    with torch.no_grad():
        # set_inductor_config=False: leave torch.compile's global settings as they are.
        quantize_(model, int8_config(set_inductor_config=False), filter_fn=_worth_int8)
    return model


def _worth_int8(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and module.out_features > 1
