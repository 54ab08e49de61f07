"""The model's padding contracts: padding never changes what a real token computes."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seq2seq.model import BahdanauAttention, ModelConfig, Seq2Seq


def tiny_model(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    config = dict(
        embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=24, attention_size=16,
        encoder_layers=2, decoder_layers=2,
    )
    config.update(overrides)
    return Seq2Seq(ModelConfig(**config), 50, 50).eval()


def padded_batch(lengths: list[int], width: int, vocab: int = 50, seed: int = 1):
    """-> src (B, width) with zeros after each length, and lengths (B,)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (len(lengths), width), generator=gen)
    for row, n in enumerate(lengths):
        src[row, n:] = 0
    return src, torch.tensor(lengths)


def test_attention_gives_padding_exactly_zero_weight_and_ignores_padded_values():
    torch.manual_seed(0)
    attention = BahdanauAttention(query_size=8, value_size=6, attention_size=5)
    values = torch.randn(3, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=torch.bool)
    query = torch.randn(3, 8)
    keys = attention.project_keys(values)
    bias = attention.padding_bias(mask)
    context, alphas = attention(query, keys, values, bias)
    assert alphas.dtype == torch.float32
    assert torch.all(alphas[~mask] == 0)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(3))

    changed = values.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 6) * 100
    context2, alphas2 = attention(query, attention.project_keys(changed), changed, bias)
    assert torch.equal(alphas, alphas2)
    torch.testing.assert_close(context, context2, rtol=0, atol=1e-6)


def test_attention_weights_are_bahdanaus_softmax_of_v_tanh_ws_plus_uh():
    torch.manual_seed(0)
    attention = BahdanauAttention(query_size=8, value_size=6, attention_size=5)
    values, query = torch.randn(3, 7, 6), torch.randn(3, 8)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    context, alphas = attention(query, attention.project_keys(values), values,
                                attention.padding_bias(mask))
    # eq. 6 written out: e_j = v^T tanh(W s + b + U h_j), softmax over the real positions
    U, W, b = attention.key_layer.weight, attention.query_layer.weight, attention.query_layer.bias
    v = attention.energy_layer.weight.squeeze(0)
    scores = torch.tanh((query @ W.T + b).unsqueeze(1) + values @ U.T) @ v  # (B, S)
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(alphas, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(context, torch.einsum("bs,bsv->bv", expected, values),
                               rtol=0, atol=1e-6)


def test_k_queries_per_sentence_read_as_if_each_had_its_own_copy_of_the_memory():
    # Beam search's k beams of a sentence share its one memory row (decode_step's contract).
    torch.manual_seed(0)
    attention = BahdanauAttention(query_size=8, value_size=6, attention_size=5)
    values, k = torch.randn(3, 7, 6), 4
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    query = torch.randn(3 * k, 8)  # rows i*k .. i*k + k - 1 read sentence i
    keys, bias = attention.project_keys(values), attention.padding_bias(mask)
    context, alphas = attention(query, keys, values, bias)
    rows = torch.arange(3).repeat_interleave(k)  # (3k,) each query's own copy
    copied_context, copied_alphas = attention(query, keys[rows], values[rows], bias[rows])
    torch.testing.assert_close(alphas, copied_alphas, rtol=0, atol=1e-6)
    torch.testing.assert_close(context, copied_context, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="10 attention queries cannot be split among 3"):
        attention(query[:10], keys, values, bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_attention_masking_is_safe_under_low_precision(dtype):
    torch.manual_seed(0)
    attention = BahdanauAttention(8, 6, 5).to(dtype)
    values = torch.randn(2, 5, 6, dtype=dtype)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    context, alphas = attention(torch.randn(2, 8, dtype=dtype), attention.project_keys(values),
                                values, attention.padding_bias(mask))
    assert torch.isfinite(context.float()).all() and torch.all(alphas[~mask] == 0)


def test_sentence_encodes_and_decodes_the_same_alone_and_padded_in_a_batch():
    model = tiny_model()
    src, lengths = padded_batch([9, 4, 6, 2], width=11)
    tgt = torch.randint(4, 50, (4, 5))
    with torch.no_grad():
        memory, state = model.encode(src, lengths)
        logits = model(src, lengths, tgt)
        for row, n in enumerate(lengths.tolist()):
            alone_memory, alone_state = model.encode(src[row : row + 1, :n], lengths[row : row + 1])
            torch.testing.assert_close(alone_memory.values[0], memory.values[row, :n],
                                       rtol=0, atol=1e-6)
            assert torch.all(memory.values[row, n:] == 0)
            torch.testing.assert_close(alone_state.h[:, 0], state.h[:, row], rtol=0, atol=1e-6)
            alone_logits = model(src[row : row + 1, :n], lengths[row : row + 1], tgt[row : row + 1])
            torch.testing.assert_close(alone_logits[0], logits[row], rtol=0, atol=1e-5)


def test_changing_padded_source_ids_changes_nothing():
    model = tiny_model()
    src, lengths = padded_batch([7, 3], width=7)
    tgt = torch.randint(4, 50, (2, 4))
    with torch.no_grad():
        reference = model(src, lengths, tgt)
        longer = torch.cat([src, torch.zeros(2, 5, dtype=torch.long)], dim=1)  # more padding
        torch.testing.assert_close(model(longer, lengths, tgt), reference, rtol=0, atol=1e-6)


def test_decode_step_matches_teacher_forcing():
    model = tiny_model()
    src, lengths = padded_batch([6, 3], width=6)
    tgt = torch.randint(4, 50, (2, 5))
    with torch.no_grad():
        full = torch.log_softmax(model(src, lengths, tgt), dim=-1)
        memory, state = model.encode(src, lengths)
        for t in range(tgt.size(1)):
            log_probs, state, alphas = model.decode_step(tgt[:, t], state, memory)
            torch.testing.assert_close(log_probs, full[:, t], rtol=0, atol=1e-5)
            assert torch.all(alphas[1, 3:] == 0)


def test_loss_ignores_padding():
    model = tiny_model(dropout=0.0, embedding_dropout=0.0)
    src, lengths = padded_batch([5, 5], width=5)
    tgt_in = torch.tensor([[2, 7, 8, 9], [2, 10, 11, 0]])
    tgt_out = torch.tensor([[7, 8, 9, 3], [10, 11, 3, 0]])

    def loss(tgt_in, tgt_out):
        logits = model(src, lengths, tgt_in)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0,
                               label_smoothing=0.1, reduction="sum")

    base = loss(tgt_in, tgt_out)
    # Whatever sits in the padded input position, the loss is the same.
    other_in = tgt_in.clone()
    other_in[1, 3] = 42
    torch.testing.assert_close(loss(other_in, tgt_out), base)
    # And the padded row contributes exactly its 3 real positions.
    single = F.cross_entropy(model(src[1:], lengths[1:], tgt_in[1:, :3]).flatten(0, 1),
                             tgt_out[1, :3], label_smoothing=0.1, reduction="sum")
    full_row0 = F.cross_entropy(model(src[:1], lengths[:1], tgt_in[:1]).flatten(0, 1),
                                tgt_out[0], label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(base, single + full_row0, rtol=1e-5, atol=1e-5)


def test_tied_and_shared_embeddings_are_one_tensor():
    model = tiny_model()
    weight = model.encoder.embedding.weight
    assert model.decoder.embedding.weight is weight
    assert model.decoder.output_layer.weight is weight


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("saved, loaded", [(0.0, 0.2), (0.2, 0.0)])
def test_weights_load_across_the_fused_and_written_out_layouts(cell, saved, loaded):
    """Recurrent dropout 0 runs the LSTM and the GRU fused (nn.LSTM, nn.GRU, nn.LSTMCell), any
    other as written-out layers: fine-tuning that changes it loads the weights into the other
    layout, which must then compute what the saved model computed (in eval mode, where the
    dropout is off), and so must the weights loaded back (fused, b_ih and b_hh come back as
    their sum and zero)."""
    model = tiny_model(cell=cell, recurrent_dropout=saved, decoder_layers=3)
    other = tiny_model(cell=cell, recurrent_dropout=loaded, decoder_layers=3)
    assert model.state_dict().keys() != other.state_dict().keys()
    other.load_state_dict(model.state_dict())
    src, lengths = padded_batch([6, 3], width=6)
    tgt = torch.randint(4, 50, (2, 5))
    back = tiny_model(cell=cell, recurrent_dropout=saved, decoder_layers=3)
    back.load_state_dict(other.state_dict())
    with torch.no_grad():
        expected = model(src, lengths, tgt)
        torch.testing.assert_close(other(src, lengths, tgt), expected)
        torch.testing.assert_close(back(src, lengths, tgt), expected)


@pytest.mark.parametrize(
    "key,value",
    [("decoder_hidden_size", 0), ("encoder_layers", -1), ("dropout", 1.5), ("encoder_layers", 101),
     ("attention_size", 2**31)],
)
def test_impossible_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        ModelConfig(**{key: value})


def test_model_package_does_not_import_lightning():
    code = (
        "import sys, seq2seq.model\n"
        "print(sorted(m for m in sys.modules if 'lightning' in m.split('.')[0]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
