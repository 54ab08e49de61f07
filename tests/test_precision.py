"""Decoding below float32. --int8: torchao's dynamic int8 linear layers translate close to
float32, on a copy of the model; its absence or a GPU is a one-line error. --bf16: search under
bfloat16 autocast translates close to float32, scores stay float32; `use_bfloat16` (what --bf16
does) also casts the weights, every cell's."""

import copy
import difflib
import importlib.util
import sys

import pytest
import torch
from torch import nn

from seq2seq import cli
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.model.cells import CELLS
from seq2seq.quantize import INSTALL_HINT, quantize_int8
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")
needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao not installed (the int8 extra)"
)

MAX_CHANGED_TOKENS = 0.15  # of output tokens; the tiny model: ~5% greedy, ~12% beam 5 (near-ties)


def changed_token_share(reference: list, other: list) -> float:
    """Of the tokens of two decodes of the same inputs, the share that differ (edit blocks)."""
    changed = total = 0
    for a_nbest, b_nbest in zip(reference, other, strict=True):
        a, b = a_nbest[0].tokens, b_nbest[0].tokens
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        changed += max(len(a), len(b)) - sum(block.size for block in matcher.get_matching_blocks())
        total += max(len(a), len(b))
    assert total > 0
    return changed / total


@pytest.mark.parametrize("option", [pytest.param("--int8", marks=needs_torchao), "--bf16"])
def test_translate_quietly(option, decoding_checkpoint, tmp_path, capsys):
    # --int8 first in this file: torchao's import-time warnings (CUDA kernels a CPU wheel
    # lacks) show only at the first import.
    src, out = tmp_path / "in.de", tmp_path / "out.en"
    src.write_text("Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n")
    assert cli.main(["-m", str(decoding_checkpoint), option, "-i", str(src), "-o", str(out)]) == 0
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
    assert changed_token_share(*outputs) <= MAX_CHANGED_TOKENS


def test_int8_without_torchao_is_one_line(decoding_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if absent
    assert cli.main(["-m", str(decoding_checkpoint), "--int8", "-i", __file__]) == 2
    assert capsys.readouterr().err == f"translate: error: {INSTALL_HINT}\n"


def test_int8_on_a_gpu_is_one_line(capsys):
    assert cli.main(["-m", "any.ckpt", "--int8", "--device", "cuda", "-i", __file__]) == 2
    assert capsys.readouterr().err == (
        "translate: error: --int8 runs on the CPU only, not --device cuda\n"
    )


@pytest.mark.parametrize("beam_size", [1, 5])
def test_bf16_translates_close_to_float32(
    decoding_model, decoding_tokenizer, decoding_val_sources, beam_size
):
    def scores(results: list) -> list[float]:
        return [nbest[0].score for nbest in results]

    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    float32 = translator.translate(decoding_val_sources, beam_size=beam_size)
    translator.autocast_dtype = torch.bfloat16
    bf16 = translator.translate(decoding_val_sources, beam_size=beam_size)
    assert scores(bf16) != scores(float32)  # the products did run in bfloat16
    assert torch.isfinite(torch.tensor(scores(bf16))).all()
    assert changed_token_share(float32, bf16) <= MAX_CHANGED_TOKENS
    # The weights stay float32: a float32 decode after it gives the float32 result again.
    assert all(p.dtype == torch.float32 for p in decoding_model.parameters())
    translator.autocast_dtype = None
    again = translator.translate(decoding_val_sources, beam_size=beam_size)
    assert scores(again) == scores(float32)


def test_use_bfloat16_casts_the_weights_and_translates_close_to_float32(
    decoding_model, decoding_tokenizer, decoding_val_sources
):
    model = copy.deepcopy(decoding_model)  # use_bfloat16 casts in place
    translator = Translator(model, decoding_tokenizer, decoding_tokenizer)
    float32 = translator.translate(decoding_val_sources, beam_size=5)
    translator.use_bfloat16()
    assert translator.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    bf16 = translator.translate(decoding_val_sources, beam_size=5)
    assert changed_token_share(float32, bf16) <= MAX_CHANGED_TOKENS
    scores = [nbest[0].score for nbest in bf16]
    assert scores != [nbest[0].score for nbest in float32]
    assert all(isinstance(s, float) and torch.isfinite(torch.tensor(s)) for s in scores)


@pytest.mark.parametrize("cell", CELLS)
def test_use_bfloat16_decodes_every_cell(cell, decoding_tokenizer):
    # Two layers each side: the plain LSTM fused (and nn.LSTMCell above the decoder's first
    # layer), the other cells written out with recurrent dropout, and the layer norms' float32
    # kernel among bfloat16 weights.
    torch.manual_seed(0)
    recurrent_dropout = 0.0 if cell == "lstm" else 0.2
    config = ModelConfig(
        embedding_size=16, encoder_hidden_size=16, encoder_layers=2, decoder_hidden_size=24,
        decoder_layers=2, attention_size=8, cell=cell, recurrent_dropout=recurrent_dropout,
    )
    vocab = decoding_tokenizer.vocab_size
    translator = Translator(Seq2Seq(config, vocab, vocab), decoding_tokenizer, decoding_tokenizer)
    translator.use_bfloat16()
    norms = [m for m in translator.model.modules() if isinstance(m, nn.LayerNorm)]
    assert bool(norms) == (cell == "layernorm_lstm")
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    for beam_size in (1, 3):
        results = translator.translate(["Ein Hund.", "Zwei Männer spielen."], beam_size=beam_size)
        assert all(torch.isfinite(torch.tensor(nbest[0].score)) for nbest in results)


def test_int8_and_bf16_together_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["-m", "any.ckpt", "--int8", "--bf16"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "translate: error: argument --bf16: not allowed with argument --int8 "
        "(see translate --help)\n"
    )
