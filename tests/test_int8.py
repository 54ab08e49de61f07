"""--int8: torchao's dynamic int8 linear layers translate close to float32, on a copy of the
model; its absence or a GPU is a one-line error."""

import difflib
import importlib.util
import sys

import pytest
import torch
from torch import nn

from seq2seq import cli
from seq2seq.quantize import INSTALL_HINT, quantize_int8
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")
needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao not installed (the int8 extra)"
)

MAX_CHANGED_TOKENS = 0.15  # of output tokens; the tiny model: ~5% greedy, ~12% beam 5 (near-ties)


@needs_torchao
def test_translate_int8_quietly(decoding_checkpoint, tmp_path, capsys):
    # First in this file: torchao's import-time warnings (CUDA kernels a CPU wheel lacks) show
    # only at the first import.
    src, out = tmp_path / "in.de", tmp_path / "out.en"
    src.write_text("Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n")
    assert cli.main(["-m", str(decoding_checkpoint), "--int8", "-i", str(src), "-o", str(out)]) == 0
    first, empty, last = out.read_text().splitlines()
    assert first and empty == "" and last
    assert capsys.readouterr().err == ""


@needs_torchao
def test_quantize_int8_leaves_the_model_alone(decoding_model):
    before = {name: t.clone() for name, t in decoding_model.state_dict().items()}
    int8 = quantize_int8(decoding_model)
    after = decoding_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    linears = [m for m in decoding_model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m.weight) is nn.Parameter for m in linears)
    # The copy: the linear layers int8 but the one-output energy layer, the (tied) embedding
    # table still float for lookups.
    int8_linears = [m for m in int8.modules() if isinstance(m, nn.Linear)]
    assert len(int8_linears) == len(linears)
    assert all((type(m.weight) is nn.Parameter) == (m.out_features == 1) for m in int8_linears)
    assert type(int8.decoder.attention.energy_layer.weight) is nn.Parameter
    assert type(int8.decoder.embedding.weight) is nn.Parameter
    assert torch.equal(int8.decoder.embedding.weight, decoding_model.decoder.embedding.weight)


@needs_torchao
@pytest.mark.parametrize("beam_size", [1, 5])
def test_int8_translates_close_to_float32(
    decoding_model, decoding_tokenizer, decoding_val_sources, beam_size
):
    outputs = []
    for model in (decoding_model, quantize_int8(decoding_model)):
        translator = Translator(model, decoding_tokenizer, decoding_tokenizer)
        outputs.append(translator.translate(decoding_val_sources, beam_size=beam_size))
    changed = total = 0
    for float32, int8 in zip(*outputs, strict=True):
        a, b = float32[0].tokens, int8[0].tokens
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        changed += max(len(a), len(b)) - sum(block.size for block in matcher.get_matching_blocks())
        total += max(len(a), len(b))
    assert total > 0 and changed / total <= MAX_CHANGED_TOKENS


def test_int8_without_torchao_is_one_line(decoding_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if absent
    assert cli.main(["-m", str(decoding_checkpoint), "--int8", "-i", __file__]) == 2
    assert capsys.readouterr().err == f"translate: error: {INSTALL_HINT}\n"


def test_int8_on_a_gpu_is_one_line(capsys):
    assert cli.main(["-m", "any.ckpt", "--int8", "--device", "cuda", "-i", __file__]) == 2
    assert capsys.readouterr().err == (
        "translate: error: --int8 runs on the CPU only, not --device cuda\n"
    )
