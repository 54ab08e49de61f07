"""A bad configuration is one line on stderr naming the key, and nothing is trained.

One case runs scripts/train.py as a real process, to show what a user sees there (exit status,
no usage block, no traceback); the rest call its `main` in this process, because every new
process spends seconds of CPU importing torch and Lightning. Every case must fail before the
corpus is read.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seq2seq import cli
from seq2seq.commands import decode
from seq2seq.commands import train as train_command

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"
TIMEOUT = 120

# id: (extra arguments or config edits, the key the error must name)
CASES = {
    "unknown key in the YAML": ({"model": {"hiden_size": 32}}, "hiden_size"),
    "unknown option": (["--model.hiden_size", "32"], "hiden_size"),
    "unknown section": (["--modle.lr", "0.1"], "modle.lr"),
    "wrong type": (["--model.embedding_size", "abc"], "model.embedding_size"),
    "wrong type in the YAML": ({"data": {"max_tokens": "lots"}}, "data.max_tokens"),
    "hidden size 0": (["--model.decoder_hidden_size", "0"], "model.decoder_hidden_size"),
    "negative attention": (["--model.attention_size", "-4"], "model.attention_size"),
    "a million layers": (  # building them would take hours
        ["--model.encoder_layers", "1000000"], "model.encoder_layers must be at most 100"
    ),
    "a size past 2**31 - 1": ({"model": {"embedding_size": 2**40}}, "model.embedding_size"),
    "dropout 1.5": (["--model.dropout", "1.5"], "model.dropout"),
    "learning rate 0": (["--model.lr", "0"], "model.lr"),
    # YAML's .inf and .nan are floats (the command line's "inf" is a string, refused as one).
    "learning rate .inf": ({"model": {"lr": float("inf")}}, "model.lr must be a finite number"),
    "validation length .inf": (  # found only at the first validation, after training steps
        {"model": {"val_max_len_a": float("inf")}}, "model.val_max_len_a must be a finite"
    ),
    "vocabulary 0": (["--data.vocab_size", "0"], "data.vocab_size"),
    "max_tokens below max_len": (["--data.max_tokens", "20"], "data.max_tokens"),
    "length ratio below 1": (["--data.max_ratio", "0.5"], "data.max_ratio"),
    "no validation lines": (["--data.val_lines", "0"], "data.val_lines"),
    "negative loader workers": (["--data.num_workers", "-1"], "data.num_workers"),
    "unknown SentencePiece model type": (["--data.spm_model_type", "foo"], "data.spm_model_type"),
    "validation every 0 steps": (
        ["--trainer.val_check_interval", "0"], "trainer.val_check_interval must be above 0"
    ),
    "validation inside an accumulation window": (  # tiny.yaml validates every 15 batches
        ["--trainer.accumulate_grad_batches", "2"], "must be a multiple of"
    ),
    "validation a fraction of an epoch into an accumulation window": (
        ["--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "0.5"],
        "give it in batches (a multiple of 2) or 1.0",
    ),
    "validation counted across epochs and accumulation windows": (
        ["--trainer.accumulate_grad_batches", "3", "--trainer.val_check_interval", "15",
         "--trainer.check_val_every_n_epoch", "null"],
        "trainer.check_val_every_n_epoch: null counts validations across epochs",
    ),
    "validation every 0 epochs": (
        ["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch"
    ),
    "empty model section": ({"model": None}, "model: the section is empty"),
    "empty data section": ({"data": None}, "data: the section is empty"),
    "empty trainer section": ({"trainer": None}, "trainer: the section is empty"),
    "empty data folder": (["--data.data_dir", ""], "data.data_dir is empty"),
    "empty --init_from": (["--init_from", ""], "--init_from is empty"),
    "no sample sentences": (
        {"trainer": {"callbacks": [{"class_path": "seq2seq.callbacks.TranslationSamples",
                                    "init_args": {"num_sentences": 0}}]}},
        "TranslationSamples.num_sentences must be > 0",
    ),
    "no batches to accumulate": (
        ["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches"
    ),
    "shared embeddings, two vocabularies": (
        {"data": {"joint_vocab": False}}, "model.share_embeddings"
    ),
    "no last.ckpt to resume": (["--ckpt_path", "last"], "no last.ckpt below"),
    "callback argument": (
        {"trainer": {"callbacks": [{"class_path": "seq2seq.callbacks.LastCheckpoint",
                                    "init_args": {"every_n_steps": 0}}]}},
        "every_n_steps",
    ),
    "a ModelCheckpoint that ranks after last.ckpt is saved": (
        {"trainer": {"callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"monitor": "val/bleu", "mode": "max"}},
            {"class_path": "seq2seq.callbacks.LastCheckpoint"},
        ]}},
        "ModelCheckpoint: set save_on_train_epoch_end: false",
    ),
}


def _arguments(tmp_path: Path, case: str) -> list[str]:
    change, _ = CASES[case]
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # A run that got past configuration would write here, and train for one step only.
    config["trainer"].update(default_root_dir=str(tmp_path / "run"), max_steps=1)
    for section, values in (change.items() if isinstance(change, dict) else []):
        if values is None:  # the section's key with nothing under it
            config[section] = None
        else:
            config[section].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(path), *(change if isinstance(change, list) else [])]


def _assert_one_line_naming(stderr: str, key: str) -> None:
    assert "Traceback" not in stderr and "usage:" not in stderr, stderr[-2000:]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and key in last, stderr[-2000:]


@pytest.fixture(scope="module")
def train():
    return train_command


@pytest.mark.parametrize("case", CASES)
def test_bad_config_is_one_line_naming_the_key(tmp_path, train, capsys, monkeypatch, case):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not ours
    with pytest.raises(SystemExit) as exit_:
        train.main(_arguments(tmp_path, case))
    assert exit_.value.code == 2
    _assert_one_line_naming(capsys.readouterr().err, CASES[case][1])
    assert not (tmp_path / "run").exists(), "it got as far as writing a run"


# Errors that only the data can show: found once it is read, still one line each.
DATA_CASES = {
    # Lightning alone would end such a run "successfully" (status 0) without a step.
    "filters leave no pair": (
        ["--data.max_len", "2", "--data.train_lines", "200"], 1,
        "no training pair is within data.max_len",
    ),
    "vocabulary below the alphabet": (
        ["--data.vocab_size", "50", "--data.train_lines", "200"], 1,
        "data.vocab_size 50: SentencePiece training",
    ),
    # tiny.yaml validates every 15 steps; 200 lines make fewer batches than that an epoch.
    "validation interval beyond an epoch": (
        ["--data.train_lines", "200", "--data.val_lines", "20"], 2, "`val_check_interval` (15)",
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_errors_found_in_the_data_are_one_line(tmp_path, train, capsys, monkeypatch, case):
    extra, status, words = DATA_CASES[case]
    monkeypatch.setattr(sys, "argv", ["train.py"])
    arguments = _arguments(tmp_path, "hidden size 0")[:2]  # tiny.yaml, one step, in tmp_path
    with pytest.raises(SystemExit) as exit_:
        train.main([*arguments, *extra])
    assert exit_.value.code == status
    _assert_one_line_naming(capsys.readouterr().err, words)


def test_only_lightnings_own_refusals_lose_their_traceback():
    import lightning.pytorch as lightning

    with pytest.raises(ValueError) as ours:
        raise ValueError("a fault in a model or data module")
    with pytest.raises(ValueError) as theirs:
        lightning.Trainer(accelerator="nope", logger=False)
    assert not train_command.raised_by_lightning(ours.value)
    assert train_command.raised_by_lightning(theirs.value)


def test_a_weights_only_file_cannot_be_resumed(
    tmp_path, train, capsys, monkeypatch, decoding_checkpoint
):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    arguments = _arguments(tmp_path, "hidden size 0")[:2]
    with pytest.raises(SystemExit) as exit_:
        train.main([*arguments, "--ckpt_path", str(decoding_checkpoint)])  # save_model's file
    assert exit_.value.code == 2
    _assert_one_line_naming(capsys.readouterr().err, "weights only, no training state to resume")


def test_a_run_resumes_only_in_its_own_languages(tmp_path, train, capsys, monkeypatch):
    """The checkpoint's tokenizers would read the other language's text without a word."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    arguments = _arguments(tmp_path, "hidden size 0")[:2]  # tiny.yaml (de->en), one step
    train.main([*arguments, "--trainer.enable_progress_bar", "false"])
    (last,) = (tmp_path / "run").glob("**/last.ckpt")
    with pytest.raises(SystemExit) as exit_:
        train.main([*arguments, "--trainer.max_steps", "2", "--ckpt_path", str(last),
                    "--data.src_lang", "en", "--data.tgt_lang", "de"])
    assert exit_.value.code == 2
    _assert_one_line_naming(
        capsys.readouterr().err, "the model translates de->en, the data is en->de"
    )


def test_bad_config_in_a_real_process(tmp_path):
    case = "unknown key in the YAML"  # where jsonargparse would print its usage block
    run = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *_arguments(tmp_path, case)], cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    _assert_one_line_naming(run.stderr, CASES[case][1])


def test_a_validation_interval_given_as_a_time_trains(tmp_path, train, monkeypatch):
    """Lightning takes "DD:HH:MM:SS" too: the count checks must leave it alone."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    arguments = _arguments(tmp_path, "hidden size 0")[:2]  # tiny.yaml, one step
    train.main([*arguments, "--trainer.val_check_interval", "00:00:00:10",
                "--trainer.enable_progress_bar", "false"])
    assert list((tmp_path / "run").glob("**/last.ckpt"))


def test_a_good_config_still_parses(tmp_path, train, capsys, monkeypatch):
    # exit_on_error=False must not change what a correct command does.
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_:
        train.main([*_arguments(tmp_path, "hidden size 0")[:2], "--print_config"])
    assert exit_.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["decoder_hidden_size"] == 32


@pytest.mark.parametrize("form", ["-c", "--config", "--config="])
def test_every_form_of_config_replaces_the_default(tmp_path, train, capsys, monkeypatch, form):
    """Given a config in any form, the default config is not read as well: tiny.yaml has no
    warm-up and trains 30 steps, where the default config warms up for 200 and runs epochs."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    tiny = str(ROOT / "configs" / "tiny.yaml")
    given = [form + tiny] if form.endswith("=") else [form, tiny]
    with pytest.raises(SystemExit) as exit_:
        train.main([*given, "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["warmup_steps"] == 0 and printed["trainer"]["max_steps"] == 30
    assert printed["trainer"]["max_epochs"] is None


@pytest.mark.parametrize(
    "config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name
)
def test_every_shipped_config_parses(config, train, capsys, monkeypatch):
    # A renamed option or a typo in a recipe would otherwise surface only when a user runs it.
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == {**printed["model"], **yaml.safe_load(config.read_text())["model"]}


# --- translate: option errors are argparse errors, one line ---


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--beam-size", "0"], "--beam-size"),
        (["--nbest", "0"], "--nbest"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--batch-size", "many"], "--batch-size"),
        (["--max-src-len", "0"], "--max-src-len"),
        (["--beam-size", "2", "--nbest", "3"], "--nbest"),
        (["--length-penalty", "x"], "--length-penalty"),
        # NaN and infinity parse as floats; searched, they failed every line one by one.
        (["--length-penalty", "nan"], "--length-penalty: must be a finite number >= 0, got nan"),
        (["--length-penalty", "-0.5"], "--length-penalty: must be a finite number >= 0"),
        (["--max-len-a", "inf"], "--max-len-a: must be a finite number >= 0, got inf"),
        (["--max-len-a", "-1"], "--max-len-a: must be a finite number >= 0"),
        (["--max-len-b=-inf"], "--max-len-b: must be a finite number, got -inf"),
        (["-o", "/"], "--output /: a folder, not a file"),  # before a whole file is translated
        # Path("") is the current folder: it was read as a model folder without config.json.
        (["-m", ""], "argument -m/--model: must not be empty (. is the current folder)"),
    ],
)
def test_translate_option_errors(capsys, args, option):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-m", "never-read.ckpt", *args])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("translate: error: ") and option in line


def test_decode_option_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        decode.main(["-m", "never-read.ckpt", "--src", "a", "--ref", "b", "--max-len-b", "nan"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "seq2seq-decode: error: argument --max-len-b: must be a finite number, got nan "
        "(see seq2seq-decode --help)\n"
    )
    with pytest.raises(SystemExit) as exit_:
        decode.main(["-m", "never-read.ckpt", "--src", "a", "--ref", "b", "--output", "/"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "seq2seq-decode: error: --output /: a folder, not a file (see seq2seq-decode --help)\n"
    )


def test_plot_attention_folder_that_cannot_be_made(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert cli.main(["-m", "never-read.ckpt", "--plot-attention", str(taken)]) == 2
    assert capsys.readouterr().err == (
        f"translate: error: --plot-attention: cannot make the folder {taken} (File exists)\n"
    )
