import os

import pytest
import torch

from seq2seq.checkpoint import CheckpointError, load_model, make_payload, save_model
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


class Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_error(path, match: str, *args) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as error:
        load_model(path, *args)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    return error.value


def _rewrite(source, target, edit) -> None:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)


def test_round_trip(decoding_checkpoint, decoding_model, decoding_tokenizer, decoding_val_sources):
    loaded = load_model(decoding_checkpoint)
    assert (loaded.src_lang, loaded.tgt_lang) == ("de", "en")
    assert not loaded.model.training
    assert loaded.tgt_tokenizer.model_proto == decoding_tokenizer.model_proto
    for name, tensor in decoding_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    texts = decoding_val_sources[:10]
    before = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer).translate(texts)
    after = Translator.from_checkpoint(decoding_checkpoint).translate(texts)
    for a, b in zip(before, after, strict=True):
        assert (a[0].text, a[0].tokens, a[0].score) == (b[0].text, b[0].tokens, b[0].score)


def test_save_is_atomic_and_overwrites(tmp_path, decoding_model, decoding_tokenizer):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"an older file")
    save_model(path, decoding_model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]  # no temp file left
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"state_dict", "seq2seq"}
    assert all(k.startswith("model.") for k in checkpoint["state_dict"])
    payload = make_payload(decoding_model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    assert checkpoint["seq2seq"] == payload and payload["format"] == 2


@pytest.mark.parametrize("where", ["top", "inside a real checkpoint"])
def test_code_in_a_pickle_is_refused(tmp_path, decoding_checkpoint, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    if where == "top":
        torch.save(Payload(marker), path)
    else:
        _rewrite(decoding_checkpoint, path, lambda c: c["seq2seq"].update(src_lang=Payload(marker)))
    assert not marker.exists()  # saving ran nothing
    error = _one_line_error(path, "refusing to load .*objects other than tensors")
    assert "system" in str(error)
    assert not marker.exists()


def test_truncated_file(tmp_path, decoding_checkpoint):
    path = tmp_path / "truncated.ckpt"
    data = decoding_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "truncated or corrupted")
    path.write_bytes(b"")
    _one_line_error(path, "empty")


def test_missing_file_and_foreign_checkpoint(tmp_path):
    _one_line_error(tmp_path / "nothing.ckpt", "no such checkpoint")
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    _one_line_error(path, "not a seq2seq checkpoint")


def test_tokenizer_vocab_mismatch_is_refused(tmp_path, decoding_checkpoint, decoding_pairs):
    smaller = Tokenizer.train(decoding_pairs[1][:300], vocab_size=200, byte_fallback=False)
    path = tmp_path / "mismatch.ckpt"
    _rewrite(decoding_checkpoint, path, lambda c: c["seq2seq"].update(tgt_spm=smaller.model_proto))
    _one_line_error(path, f"tgt tokenizer has {smaller.vocab_size} pieces but the model expects")


def test_weights_mismatch_is_one_line(tmp_path, decoding_checkpoint):
    path = tmp_path / "mismatch.ckpt"

    def wider_decoder(checkpoint):
        checkpoint["seq2seq"]["model_config"]["decoder_hidden_size"] = 64

    _rewrite(decoding_checkpoint, path, wider_decoder)
    _one_line_error(path, "weights do not match the model config: wrong shape")
    _rewrite(decoding_checkpoint, path, lambda c: c["state_dict"].pop("model.decoder.bias"))
    _one_line_error(path, "missing decoder.bias")


def test_non_finite_weights_are_refused_in_a_checkpoint_and_a_folder(
    tmp_path, decoding_checkpoint
):
    from seq2seq.pretrained import load_pretrained, save_pretrained

    path = tmp_path / "diverged.ckpt"

    def diverged(checkpoint):
        checkpoint["state_dict"]["model.decoder.readout.weight"][0, 0] = float("nan")
        checkpoint["state_dict"]["model.decoder.bias"][1] = float("inf")

    _rewrite(decoding_checkpoint, path, diverged)
    _one_line_error(
        path, r"weights hold NaN or infinite values \(decoder.bias, decoder.readout.weight\)"
    )
    loaded = load_model(decoding_checkpoint)
    with torch.no_grad():
        loaded.model.decoder.readout.weight[0, 0] = float("nan")
    save_pretrained(tmp_path / "folder", loaded)  # as a folder written by hand might hold
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights hold NaN"):
        load_pretrained(tmp_path / "folder")


def test_unknown_format_is_refused(tmp_path, decoding_checkpoint):
    path = tmp_path / "future.ckpt"
    _rewrite(decoding_checkpoint, path, lambda c: c["seq2seq"].update(format=3))
    _one_line_error(path, "unsupported checkpoint format 3")


@pytest.mark.parametrize("size,match", [(2**18, "weights do not match"),
                                        (2**40, "bad model config")])
def test_huge_config_is_refused_before_any_allocation(tmp_path, decoding_checkpoint, size, match):
    """A config claiming 2**18 hidden units would need ~1 TB: checked against the file's real
    tensors first, it is a one-line error, not an out-of-memory kill."""
    hostile = tmp_path / "huge.ckpt"
    _rewrite(decoding_checkpoint, hostile,
             lambda c: c["seq2seq"]["model_config"].update(decoder_hidden_size=size))
    _one_line_error(hostile, match)


def test_loaded_model_keeps_its_weights_tied(decoding_checkpoint):
    model = load_model(decoding_checkpoint).model
    assert model.decoder.output_layer.weight is model.decoder.embedding.weight
    assert not any(p.is_meta for p in model.parameters())


def _as_format_1(checkpoint) -> None:
    """The layout checkpoints had before format 2: vocabulary sizes and pad id in the config."""
    meta = checkpoint["seq2seq"]
    meta["model_config"].update(
        src_vocab_size=meta.pop("src_vocab_size"), tgt_vocab_size=meta.pop("tgt_vocab_size"),
        pad_id=meta.pop("special_ids")["pad"],
    )
    meta["format"] = 1


def test_format_1_checkpoints_still_load(tmp_path, decoding_checkpoint, decoding_val_sources):
    old = tmp_path / "old.ckpt"
    _rewrite(decoding_checkpoint, old, _as_format_1)
    texts = decoding_val_sources[:5]
    got = Translator.from_checkpoint(old).translate(texts)
    expected = Translator.from_checkpoint(decoding_checkpoint).translate(texts)
    assert [r[0].tokens for r in got] == [r[0].tokens for r in expected]


@pytest.mark.parametrize("fmt", [1, 2])
def test_another_pad_id_is_refused(tmp_path, decoding_checkpoint, fmt):
    path = tmp_path / "pad.ckpt"

    def other_pad(checkpoint):
        if fmt == 1:
            _as_format_1(checkpoint)
            checkpoint["seq2seq"]["model_config"]["pad_id"] = 5
        else:
            checkpoint["seq2seq"]["special_ids"]["pad"] = 5

    _rewrite(decoding_checkpoint, path, other_pad)
    _one_line_error(path, "the model's pad id is 5, but seq2seq's tokenizers use 0")


def test_wrong_dtype_is_one_line(tmp_path, decoding_checkpoint):
    """Right shapes, wrong dtype: named with the weights, not found later as a device error."""
    path = tmp_path / "half.ckpt"

    def to_half(checkpoint):
        weights = checkpoint["state_dict"]
        weights["model.decoder.bias"] = weights["model.decoder.bias"].half()

    _rewrite(decoding_checkpoint, path, to_half)
    _one_line_error(path, "weights do not match the model config: wrong dtype decoder.bias")


@pytest.mark.parametrize(
    "value",
    [3, "weights", torch.zeros(1).to_sparse()],  # a sparse one was blamed on the device
    ids=["number", "string", "sparse"],
)
def test_a_weight_that_is_not_a_dense_tensor_is_named(tmp_path, decoding_checkpoint, value):
    path = tmp_path / "odd.ckpt"
    weights = {"model.decoder.bias": value}
    _rewrite(decoding_checkpoint, path, lambda c: c["state_dict"].update(weights))
    _one_line_error(path, "weights do not match the model config: not a dense tensor decoder.bias")


def test_keys_that_are_not_strings_are_not_weights(tmp_path, decoding_checkpoint):
    path = tmp_path / "int_key.ckpt"  # an AttributeError traceback before
    _rewrite(decoding_checkpoint, path, lambda c: c["state_dict"].update({5: torch.zeros(1)}))
    loaded, original = load_model(path).model, load_model(decoding_checkpoint).model
    assert torch.equal(loaded.decoder.bias, original.decoder.bias)
