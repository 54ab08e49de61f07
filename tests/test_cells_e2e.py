"""Every cell through the user's path: scripts/train.py on configs/tiny.yaml, a resume with
`--ckpt_path last`, then greedy, beam and ensemble decoding from the checkpoints; and DDP."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.model.cells import CELLS
from seq2seq.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau"]
# name -> the options that make it; each cell alone, and the plain LSTM with both extras.
RUNS = {cell: ["--model.cell", cell] for cell in CELLS}
RUNS["lstm_dropout_bias"] = ["--model.recurrent_dropout", "0.2", "--model.forget_bias", "1"]
NEW_KEYS = ("cell", "recurrent_dropout", "forget_bias")


def _train(args: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """name -> last.ckpt of a run trained 3 steps, then resumed to 5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared machine
    try:
        paths = {}
        for name, options in RUNS.items():
            root = tmp_path_factory.mktemp(name)
            common = [
                "--config", str(ROOT / "configs" / "tiny.yaml"), *options,
                "--trainer.default_root_dir", str(root), "--trainer.limit_val_batches", "0",
                "--trainer.enable_progress_bar", "false", "--data.train_lines", "300",
            ]
            _train([*common, "--trainer.max_steps", "3"])
            _train([*common, "--trainer.max_steps", "5", "--ckpt_path", "last"])
            paths[name] = max(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
        yield paths
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_checkpoint_records_the_cell_and_the_resumed_run_went_on(checkpoints, name):
    checkpoint = torch.load(checkpoints[name], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 5
    assert checkpoints[name].parent.parent.name == "version_0"  # the resumed run logs on there
    config = checkpoint["seq2seq"]["model_config"]
    expected = dict(zip(RUNS[name][::2], RUNS[name][1::2], strict=True))
    assert config["cell"] == expected.get("--model.cell", "lstm")
    assert config["recurrent_dropout"] == float(expected.get("--model.recurrent_dropout", 0))
    assert config["forget_bias"] == float(expected.get("--model.forget_bias", 0))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_greedy_and_beam_decoding(checkpoints, name):
    translator = Translator.from_checkpoints([checkpoints[name]])
    assert translator.model.config.cell == (name if name in CELLS else "lstm")
    for beam_size in (1, 3):
        results = translator.translate(SOURCES, beam_size=beam_size, max_len_b=8)
        assert len(results) == len(SOURCES)
        assert all(isinstance(r[0].text, str) for r in results)


@pytest.mark.parametrize(
    "members", [("lstm", "gru"), ("peephole", "layernorm_lstm"), ("cifg", "lstm_dropout_bias")]
)
def test_ensemble_of_two_cells(checkpoints, members):
    translator = Translator.from_checkpoints([checkpoints[m] for m in members])
    assert [m.config.cell for m in translator.model.models] == [
        "lstm" if m == "lstm_dropout_bias" else m for m in members
    ]
    for beam_size in (1, 3):
        assert len(translator.translate(SOURCES, beam_size=beam_size, max_len_b=8)) == 3


def test_checkpoint_from_before_cells_loads_as_the_plain_lstm(checkpoints, tmp_path):
    checkpoint = torch.load(checkpoints["lstm"], map_location="cpu", weights_only=True)
    for key in NEW_KEYS:
        del checkpoint["seq2seq"]["model_config"][key]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    translator = Translator.from_checkpoint(old)
    assert translator.model.config.cell == "lstm"
    def texts_and_scores(translator: Translator) -> list[tuple[str, float]]:
        return [(r[0].text, r[0].score) for r in translator.translate(SOURCES, beam_size=3)]

    expected = texts_and_scores(Translator.from_checkpoint(checkpoints["lstm"]))
    assert texts_and_scores(translator) == expected


@pytest.mark.parametrize("name", sorted(set(RUNS) - {"lstm"}))  # lstm: test_train_resilience
def test_ddp_two_cpu_processes(tmp_path, name):
    """Two gloo processes train each cell: DDP refuses a parameter that gets no gradient, so a
    cell whose parameters are not all used would fail at its second step."""
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"),
        "--config", str(ROOT / "configs" / "tiny.yaml"), *RUNS[name],
        "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--data.train_lines", "300",
        "--trainer.max_steps", "3", "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (last,) = tmp_path.glob("**/checkpoints/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["seq2seq"]["model_config"]["cell"] == (name if name in CELLS else "lstm")
