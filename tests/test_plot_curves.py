"""scripts/plot_curves.py on a real tiny training run, and on a resumed run's event files."""

import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from seq2seq.commands import plot_curves as plot_curves_command
from seq2seq.commands import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plot_curves():
    return plot_curves_command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """configs/tiny.yaml cut to 10 steps with two small validations, in one thread."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # Attention heatmaps of an untrained model's long outputs take most of a short run.
    config["trainer"]["callbacks"] = [
        c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("Samples")
    ]
    (run_dir / "tiny.yaml").write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second busy thread
    try:
        train.main([
            "--config", str(run_dir / "tiny.yaml"),
            "--trainer.default_root_dir", str(run_dir),
            "--trainer.max_steps", "10",
            "--trainer.val_check_interval", "5",
            "--trainer.log_every_n_steps", "2",
            "--trainer.enable_progress_bar", "false",
            "--data.train_lines", "500",
            "--data.val_lines", "20",
        ])
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_a_trained_run_plots(plot_curves, tiny_run, tmp_path):
    run = plot_curves.Run(tiny_run)
    assert len(run.points["val/bleu"]) == 2 and len(run.points["train/loss"]) == 5
    output = tmp_path / "plots" / "curves.png"
    assert plot_curves.main([str(tiny_run), "--output", str(output)]) == 0
    png = output.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_resumed_run_is_joined_in_time_order(plot_curves, tmp_path):
    run_dir = tmp_path / "resumed"
    start = time.time()
    # The resumed version repeats steps 20-30 (logged after the last checkpoint, then lost).
    for version, points in enumerate([[(10, 60), (20, 120), (30, 180)], [(20, 600), (30, 660)]]):
        writer = SummaryWriter(run_dir / "lightning_logs" / f"version_{version}")
        for step, seconds in points:
            writer.add_scalar("val/bleu", step / 10, step, walltime=start + seconds)
        writer.close()
    run = plot_curves.Run(run_dir)
    assert [v for _, v in run.points["val/bleu"]] == [1, 2, 3, 2, 3]
    assert [t for t, _ in run.points["val/bleu"]] == pytest.approx([60, 120, 180, 600, 660], abs=5)
    assert run.points["train/loss"] == []
    assert plot_curves.main([str(run_dir), str(run_dir), "--output", str(tmp_path / "c.png")]) == 0


def test_a_folder_without_events_is_one_line(plot_curves, tmp_path, capsys):
    assert plot_curves.main([str(tmp_path), "--output", str(tmp_path / "c.png")]) == 2
    (message,) = capsys.readouterr().err.splitlines()
    assert message.startswith("seq2seq-plot-curves: error:") and str(tmp_path) in message


@pytest.mark.parametrize(("name", "words"), [("", "a folder"), ("curves", "name a .png file")])
def test_an_output_matplotlib_would_rename_is_refused(plot_curves, tmp_path, capsys, name, words):
    output = tmp_path / name  # matplotlib would write tmp_path.png or curves.png instead
    with pytest.raises(SystemExit) as exit_:
        plot_curves.main([str(tmp_path), "--output", str(output)])
    assert exit_.value.code == 2
    (message,) = capsys.readouterr().err.splitlines()
    assert message.startswith(f"seq2seq-plot-curves: error: --output {output}: {words}"), message
    assert list(tmp_path.parent.glob(f"{tmp_path.name}*.png")) == []
