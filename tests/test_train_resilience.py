"""Training at scale and under faults: exact resume after kill -9, DDP on CPU (gloo), and
determinism. Every run is real: scripts/train.py on a slice of the bundled Multi30k."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.training import TrainingConfig, TranslationModule

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]


def tiny_config(tmp_path: Path, name: str, validate: bool, **trainer) -> Path:
    """configs/tiny.yaml with overrides, written to tmp_path."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"].update(trainer)
    config["trainer"]["default_root_dir"] = str(tmp_path / name)
    config["trainer"]["enable_progress_bar"] = False
    config["trainer"]["log_every_n_steps"] = 1
    if not validate:
        config["trainer"]["limit_val_batches"] = 0
        config["trainer"]["callbacks"] = [
            c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("LastCheckpoint")
        ]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(config: Path, *extra: str, timeout: float = 300) -> None:
    result = subprocess.run([*TRAIN, "--config", str(config), *extra], capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by the step it was logged at, over every version in the run folder."""
    found = {}
    for event_dir in sorted({p.parent for p in run_dir.glob("**/events.out.tfevents.*")}):
        events = EventAccumulator(str(event_dir))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            found.update({e.step: e.value for e in events.Scalars("train/loss")})
    return found


def test_kill_9_mid_epoch_then_resume_continues_the_same_loss_curve(tmp_path):
    # An epoch of the tiny config is ~45 batches: the kill lands mid-epoch, and the resumed run
    # must finish that epoch with the batches it had not seen, then start the next one.
    steps = 60
    straight = tiny_config(tmp_path, "straight", False, max_steps=steps)
    run_train(straight)
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(steps))

    killed = tiny_config(tmp_path, "killed", False, max_steps=steps)
    config = yaml.safe_load(killed.read_text())
    config["trainer"]["callbacks"][0]["init_args"]["every_n_steps"] = 10
    killed.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([*TRAIN, "--config", str(killed)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    last = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list((tmp_path / "killed").glob("**/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert last is not None and process.returncode == -signal.SIGKILL, "run was not killed"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= saved_step < steps

    run_train(killed, "--ckpt_path", "last")
    assert {p.parent.name for p in (tmp_path / "killed").glob("**/events.out.*")} == {"version_0"}
    resumed = losses(tmp_path / "killed")
    after = [s for s in sorted(resumed) if s >= saved_step]
    assert after == list(range(saved_step, steps)), "global step did not continue"
    for step in after:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step


def test_same_seed_gives_the_same_loss_curve(tmp_path):
    curves = []
    for name in ("a", "b"):
        config = tiny_config(tmp_path, name, False, max_steps=8, deterministic=True)
        run_train(config)
        curves.append(losses(tmp_path / name))
    assert len(curves[0]) == 8 and curves[0] == curves[1]


def test_ddp_two_cpu_processes_train_and_validate_like_one(tmp_path):
    config = tiny_config(tmp_path, "ddp", True, max_steps=30)
    run_train(config, "--trainer.strategy", "ddp", "--trainer.devices", "2",
              "--trainer.accelerator", "cpu")
    run_dir = tmp_path / "ddp"
    (last,) = run_dir.glob("**/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 30
    (ddp_hyps,) = run_dir.glob("**/hyps/val_step30.txt")
    ddp_lines = ddp_hyps.read_text().splitlines()

    # The same checkpoint validated by one process: same hypotheses, same BLEU.
    settings = yaml.safe_load(config.read_text())
    single_dir = tmp_path / "single"
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=single_dir,
                        enable_progress_bar=False, enable_model_summary=False)
    module = TranslationModule(TrainingConfig(**settings["model"]))
    metrics = trainer.validate(module, TranslationDataModule(**settings["data"]),
                               ckpt_path=str(last), verbose=False)[0]
    (single_hyps,) = single_dir.glob("**/hyps/val_step*.txt")
    assert len(ddp_lines) == settings["data"]["val_lines"]
    assert single_hyps.read_text().splitlines() == ddp_lines

    events = EventAccumulator(str(ddp_hyps.parent.parent))
    events.Reload()
    ddp_bleu = events.Scalars("val/bleu")[-1].value
    assert metrics["val/bleu"] == pytest.approx(ddp_bleu, abs=1e-4)
    ddp_loss = events.Scalars("val/loss")[-1].value
    assert metrics["val/loss"] == pytest.approx(ddp_loss, rel=1e-5)


def test_bf16_mixed_precision_and_gradient_accumulation_train_on_cpu(tmp_path):
    config = tiny_config(tmp_path, "bf16", True, max_steps=12, val_check_interval=24,
                         precision="bf16-mixed", accumulate_grad_batches=2)
    run_train(config)
    curve = losses(tmp_path / "bf16")
    assert len(curve) == 12 and all(map(math.isfinite, curve.values()))  # one per update
    assert curve[11] < curve[0]
    (last,) = (tmp_path / "bf16").glob("**/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 12  # 24 batches, 2 per optimizer step
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_resume_keeps_the_checkpoints_sentencepiece_when_the_data_changed(tmp_path):
    """Resuming after the corpus changed: SentencePiece trained anew on it would give other ids
    (at the same vocabulary size); the resumed run must go on with the checkpoint's."""
    config = tiny_config(tmp_path, "vocab", True, max_steps=4, val_check_interval=2)
    run_train(config)
    (first,) = (tmp_path / "vocab").glob("**/checkpoints/last.ckpt")
    saved = torch.load(first, weights_only=True)["seq2seq"]
    run_train(config, "--ckpt_path", "last", "--trainer.max_steps", "6",
              "--data.train_lines", "1000")
    # The resumed run went on in the same version folder, and its ModelCheckpoint still ranks
    # the checkpoints saved before the stop.
    (resumed,) = (tmp_path / "vocab").glob("**/checkpoints/last.ckpt")
    assert resumed.parent.parent.name == "version_0"
    checkpoint = torch.load(resumed, weights_only=True)
    assert checkpoint["global_step"] == 6
    (ranked,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert ranked["best_k_models"] and all(map(os.path.exists, ranked["best_k_models"]))
    assert checkpoint["seq2seq"]["src_spm"] == saved["src_spm"]
    (spm,) = (tmp_path / "vocab").glob("**/spm.src.model")
    assert spm.read_bytes() == saved["src_spm"]
