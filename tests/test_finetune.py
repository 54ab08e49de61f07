"""Fine-tuning (`seq2seq-train --init_from MODEL`): a new run that starts from a model's weights,
SentencePiece models and network, whether the model is a checkpoint, a folder or a hub id."""

import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from seq2seq.checkpoint import load_model
from seq2seq.commands import export, train
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.pretrained import save_pretrained
from seq2seq.training import TrainingConfig, TranslationModule
from seq2seq.translator import Translator
from tests.test_pretrained import REPO_ID, _hub_cache

ROOT = Path(__file__).resolve().parents[1]
# The tiny config's network is not the decoding fixture's (encoder 32 vs 16 a direction, one
# decoder layer vs two, attention 32 vs 16): fine-tuning must take the model's.
REPLACED = (
    "; model.encoder_hidden_size 16 (the config: 32); model.decoder_layers 2 (the config: 1); "
    "model.attention_size 16 (the config: 32)"
)


def fine_tuning_args(root: Path, model: str | Path, *more: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2",
        "--data.val_lines", "20",
        # Adam moves each weight by about lr a step, whatever the gradient: so little that the
        # run's weights must still be the model's, where a new network's would be far away.
        "--model.lr", "1e-9",
        "--init_from", str(model),
        *more,
    ]


def fine_tune(root: Path, model: str | Path, *more: str) -> None:
    train.main(fine_tuning_args(root, model, *more))


def last_checkpoint(root: Path) -> Path:
    (last,) = root.glob("**/checkpoints/last.ckpt")
    return last


def assert_started_from(root: Path, pretrained) -> None:
    checkpoint = torch.load(last_checkpoint(root), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    weights = pretrained.model.state_dict()
    assert checkpoint["state_dict"].keys() == {f"model.{k}" for k in weights}
    for key, value in weights.items():
        got = checkpoint["state_dict"][f"model.{key}"]
        torch.testing.assert_close(got, value, atol=1e-6, rtol=0)
    payload = checkpoint["seq2seq"]
    assert payload["src_spm"] == pretrained.src_tokenizer.model_proto
    assert payload["tgt_spm"] == pretrained.tgt_tokenizer.model_proto
    network = dict(payload["model_config"])
    # The dropouts are the config's (tiny.yaml: dropout 0.1, the default embedding dropout 0.1;
    # the fixture trained with none); everything else is the model's.
    assert (network.pop("dropout"), network.pop("embedding_dropout")) == (0.1, 0.1)
    theirs = vars(pretrained.model.config)
    assert network == {k: v for k, v in theirs.items() if k in network}


def test_fine_tunes_a_checkpoint(tmp_path, decoding_checkpoint, decoding_val_sources, capsys):
    # data.joint_vocab false would train two SentencePiece models; the model's joint one is used.
    fine_tune(tmp_path, decoding_checkpoint, "--data.joint_vocab", "false")
    err = capsys.readouterr().err
    assert (
        f"fine-tuning {decoding_checkpoint} (de->en): its weights, SentencePiece models and "
        f"network{REPLACED}\n"
    ) in err
    pretrained = load_model(decoding_checkpoint)
    assert_started_from(tmp_path, pretrained)
    # The run's config.yaml says what ran: the model's network, and where it started.
    (config,) = tmp_path.glob("**/config.yaml")
    config = yaml.safe_load(config.read_text())
    assert config["init_from"] == str(decoding_checkpoint)
    assert (config["model"]["decoder_layers"], config["model"]["encoder_hidden_size"]) == (2, 16)
    # It translates as the model it started from.
    sources = decoding_val_sources[:20]
    texts = {
        path: [n[0].text for n in Translator.from_checkpoint(path).translate(sources)]
        for path in (decoding_checkpoint, last_checkpoint(tmp_path))
    }
    assert texts[last_checkpoint(tmp_path)] == texts[decoding_checkpoint]


def test_fine_tuning_changes_the_recurrent_dropout(
    tmp_path, decoding_checkpoint, decoding_val_sources, capsys
):
    """The fixture's LSTM has no recurrent dropout, so it runs fused (nn.LSTM, nn.LSTMCell); with
    some it runs written-out layers, whose weights are laid out otherwise: the model's load into
    them and translate as before. A resume keeps the layout: 0.2 may become 0.3, not 0."""
    fine_tune(tmp_path, decoding_checkpoint, "--model.recurrent_dropout", "0.2")
    tuned = last_checkpoint(tmp_path)
    assert load_model(tuned).model.config.recurrent_dropout == 0.2
    sources = decoding_val_sources[:20]
    texts = {
        path: [n[0].text for n in Translator.from_checkpoint(path).translate(sources)]
        for path in (decoding_checkpoint, tuned)
    }
    assert texts[tuned] == texts[decoding_checkpoint]
    resume = ("--trainer.max_steps", "4", "--ckpt_path", "last")
    fine_tune(tmp_path, decoding_checkpoint, "--model.recurrent_dropout", "0.3", *resume)
    assert load_model(last_checkpoint(tmp_path)).model.config.recurrent_dropout == 0.3
    with pytest.raises(SystemExit) as stop:
        fine_tune(tmp_path, decoding_checkpoint, "--model.recurrent_dropout", "0", *resume)
    assert stop.value.code == 2
    assert "(model.recurrent_dropout: 0.3 in it, 0.0 here)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def folder(tmp_path_factory, decoding_checkpoint) -> Path:
    path = tmp_path_factory.mktemp("finetune") / "tiny-de-en"
    save_pretrained(path, load_model(decoding_checkpoint))
    return path


def test_fine_tunes_a_folder_and_a_hub_id_and_the_card_names_it(
    tmp_path, folder, decoding_checkpoint, monkeypatch, capsys
):
    import huggingface_hub.constants

    # A folder named as a relative path of a hub id's shape ("finetune0/tiny-de-en"), which
    # names nothing where the card is written below: the card must not take it for a hub id.
    monkeypatch.chdir(folder.parent.parent)
    relative = f"{folder.parent.name}/{folder.name}"
    fine_tune(tmp_path / "folder", relative)
    assert_started_from(tmp_path / "folder", load_model(decoding_checkpoint))
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", folder))
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # REPO_ID names nothing here: a hub id
    fine_tune(tmp_path / "hub_run", REPO_ID)
    assert f"fine-tuning {REPO_ID} (de->en)" in capsys.readouterr().err
    assert_started_from(tmp_path / "hub_run", load_model(decoding_checkpoint))

    # The model card of a fine-tuned model names its base model, in the hub's metadata too.
    for run, base_model in (("hub_run", REPO_ID), ("folder", None)):
        out = tmp_path / f"{run}_export"
        assert export.main([str(last_checkpoint(tmp_path / run)), "--output", str(out)]) == 0
        card = (out / "README.md").read_text()
        metadata = yaml.safe_load(card.split("---\n")[1])
        assert metadata.get("base_model") == base_model
        name = base_model or f"./{relative}"
        assert f"Fine-tuned from `{name}` with seq2seq by" in card
        assert f"It was fine-tuned from `{name}`, so that model's training data" in card
    # Copied out of its run folder (no config.yaml beside it), a checkpoint still names it.
    solo = tmp_path / "solo.ckpt"
    shutil.copy(last_checkpoint(tmp_path / "hub_run"), solo)
    assert export.main([str(solo), "--output", str(tmp_path / "solo_export")]) == 0
    card = (tmp_path / "solo_export" / "README.md").read_text()
    assert f"It was fine-tuned from `{REPO_ID}`, so that model's training data" in card


def test_two_ddp_processes_fine_tune(tmp_path, folder, decoding_checkpoint):
    # In processes of their own: Lightning starts the second rank by running the command again.
    args = fine_tuning_args(
        tmp_path, folder, "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("fine-tuning ") == 1  # rank 0 says it, once
    assert_started_from(tmp_path, load_model(decoding_checkpoint))


def test_a_fine_tuned_run_resumes(tmp_path, decoding_checkpoint, capsys):
    fine_tune(tmp_path, decoding_checkpoint)
    fine_tune(tmp_path, decoding_checkpoint, "--trainer.max_steps", "4", "--ckpt_path", "last")
    checkpoint = torch.load(last_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["seq2seq"]["model_config"]["decoder_layers"] == 2
    # Without --init_from the config's own network does not fit: the error names the run's
    # config.yaml, which holds the network and --init_from, and resumes it.
    args = fine_tuning_args(tmp_path, decoding_checkpoint)[:-2]  # no --init_from
    with pytest.raises(SystemExit):
        train.main([*args, "--ckpt_path", "last"])
    run_config = last_checkpoint(tmp_path).parent.parent / "config.yaml"
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"resume with the run's own model settings (--config {run_config})"
    )
    train.main([
        "--config", str(run_config), "--trainer.max_steps", "6", "--ckpt_path", "last",
    ])
    checkpoint = torch.load(last_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 6


@pytest.mark.parametrize(
    "more, message",
    [
        (
            ["--data.src_lang", "en", "--data.tgt_lang", "de"],
            "error: --init_from {model}: the model translates de->en, the data is en->de "
            "(data.src_lang, data.tgt_lang)\n",
        ),
        (["--init_from", "{missing}"], "error: --init_from {missing}: no such checkpoint file\n"),
    ],
)
def test_errors_are_one_line(tmp_path, decoding_checkpoint, capsys, more, message):
    names = {"model": decoding_checkpoint, "missing": tmp_path / "no.ckpt"}
    with pytest.raises(SystemExit) as stop:
        fine_tune(tmp_path, decoding_checkpoint, *(m.format(**names) for m in more))
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(message.format(**names))
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_the_module_refuses_another_network_or_other_tokenizers(decoding_checkpoint, tmp_path):
    """In Python: TranslationModule(config, pretrained) needs the model's network in the config
    and the model's SentencePiece models in the data module; the same vocabulary size is not
    enough (token ids would mean other pieces)."""
    pretrained = load_model(decoding_checkpoint)
    with pytest.raises(ValueError, match=(
        "network differs from the config's: embedding_size, encoder_hidden_size, "
        "decoder_hidden_size, decoder_layers, attention_size"
    )):
        TranslationModule(TrainingConfig(), pretrained)
    config, _ = TrainingConfig(dropout=0.2).with_network_of(pretrained.model.config)
    assert config.dropout == 0.2 and config.decoder_layers == 2
    module = TranslationModule(config, pretrained)
    data = TranslationDataModule(  # trains its own SentencePiece model of the same size
        vocab_size=pretrained.src_tokenizer.vocab_size, train_lines=2000, val_lines=10
    )
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="tokenizes with other SentencePiece models than the "):
        trainer.fit(module, datamodule=data)
