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
    assert checkpoint["seq2seq"] == payload and payload["format"] == 1


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


def test_unknown_format_is_refused(tmp_path, decoding_checkpoint):
    path = tmp_path / "future.ckpt"
    _rewrite(decoding_checkpoint, path, lambda c: c["seq2seq"].update(format=2))
    _one_line_error(path, "unsupported checkpoint format 2")


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
