"""seq2seq/pretrained.py: model folders and hub ids load as checkpoints do, and bad ones fail in
one line naming the file, before any large allocation and without unpickling anything."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from seq2seq.checkpoint import CheckpointError, LoadedModel, load_model
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.pretrained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_hub_id,
    load_pretrained,
    save_pretrained,
)
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

REPO_ID = "seq2seq-test/tiny-de-en"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, decoding_checkpoint) -> Path:
    path = tmp_path_factory.mktemp("pretrained") / "tiny-de-en"
    save_pretrained(path, load_model(decoding_checkpoint))
    return path


@pytest.fixture
def copy(tmp_path, folder) -> Path:
    """A copy of the folder to damage."""
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_folder_files(folder, decoding_model):
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "spm.model"]
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["src_lang"] == "de" and config["tgt_lang"] == "en"
    assert config["joint_vocabulary"] is True and config["training_config"] is None
    assert config["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert config["src_vocab_size"] == config["tgt_vocab_size"] == decoding_model.src_vocab_size
    assert config["model_config"]["decoder_layers"] == 2
    # The tied weights (shared embeddings, output layer) are stored once.
    stored = load_file(folder / WEIGHTS_FILE)
    assert "encoder.embedding.weight" in stored
    assert not {"decoder.embedding.weight", "decoder.output_layer.weight"} & stored.keys()


def test_separate_vocabularies_get_two_files(tmp_path, decoding_pairs):
    de, en = decoding_pairs
    src, tgt = Tokenizer.train(de, vocab_size=500), Tokenizer.train(en, vocab_size=400)
    config = ModelConfig(embedding_size=8, encoder_hidden_size=8, decoder_hidden_size=8,
                         attention_size=8, share_embeddings=False)
    model = Seq2Seq(config, src.vocab_size, tgt.vocab_size).eval()
    save_pretrained(tmp_path, LoadedModel(model, src, tgt, "de", "en"))
    save_pretrained(tmp_path, LoadedModel(model, src, tgt, "de", "en"))  # over an export
    assert sorted(p.name for p in tmp_path.glob("spm*")) == ["spm.src.model", "spm.tgt.model"]
    loaded = load_pretrained(tmp_path)
    assert loaded.src_tokenizer.model_proto == src.model_proto
    assert loaded.tgt_tokenizer.model_proto == tgt.model_proto
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert loaded.model.decoder.output_layer.weight is loaded.model.decoder.embedding.weight
    assert loaded.model.decoder.embedding.weight is not loaded.model.encoder.embedding.weight


@pytest.mark.parametrize("beam_size", [1, 5])
def test_folder_translates_exactly_as_its_checkpoint(
    folder, decoding_checkpoint, decoding_val_sources, beam_size
):
    from_checkpoint = Translator.from_checkpoint(decoding_checkpoint)
    from_folder = Translator.from_pretrained(folder)
    want = from_checkpoint.translate(decoding_val_sources, beam_size=beam_size, nbest=beam_size)
    got = from_folder.translate(decoding_val_sources, beam_size=beam_size, nbest=beam_size)
    assert [[(r.text, r.score, r.tokens) for r in n] for n in got] == [
        [(r.text, r.score, r.tokens) for r in n] for n in want
    ]
    model = from_folder.model
    assert model.decoder.output_layer.weight is model.encoder.embedding.weight  # re-tied


def test_load_model_takes_a_folder(folder, decoding_model):
    loaded = load_model(folder)
    for name, tensor in decoding_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_loading_never_unpickles(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_pretrained(folder)


def _edit_config(path: Path, edit) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    edit(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _edit_weights(path: Path, edit) -> None:
    weights = load_file(path / WEIGHTS_FILE)
    edit(weights)
    save_file(weights, path / WEIGHTS_FILE)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_FOLDERS = {
    "no config": (lambda p: (p / CONFIG_FILE).unlink(), CONFIG_FILE, "missing"),
    "no weights": (lambda p: (p / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "missing"),
    "no spm": (lambda p: (p / "spm.model").unlink(), "spm.model", "missing"),
    "config not JSON": (
        lambda p: (p / CONFIG_FILE).write_text("{model_config: 1"), CONFIG_FILE, "not valid JSON"
    ),
    "config not UTF-8": (
        lambda p: (p / CONFIG_FILE).write_bytes(b"\xff\xfe{"), CONFIG_FILE, "not valid JSON"
    ),
    "config nested past the parser": (  # a hostile download: RecursionError in json
        lambda p: (p / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000), CONFIG_FILE,
        "not valid JSON",
    ),
    "config with a 5,000-digit number": (  # ValueError past Python's int digits limit
        lambda p: (p / CONFIG_FILE).write_text('{"src_vocab_size": ' + "9" * 5000 + "}"),
        CONFIG_FILE, "not valid JSON",
    ),
    "config a list": (lambda p: (p / CONFIG_FILE).write_text("[]"), CONFIG_FILE, "JSON object"),
    "no model_config": (
        lambda p: _edit_config(p, lambda c: c.pop("model_config")), CONFIG_FILE, "model_config"
    ),
    "no src_lang": (
        lambda p: _edit_config(p, lambda c: c.pop("src_lang")), CONFIG_FILE, "'src_lang'"
    ),
    "size a string": (
        lambda p: _edit_config(p, lambda c: c["model_config"].update(embedding_size="32")),
        CONFIG_FILE,
        "embedding_size",
    ),
    "vocab size a float": (
        lambda p: _edit_config(p, lambda c: c.update(src_vocab_size=500.0, tgt_vocab_size=500.0)),
        CONFIG_FILE,
        "vocab_size",
    ),
    "vocab size a string": (  # not "the tokenizer has 500 pieces but the model expects 500"
        lambda p: _edit_config(p, lambda c: c.update(src_vocab_size="500")),
        CONFIG_FILE,
        "src_vocab_size must be an integer > 0, got '500'",
    ),
    "model_config not an object": (
        lambda p: _edit_config(p, lambda c: c.update(model_config=None)),
        CONFIG_FILE,
        "model_config must be a mapping (a JSON object), got NoneType",
    ),
    "special_ids a list": (  # was an AttributeError traceback
        lambda p: _edit_config(p, lambda c: c.update(special_ids=[0, 1, 2, 3])),
        CONFIG_FILE,
        "special_ids must be a mapping (a JSON object), got list",
    ),
    "joint a string": (
        lambda p: _edit_config(p, lambda c: c.update(joint_vocabulary="yes")),
        CONFIG_FILE,
        "'joint_vocabulary' must be a bool",
    ),
    "other pad id": (
        lambda p: _edit_config(p, lambda c: c["special_ids"].update(pad=3)),
        CONFIG_FILE,
        "pad id",
    ),
    "unknown format": (
        lambda p: _edit_config(p, lambda c: c.update(format=99)), CONFIG_FILE, "format 99"
    ),
    "config larger than the weights": (  # 32 GB of embeddings, were they allocated
        lambda p: _edit_config(p, lambda c: c["model_config"].update(embedding_size=2**24)),
        WEIGHTS_FILE,
        "wrong shape",
    ),
    "config past what a tensor indexes": (
        lambda p: _edit_config(p, lambda c: c["model_config"].update(embedding_size=2**62)),
        CONFIG_FILE,
        "bad model config",
    ),
    "config past what a tensor size holds": (  # was a TypeError traceback from PyTorch
        lambda p: _edit_config(p, lambda c: c["model_config"].update(attention_size=2**64)),
        CONFIG_FILE,
        "model.attention_size must be at most 2147483647, got 18446744073709551616",
    ),
    "a million layers": (  # took hours to build, even on the meta device
        lambda p: _edit_config(p, lambda c: c["model_config"].update(encoder_layers=10**6)),
        CONFIG_FILE,
        "model.encoder_layers must be at most 100, got 1000000",
    ),
    "vocab size past what a tensor size holds": (
        lambda p: _edit_config(p, lambda c: c.update(src_vocab_size=2**63)),
        CONFIG_FILE,
        "src_vocab_size must be at most 2147483647, got 9223372036854775808",
    ),
    "wrong shape": (
        lambda p: _edit_weights(p, lambda w: w.update({"decoder.readout.bias": torch.zeros(3)})),
        WEIGHTS_FILE,
        "wrong shape decoder.readout.bias",
    ),
    "wrong dtype": (
        lambda p: _edit_weights(
            p, lambda w: w.update({k: w[k].half() for k in ["decoder.readout.bias"]})
        ),
        WEIGHTS_FILE,
        "wrong dtype decoder.readout.bias",
    ),
    "missing tensor": (
        lambda p: _edit_weights(p, lambda w: w.pop("decoder.readout.bias")),
        WEIGHTS_FILE,
        "missing decoder.readout.bias",
    ),
    "extra tensor": (
        lambda p: _edit_weights(p, lambda w: w.update(extra=torch.zeros(2))),
        WEIGHTS_FILE,
        "unexpected extra",
    ),
    "tied weight stored twice": (
        lambda p: _edit_weights(
            p, lambda w: w.update(
                {"decoder.embedding.weight": w["encoder.embedding.weight"].clone()}
            )
        ),
        WEIGHTS_FILE,
        "unexpected decoder.embedding.weight",
    ),
    "truncated weights": (lambda p: _truncate(p / WEIGHTS_FILE), WEIGHTS_FILE, "truncated"),
    "weights not safetensors": (
        lambda p: (p / WEIGHTS_FILE).write_bytes(b"PK\x03\x04 a zip"), WEIGHTS_FILE, "truncated"
    ),
    "truncated spm": (lambda p: _truncate(p / "spm.model"), "spm.model", "SentencePiece"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_bad_folder_is_one_line_naming_the_file(copy, case):
    damage, file_name, words = BAD_FOLDERS[case]
    damage(copy)
    with pytest.raises(CheckpointError) as error:
        load_model(copy)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{copy / file_name}: "), message
    assert words in message, message


def test_a_config_json_with_a_byte_order_mark_loads(copy, folder):
    """Notepad writes one when a user edits config.json; every other text file skips it."""
    config = copy / CONFIG_FILE
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert load_model(copy).model.config == load_model(folder).model.config


def test_from_pretrained_on_a_checkpoint_file_says_what_it_is(decoding_checkpoint):
    with pytest.raises(CheckpointError) as error:
        Translator.from_pretrained(decoding_checkpoint)
    assert str(error.value) == (
        f"{decoding_checkpoint}: a checkpoint file, not a model folder "
        "(Translator.from_checkpoint reads it)"
    )


def test_header_is_checked_before_the_data_is_read(copy, monkeypatch):
    _edit_weights(copy, lambda w: w.update({"decoder.readout.bias": torch.zeros(3)}))
    import seq2seq.pretrained

    def refuse(*args, **kwargs):
        raise AssertionError("tensor data read before the header was checked")

    monkeypatch.setattr(seq2seq.pretrained, "load_file", refuse)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(copy)


@pytest.mark.parametrize(
    "name, hub",
    [
        ("org/name", True),
        ("name", True),
        ("model.ckpt", False),
        ("runs/x.pt", False),
        ("./org/name", False),
        ("a/b/c", False),
        ("~/models/x", False),
        ("has space/x", False),
    ],
)
def test_hub_id_or_path(name, hub):
    assert is_hub_id(name) is hub


def test_an_existing_folder_is_never_a_hub_id(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    assert not is_hub_id(folder.name)
    assert load_model(folder.name).src_lang == "de"


# --- the hub: a cache in huggingface_hub's own layout, read by the real snapshot_download ---


def _hub_cache(root: Path, folder: Path) -> Path:
    """models--ORG--NAME/{blobs/<file>, refs/main, snapshots/<commit>/<file> -> blob}"""
    repo = root / ("models--" + REPO_ID.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return root


@pytest.fixture
def offline_cache(tmp_path, folder, monkeypatch) -> Path:
    cache = _hub_cache(tmp_path / "hub", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_loads_from_the_cache(offline_cache, folder, decoding_val_sources):
    want = Translator.from_pretrained(folder).translate(decoding_val_sources[:10])
    for revision in (None, "main", COMMIT):
        got = Translator.from_pretrained(REPO_ID, revision=revision).translate(
            decoding_val_sources[:10]
        )
        assert [n[0].text for n in got] == [n[0].text for n in want]
    assert load_model(REPO_ID).tgt_lang == "en"


def test_hub_id_not_cached_offline_is_one_line(offline_cache):
    with pytest.raises(CheckpointError) as error:
        Translator.from_pretrained("seq2seq-test/elsewhere")
    assert str(error.value) == (
        "seq2seq-test/elsewhere: not in the local Hugging Face cache and the hub cannot be "
        "reached"
    )
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        Translator.from_pretrained(REPO_ID, revision="v2")  # a revision the cache lacks


def test_a_hub_model_cached_in_part_is_one_line_naming_the_file(offline_cache):
    snapshot = next(offline_cache.glob("models--*/snapshots/*"))
    (snapshot / WEIGHTS_FILE).unlink()  # as a download cut short leaves it
    with pytest.raises(CheckpointError) as error:
        Translator.from_pretrained(REPO_ID)
    assert str(error.value) == (
        f"{REPO_ID}: no {WEIGHTS_FILE} in its copy in the Hugging Face cache ({snapshot}): a "
        "download that was cut short, or not a seq2seq model folder"
    )


def test_revision_of_a_folder_is_refused(folder):
    with pytest.raises(CheckpointError, match="revision applies to hub ids"):
        load_pretrained(folder, revision="main")


def _translate(model: str, text: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "seq2seq.cli", "-m", model, "--beam-size", "5"]
    return subprocess.run(command, input=text, capture_output=True, text=True, env=env)


def test_translate_cli_folder_hub_id_and_checkpoint_agree(
    tmp_path, folder, decoding_checkpoint, decoding_val_sources
):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub", folder)),
        "OMP_NUM_THREADS": "1",
    }
    text = "\n".join(decoding_val_sources[:20]) + "\n"
    outputs = [_translate(str(m), text, env) for m in (decoding_checkpoint, folder, REPO_ID)]
    for result in outputs:
        assert result.returncode == 0, result.stderr
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout
    assert len(outputs[0].stdout.splitlines()) == 20

    missing = _translate("seq2seq-test/elsewhere", text, env)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == (
        "translate: error: seq2seq-test/elsewhere: not in the local Hugging Face cache and the "
        "hub cannot be reached\n"
    )
