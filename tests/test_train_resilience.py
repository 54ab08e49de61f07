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
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seq2seq.callbacks import LastCheckpoint
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


def callback_state(checkpoint: dict, name: str) -> dict:
    """The state a checkpoint holds for its one callback of this class name."""
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith(name)]
    return state


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
    # Another network cannot resume from it: one line naming the key, not a list of tensors.
    other = subprocess.run(
        [*TRAIN, "--config", str(config), "--ckpt_path", "last", "--model.decoder_hidden_size",
         "48"], capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert other.returncode == 2, other.stderr[-3000:]
    assert other.stderr.splitlines()[-1] == (
        f"error: --ckpt_path {first}: the checkpoint's network does not fit this config "
        "(model.decoder_hidden_size: 32 in it, 48 here); resume with the run's own model settings "
        f"(--config {first.parent.parent / 'config.yaml'})"
    )
    # A setting that leaves the weights alone may change.
    run_train(config, "--ckpt_path", "last", "--trainer.max_steps", "6",
              "--data.train_lines", "1000", "--model.dropout", "0.2")
    # The resumed run went on in the same version folder, and its ModelCheckpoint still ranks
    # the checkpoints saved before the stop.
    (resumed,) = (tmp_path / "vocab").glob("**/checkpoints/last.ckpt")
    assert resumed.parent.parent.name == "version_0"
    checkpoint = torch.load(resumed, weights_only=True)
    assert checkpoint["global_step"] == 6
    ranked = callback_state(checkpoint, "ModelCheckpoint")
    assert ranked["best_k_models"] and all(map(os.path.exists, ranked["best_k_models"]))
    assert checkpoint["seq2seq"]["src_spm"] == saved["src_spm"]
    (spm,) = (tmp_path / "vocab").glob("**/spm.src.model")
    assert spm.read_bytes() == saved["src_spm"]


# --- stop and resume in this process: what `last.ckpt` holds, and where the resumed run goes ---


class LossByStep(L.Callback):
    """Each optimizer step's training loss, and the examples of each epoch in batch order."""

    def __init__(self):
        self.loss, self.epochs = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss[trainer.global_step] = outputs["loss"].item()
        self.epochs.setdefault(trainer.current_epoch, []).extend(batch.index.tolist())


class StopAtStep(L.Callback):
    """Stops training after the given step, as Lightning's Timer does when max_time runs out."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step


class SigtermInValidation(L.Callback):
    """Sends this process SIGTERM (what a cluster sends before preemption) after the first
    batch of the first validation: Lightning's handler stops the run after that batch."""

    def __init__(self):
        self.sent = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class InterruptAfterValidation(Checkpoint):
    """Ctrl-C at the end of the first validation, once the scheduler, EarlyStopping and the
    checkpoint callbacks have acted on it (Lightning runs Checkpoint callbacks last, in the
    order given: this one is given last)."""

    def __init__(self):
        self.sent = False

    def on_validation_end(self, trainer, pl_module):
        if not self.sent:
            self.sent = True
            raise KeyboardInterrupt


def fit_tiny(root: Path, lr_patience: int, *callbacks, ckpt_path=None, lr=None, **limits) -> dict:
    """The tiny config on 400 sentences (13 steps an epoch), validated once an epoch, with the
    recipes' callbacks; -> the trainer's state when fit returns."""
    settings = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    settings["data"]["train_lines"] = 400
    settings["model"].update(lr_patience=lr_patience, val_max_len_b=20)
    settings["model"]["lr"] = lr or settings["model"]["lr"]
    L.seed_everything(1234)
    ranking = ModelCheckpoint(monitor="val/bleu", mode="max", save_top_k=2,
                              filename="best-{step}", save_on_train_epoch_end=False)
    stopping = EarlyStopping(monitor="val/bleu", mode="max", patience=20,
                             check_on_train_epoch_end=False)
    losses_ = LossByStep()
    trainer = L.Trainer(
        accelerator="cpu", default_root_dir=root, val_check_interval=1.0, logger=False,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[losses_, ranking, stopping, LastCheckpoint(every_n_steps=1000), *callbacks],
        **limits,
    )
    trainer.fit(TranslationModule(TrainingConfig(**settings["model"])),
                TranslationDataModule(**settings["data"]), ckpt_path=ckpt_path)
    return {
        "step": trainer.global_step,
        "best": sorted(Path(p).name for p in ranking.best_k_models),
        "wait": stopping.wait_count,
        "best_score": stopping.best_score.item(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "loss": losses_.loss,
        "epochs": losses_.epochs,
    }


def saved_state(root: Path) -> dict:
    (last,) = root.glob("**/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    ranking = callback_state(checkpoint, "ModelCheckpoint")
    stopping = callback_state(checkpoint, "EarlyStopping")
    return {
        "step": checkpoint["global_step"],
        "best": sorted(Path(p).name for p in ranking["best_k_models"]),
        "wait": stopping["wait_count"],
        "best_score": stopping["best_score"].item(),
        "scheduler": checkpoint["lr_schedulers"][0],
        "lr": checkpoint["optimizer_states"][0]["param_groups"][0]["lr"],
    }


def best_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("**/best-*.ckpt"))


@pytest.mark.parametrize("stop", ["max_time", "max_steps"])
def test_a_stop_mid_epoch_saves_all_it_did_and_the_resumed_run_goes_on(tmp_path, stop):
    # max_time stops after a step and validates; max_steps stops without validating.
    how = ((StopAtStep(17),), {}) if stop == "max_time" else ((), {"max_steps": 17})
    # lr_patience 100: the validation at a max_time stop, which an unstopped run does not have,
    # must not change the learning rate, so that the two loss curves can be compared.
    straight = fit_tiny(tmp_path / "straight", 100, max_epochs=3)
    stopped = fit_tiny(tmp_path / "stopped", 100, *how[0], max_epochs=3, **how[1])
    assert stopped["step"] == 17
    saved = saved_state(tmp_path / "stopped")
    assert saved == {k: stopped[k] for k in saved}, "last.ckpt lags the trainer"
    assert ("best-step=17.ckpt" in best_files(tmp_path / "stopped")) == (stop == "max_time")

    resumed = fit_tiny(tmp_path / "stopped", 100, ckpt_path="last", max_epochs=3)
    assert resumed["step"] == straight["step"] == 39  # the rest of epoch 2, then epoch 3
    assert sorted(resumed["loss"]) == list(range(18, 40))
    for step, loss in resumed["loss"].items():
        assert loss == pytest.approx(straight["loss"][step], abs=1e-6), step
    # The checkpoint ranked at the stop is still ranked: no file is left untracked.
    assert best_files(tmp_path / "stopped") == resumed["best"]


def test_a_run_ended_at_an_epoch_end_resumes_into_the_run_it_would_have_been(tmp_path):
    # lr_patience 0: the learning rate halves at every validation without a new best, so a
    # scheduler step lost or doubled across the resume shows in the loss.
    straight = fit_tiny(tmp_path / "straight", 0, max_epochs=3)
    ended = fit_tiny(tmp_path / "ended", 0, max_epochs=1)
    saved = saved_state(tmp_path / "ended")
    assert saved == {k: ended[k] for k in saved}
    resumed = fit_tiny(tmp_path / "ended", 0, ckpt_path="last", max_epochs=3)
    assert sorted(resumed["loss"]) == list(range(14, 40))
    for step, loss in resumed["loss"].items():
        assert loss == pytest.approx(straight["loss"][step], abs=1e-6), step
    for key in ("best", "wait", "best_score", "scheduler", "lr"):
        assert resumed[key] == straight[key], key
    assert best_files(tmp_path / "ended") == resumed["best"]
    # Each epoch sees every sentence once, in an order of its own.
    first, *others = straight["epochs"].values()
    assert all(sorted(epoch) == sorted(first) and epoch != first for epoch in others)


def test_a_stop_mid_validation_resumes_with_that_validation(tmp_path):
    # lr_patience 0: a validation lost in the resume would leave the scheduler a step behind.
    straight = fit_tiny(tmp_path / "straight", 0, max_epochs=2)
    with pytest.raises(SIGTERMException):
        fit_tiny(tmp_path / "stopped", 0, SigtermInValidation(), max_epochs=2)
    assert saved_state(tmp_path / "stopped")["step"] == 13  # the first validation's step
    resumed = fit_tiny(tmp_path / "stopped", 0, ckpt_path="last", max_epochs=2)
    assert resumed["step"] == straight["step"] == 26
    for key in ("best", "wait", "best_score", "scheduler", "lr"):
        assert resumed[key] == straight[key], key
    assert best_files(tmp_path / "stopped") == best_files(tmp_path / "straight")
    assert sorted(resumed["loss"]) == list(range(14, 27))
    for step, loss in resumed["loss"].items():
        assert loss == pytest.approx(straight["loss"][step], abs=1e-6), step


def test_a_resume_takes_the_configs_learning_rate_and_schedule(tmp_path):
    """Lightning restores the optimizer's and the scheduler's settings with their state; the
    config's replace them, as the README says they may change on resume."""
    stopped = fit_tiny(tmp_path, 1, max_steps=17, max_epochs=3)
    lr = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["model"]["lr"]
    resumed = fit_tiny(tmp_path, 3, ckpt_path="last", lr=lr / 2, max_steps=18, max_epochs=3)
    assert resumed["lr"] == pytest.approx(stopped["lr"] / 2)  # any plateau cut kept
    assert (resumed["scheduler"]["patience"], stopped["scheduler"]["patience"]) == (3, 1)


def test_a_stop_after_a_validations_results_does_not_count_it_twice(tmp_path):
    straight = fit_tiny(tmp_path / "straight", 0, max_epochs=2)
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
    try:
        with pytest.raises(SystemExit):  # Lightning's answer to KeyboardInterrupt
            fit_tiny(tmp_path / "stopped", 0, InterruptAfterValidation(), max_epochs=2)
    finally:
        signal.signal(signal.SIGINT, handler)
    resumed = fit_tiny(tmp_path / "stopped", 0, ckpt_path="last", max_epochs=2)
    for key in ("step", "best", "wait", "best_score", "scheduler", "lr"):
        assert resumed[key] == straight[key], key
