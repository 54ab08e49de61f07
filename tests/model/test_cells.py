"""The recurrent cells of seq2seq/model/cells.py against PyTorch's own, their gradients, and
their padding contract."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.model.cells import CELLS, CellLayer, recurrent_dropout_mask

LENGTHS = [5, 2, 4]


def padded(batch: int, steps: int, size: int, lengths: list[int], dtype=torch.float32):
    """-> x (B, T, size) with zeros after each length, and mask (B, T) True at real steps."""
    x = torch.randn(batch, steps, size, dtype=dtype)
    mask = torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)
    return x * mask.unsqueeze(2), mask


def layer_like(reference: nn.RNNBase, cell: str, reverse: bool) -> CellLayer:
    """A CellLayer holding the weights of one direction of a one-layer nn.LSTM / nn.GRU."""
    suffix = "_l0_reverse" if reverse else "_l0"
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    w_ih, w_hh, b_ih, b_hh = (getattr(reference, name + suffix) for name in names)
    layer = CellLayer(cell, reference.input_size, reference.hidden_size)
    hidden = reference.hidden_size
    with torch.no_grad():
        layer.weight_ih.copy_(w_ih)
        layer.weight_hh.copy_(w_hh)
        if cell == "gru":  # b_hn stays inside the reset gate's product; the rest adds up
            layer.bias.copy_(b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros(hidden)]))
            layer.cell.bias_hn.copy_(b_hh[2 * hidden :])
        else:
            layer.bias.copy_(b_ih + b_hh)
    return layer


@pytest.mark.parametrize("cell, reference_class", [("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_written_out_cell_matches_pytorch_outputs_and_gradients(cell, reference_class):
    torch.manual_seed(0)
    reference = reference_class(6, 5, batch_first=True, bidirectional=True)
    x, mask = padded(3, 5, 6, LENGTHS)
    x_ours = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    packed = pack_padded_sequence(x_ref, torch.tensor(LENGTHS), batch_first=True,
                                  enforce_sorted=False)
    ref_out, _ = pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=5)
    layers = [layer_like(reference, cell, reverse) for reverse in (False, True)]
    ours = torch.cat([layer(x_ours, mask, reverse=reverse)[0]
                      for layer, reverse in zip(layers, (False, True), strict=True)], dim=2)
    torch.testing.assert_close(ours, ref_out, rtol=0, atol=1e-5)

    upstream = torch.randn_like(ours)
    (ours * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-5)
    for layer, suffix in zip(layers, ("_l0", "_l0_reverse"), strict=True):
        for ours_name, ref_name in (("weight_ih", "weight_ih"), ("weight_hh", "weight_hh"),
                                    ("bias", "bias_ih")):
            torch.testing.assert_close(getattr(layer, ours_name).grad,
                                       getattr(reference, ref_name + suffix).grad,
                                       rtol=0, atol=1e-5)
        if cell == "gru":
            torch.testing.assert_close(layer.cell.bias_hn.grad,
                                       getattr(reference, "bias_hh" + suffix).grad[10:],
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_in_float64(cell, reverse):
    torch.manual_seed(0)
    layer = CellLayer(cell, input_size=3, hidden_size=2, forget_bias=0.5).double()
    x, mask = padded(2, 3, 3, [3, 2], dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]

    def outputs(x, *params):
        out, state = torch.func.functional_call(layer, dict(zip(names, params, strict=True)),
                                                (x, mask, reverse))
        return out, *state

    inputs = (x.requires_grad_(), *(p.detach().clone().requires_grad_()
                                    for p in layer.parameters()))
    assert torch.autograd.gradcheck(outputs, inputs)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_never_changes_a_rows_result(cell, reverse):
    torch.manual_seed(0)
    layer = CellLayer(cell, input_size=4, hidden_size=3)
    x, mask = padded(3, 6, 4, LENGTHS)
    x = x + 100.0 * ~mask.unsqueeze(2)  # garbage in the padding must not matter
    with torch.no_grad():
        out, state = layer(x, mask, reverse)
        assert torch.all(out[~mask] == 0)
        for row, n in enumerate(LENGTHS):
            alone_out, alone_state = layer(x[row : row + 1, :n], mask[row : row + 1, :n], reverse)
            torch.testing.assert_close(alone_out[0], out[row, :n], rtol=0, atol=1e-6)
            for alone, batched in zip(alone_state, state, strict=True):
                torch.testing.assert_close(alone[0], batched[row], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_dropout_uses_one_mask_for_every_step_and_only_in_training(cell):
    torch.manual_seed(0)
    layer = CellLayer(cell, input_size=4, hidden_size=8, recurrent_dropout=0.5)
    x, mask = padded(3, 5, 4, [5, 5, 5])
    torch.manual_seed(1)
    out, _ = layer(x, mask)

    torch.manual_seed(1)
    h_mask = recurrent_dropout_mask(3, 8, 0.5, training=True, like=x)
    assert set(h_mask.unique().tolist()) == {0.0, 2.0}
    state = layer.cell.init_state(torch.zeros(3, 8))
    expected = []
    for t in range(5):
        state = layer.step(layer.input_gates(x[:, t]), state, h_mask)
        expected.append(state[0])
    torch.testing.assert_close(out, torch.stack(expected, dim=1), rtol=0, atol=1e-6)

    layer.eval()
    no_dropout = CellLayer(cell, input_size=4, hidden_size=8).eval()
    no_dropout.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, mask)[0], no_dropout(x, mask)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_forget_bias_shifts_only_the_keep_gate_and_zero_changes_nothing(cell):
    def bias(forget_bias: float) -> torch.Tensor:
        torch.manual_seed(0)
        layer = CellLayer(cell, input_size=4, hidden_size=3, forget_bias=forget_bias)
        b = layer.bias if layer.bias is not None else layer.cell.input_norm.bias
        return b.detach().view(layer.cell.num_gates, 3)

    base, shifted = bias(0.0), bias(1.0)
    keep_gate, sign = CELLS[cell].keep_gate, CELLS[cell].keep_sign
    expected = base.clone()
    expected[keep_gate] += sign
    torch.testing.assert_close(shifted, expected, rtol=0, atol=0)


def tiny_seq2seq(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    sizes = dict(embedding_size=16, encoder_hidden_size=8, decoder_hidden_size=12,
                 attention_size=8, encoder_layers=2, decoder_layers=2)
    return Seq2Seq(ModelConfig(**sizes, **overrides), 40, 40)


@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.3])  # 0.3: lstm and gru written out too
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_in_the_model_is_batch_invariant_and_steps_like_teacher_forcing(
    cell, recurrent_dropout
):
    model = tiny_seq2seq(cell=cell, recurrent_dropout=recurrent_dropout).eval()
    assert model.encoder.fused == (cell in ("lstm", "gru") and recurrent_dropout == 0.0)
    lengths = torch.tensor([7, 3, 5])
    src = torch.randint(4, 40, (3, 7)) * (torch.arange(7) < lengths.unsqueeze(1))
    tgt = torch.randint(4, 40, (3, 4))
    with torch.no_grad():
        logits = model(src, lengths, tgt)  # (B, T, V)
        memory, state = model.encode(src, lengths)
        for t in range(tgt.size(1)):  # search's path gives teacher forcing's logits
            log_probs, state, _ = model.decode_step(tgt[:, t], state, memory)
            torch.testing.assert_close(log_probs, logits[:, t].log_softmax(-1), rtol=0, atol=1e-5)
        for row, n in enumerate(lengths.tolist()):
            alone = model(src[row : row + 1, :n], lengths[row : row + 1], tgt[row : row + 1])
            torch.testing.assert_close(alone[0], logits[row], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_trains_with_recurrent_dropout_and_forget_bias(cell):
    model = tiny_seq2seq(cell=cell, recurrent_dropout=0.3, forget_bias=1.0).train()
    src, lengths = torch.randint(4, 40, (3, 6)), torch.tensor([6, 6, 6])
    logits = model(src, lengths, torch.randint(4, 40, (3, 5)))
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_docs_lstm_md_links_the_lines_that_compute_each_equation():
    root = Path(__file__).resolve().parents[2]
    source = (root / "seq2seq" / "model" / "cells.py").read_text().splitlines()
    links = re.findall(r"`([^`]+)` \(\[cells\.py:(\d+)\]", (root / "docs" / "lstm.md").read_text())
    assert len(links) > 20
    for code, line in links:
        assert source[int(line) - 1].strip().startswith(code), f"cells.py:{line} is not {code!r}"


@pytest.mark.parametrize(
    "field, value",
    [("cell", "rnn"), ("cell", None), ("recurrent_dropout", 1.0), ("recurrent_dropout", -0.1),
     ("forget_bias", float("inf")), ("forget_bias", "1")],
)
def test_model_config_rejects_bad_cell_options_naming_the_key(field, value):
    with pytest.raises(ValueError, match=f"model.{field}"):
        ModelConfig(**{field: value})
