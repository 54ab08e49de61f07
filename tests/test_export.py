"""scripts/export.py: a real training run's checkpoints -> a model folder with its training
config and a model card in the hub's format; several checkpoints averaged; --push-to-hub fails
in one line offline."""

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from seq2seq.commands import average as average_command
from seq2seq.commands import export, train
from seq2seq.commands.average import average
from seq2seq.data.corpus import read_lines
from seq2seq.metrics import corpus_scores
from seq2seq.pretrained import CARD_FILE, CONFIG_FILE, load_pretrained
from seq2seq.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT / "data" / "multi30k"
EVAL_LINES = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 16-step run of configs/tiny.yaml: a best checkpoint at step 15 and last.ckpt."""
    root = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main([
            "--config", str(ROOT / "configs" / "tiny.yaml"),
            "--trainer.max_steps", "16",
            "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false",
        ])
    finally:
        torch.set_num_threads(threads)
    (version,) = root.glob("lightning_logs/version_*")
    return version


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("eval")
    for lang in ("de", "en"):
        lines = read_lines(MULTI30K / f"test_2016_flickr.{lang}.gz")[:EVAL_LINES]
        (folder / f"test.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "test.de", folder / "test.en"


@pytest.fixture(scope="module")
def exported(run, eval_files, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("export") / "tiny-de-en"
    src, ref = eval_files
    assert export.main([
        str(run / "checkpoints" / "last.ckpt"), "--output", str(output),
        "--eval-src", str(src), "--eval-ref", str(ref), "--eval-name", "Multi30k test2016",
        "--beam-size", "2",
    ]) == 0
    return output


def test_folder_holds_config_weights_spm_and_card(exported, run):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "spm.model"
    ]
    config = json.loads((exported / CONFIG_FILE).read_text())
    # The run's full config.yaml, as Lightning's CLI wrote it: trainer, model and data.
    assert config["training_config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert config["training_config"]["trainer"]["max_steps"] == 16
    assert config["src_lang"] == "de" and config["tgt_lang"] == "en"
    assert load_pretrained(exported).model.config.embedding_size == 32


def test_model_card_is_in_the_hub_format(exported, eval_files):
    card = ModelCard.load(exported / CARD_FILE)
    data = card.data
    assert data.language == ["de", "en"]
    assert data.pipeline_tag == "translation"
    assert data.datasets == ["bentrevett/multi30k"]
    assert data.license == "other" and data.license_link
    assert set(data.metrics) == {"bleu", "chrf", "ter"} and "translation" in data.tags
    # The scores are those of the exported folder, each with its sacreBLEU signature.
    src, ref = eval_files
    hypotheses = [
        n[0].text for n in Translator.from_pretrained(exported).translate(
            read_lines(src), beam_size=2
        )
    ]
    scores = corpus_scores(hypotheses, read_lines(ref))
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"bleu", "chrf", "ter"}
    for key, result in results.items():
        assert result.metric_value == round(scores[key], 2)
        assert result.metric_config == scores["signature"][key]
        assert result.dataset_name == "Multi30k test2016"
    text = card.text
    for words in ("non-commercial research and educational use", "Elliott et al. (2016)",
                  "python scripts/train.py --config config.yaml", "## Limits",
                  f"{EVAL_LINES} sentences, beam search, beam 2", scores["signature"]["bleu"]):
        assert words in text, words


def test_several_checkpoints_are_averaged(run, tmp_path):
    paths = sorted((run / "checkpoints").glob("*.ckpt"))
    assert len(paths) == 2, paths
    assert export.main([*map(str, paths), "--output", str(tmp_path)]) == 0
    want = average(paths).model.state_dict()
    got = load_pretrained(tmp_path).model.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    card = (tmp_path / CARD_FILE).read_text()
    assert "average of 2 checkpoints" in card and "Not evaluated at export" in card


def test_a_model_folder_exported_again_keeps_its_training_config_and_terms(exported, tmp_path):
    # Into another folder, and into itself: the card's data and terms come from its config.
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    for source, output in ((exported, tmp_path / "again"), (copy, copy)):
        assert export.main([str(source), "--output", str(output)]) == 0
        config = json.loads((output / CONFIG_FILE).read_text())
        assert config["training_config"] == json.loads((exported / CONFIG_FILE).read_text())[
            "training_config"
        ]
        card = ModelCard.load(output / CARD_FILE)
        assert card.data.license == "other" and card.data.license_link
        assert "non-commercial research and educational use" in card.text
    (copy / CONFIG_FILE).write_text(json.dumps({**config, "training_config": 3}))
    assert export.main([str(copy), "--output", str(tmp_path / "bad")]) == 2


def test_a_save_model_file_has_no_training_config(decoding_checkpoint, tmp_path):
    assert export.main([str(decoding_checkpoint), "--output", str(tmp_path)]) == 0
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["training_config"] is None
    assert "did not record its training data" in (tmp_path / CARD_FILE).read_text()


def test_push_to_hub_offline_is_one_line(decoding_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = export.main([
        str(decoding_checkpoint), "--output", str(tmp_path), "--push-to-hub", "org/name"
    ])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("seq2seq-export: error: org/name: cannot upload to the Hugging Face")
    assert error.count("\n") == 1
    assert (tmp_path / CARD_FILE).is_file()  # the folder is written first


@pytest.mark.parametrize(
    "argv, words",
    [
        (["x.ckpt", "--output", "d", "--eval-src", "a"], "--eval-src and --eval-ref go together"),
        (["x.ckpt", "--output", "d", "--beam-size", "0"], "--beam-size: must be at least 1"),
        (["x.ckpt", "--output", "d", "--length-penalty", "nan"], "--length-penalty: must be a"),
        (["x.ckpt"], "--output"),
        # Path("") is the current folder: its README.md would be replaced by the model card.
        (["x.ckpt", "--output", ""], "argument --output: must not be empty"),
        (["", "--output", "d"], "argument CKPT: must not be empty"),
        (["x.ckpt", "--output", export.__file__], f"--output {export.__file__}: a file, not a"),
        (  # a name printed in a line and in the card: a line break would split both
            ["x.ckpt", "--output", "d", "--eval-src", "a", "--eval-ref", "b", "--eval-name=a\nb"],
            "--eval-name: must be one line without control characters, got 'a\\nb'",
        ),
        (["x.ckpt", "--output", "d", "--eval-name", " "], "--eval-name: must not be empty"),
        (["x.ckpt", "--output", "d", "--eval-name", "t"], "--eval-name names the test set of"),
        # Refused before anything is written: no network needed to see it.
        (["x.ckpt", "--output", "d", "--push-to-hub", "bad id!"], "'bad id!' is not a hub repo"),
    ],
)
def test_bad_options(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and words in error and error.count("\n") == 1, error


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert export.main([str(tmp_path / "no.ckpt"), "--output", str(tmp_path / "out")]) == 2
    message = f"seq2seq-export: error: {tmp_path / 'no.ckpt'}: no such checkpoint file\n"
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("command", ["export", "average"])
def test_a_dot_slash_name_stays_a_path(command, tmp_path, capsys, monkeypatch):
    """Path("./org/model") is "org/model", a hub id: online that would export or average
    someone's hub model instead of the missing local file."""
    monkeypatch.chdir(tmp_path)
    main = export.main if command == "export" else average_command.main
    assert main(["./org/model", "--output", str(tmp_path / "out.ckpt")]) == 2
    assert capsys.readouterr().err.endswith(" org/model: no such checkpoint file\n")


def test_a_bad_test_set_fails_before_the_folder_is_written(decoding_checkpoint, tmp_path, capsys):
    sources, references = tmp_path / "test.de", tmp_path / "test.en"
    sources.write_text("Ein Hund.\nZwei Katzen.\n")
    references.write_text("A dog.\n")
    output = tmp_path / "model"
    argv = [str(decoding_checkpoint), "--output", str(output)]
    assert export.main([*argv, "--eval-src", str(sources), "--eval-ref", str(references)]) == 2
    assert capsys.readouterr().err == (
        f"seq2seq-export: error: {sources} has 2 lines but {references} has 1\n"
    )
    assert not output.exists()  # not a folder without its model card


@pytest.mark.parametrize(
    "yaml_text, error",
    [
        ("data:\n  data_dir: [a\nmodel: {}\n", "config.yaml:3: not valid YAML (expected ','"),
        ("just a string\n", "config.yaml: not a YAML mapping of options"),
        ("note: 2024-01-01\ndata: 3\n", None),  # a date goes in as its text; data: 3 is no corpus
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "config.yaml: nested too deeply"),
        ("a: &x [1, *x]\n", "config.yaml: nested too deeply, or a value holds itself"),
    ],
)
def test_a_hand_edited_run_config(decoding_checkpoint, tmp_path, capsys, yaml_text, error):
    (tmp_path / "checkpoints").mkdir()
    checkpoint = tmp_path / "checkpoints" / "best.ckpt"
    checkpoint.symlink_to(decoding_checkpoint)
    (tmp_path / "config.yaml").write_text(yaml_text)
    output = tmp_path / "model"
    status = export.main([str(checkpoint), "--output", str(output)])
    if error is None:
        assert status == 0
        assert json.loads((output / CONFIG_FILE).read_text())["training_config"]["note"] == (
            "2024-01-01"
        )
        assert "Trained on Multi30k" in (output / CARD_FILE).read_text()
    else:
        message = capsys.readouterr().err
        assert status == 2 and message.count("\n") == 1 and error in message, message
        assert not output.exists()  # refused before anything is written


def test_a_run_config_with_what_json_lacks_goes_in_as_text(decoding_checkpoint, tmp_path):
    """Keys that YAML reads as dates or numbers, NaN, bytes: config.json stays strict JSON."""
    (tmp_path / "checkpoints").mkdir()
    checkpoint = tmp_path / "checkpoints" / "best.ckpt"
    checkpoint.symlink_to(decoding_checkpoint)
    (tmp_path / "config.yaml").write_text(
        "2024-01-01: started\n7: seven\nrate: .nan\nlimit: -.inf\nblob: !!binary aGk=\n"
        "data: {src_lang: de}\n"
    )
    output = tmp_path / "model"
    assert export.main([str(checkpoint), "--output", str(output)]) == 0

    def refuse(constant):
        raise AssertionError(f"config.json holds {constant}, which strict JSON has not")

    config = json.loads((output / CONFIG_FILE).read_text(), parse_constant=refuse)
    assert config["training_config"] == {
        "2024-01-01": "started", "7": "seven", "rate": "nan", "limit": "-inf", "blob": "b'hi'",
        "data": {"src_lang": "de"},
    }
