"""Non-finite losses, injected for real into a tiny training run of scripts/train.py.

`NaNLogits` (a callback the runs name by class path) makes the decoder's output layer return
NaN for a few batches, so those batches' losses are NaN while the weights stay untouched:
the run must skip them, and stop cleanly once too many come in a row.
"""

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from seq2seq.commands import train
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

ROOT = Path(__file__).resolve().parents[1]
MAX_BAD_STEPS = 3
FIRST_BAD = 2  # the fault starts at the third batch

# The model's weights when the fault started, by run folder (filled by NaNLogits).
weights_at_fault: dict[str, dict[str, torch.Tensor]] = {}


class NaNLogits(L.Callback):
    def __init__(self, first: int, count: int):
        self.first, self.count = first, count
        self.seen = 0
        self.hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.first:
            weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            weights_at_fault[trainer.default_root_dir] = weights
        if self.first <= self.seen < self.first + self.count:
            layer = pl_module.model.decoder.output_layer
            self.hook = layer.register_forward_hook(
                lambda module, inputs, logits: torch.full_like(logits, float("nan"))
            )
        self.seen += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


@pytest.fixture(autouse=True)
def _own_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not ours


def _train(tmp_path: Path, bad_batches: int, max_steps: int, accumulate: int = 1) -> Path:
    """Run scripts/train.py in this process; -> the run folder."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    run_dir = tmp_path / "run"
    config["trainer"].update(
        default_root_dir=str(run_dir), max_steps=max_steps, limit_val_batches=0,
        enable_progress_bar=False, logger=False, accumulate_grad_batches=accumulate,
        callbacks=[
            {"class_path": "seq2seq.callbacks.LastCheckpoint",
             "init_args": {"every_n_steps": 1000}},
            {"class_path": f"{__name__}.NaNLogits",
             "init_args": {"first": FIRST_BAD, "count": bad_batches}},
        ],
    )
    config["model"]["max_bad_steps"] = MAX_BAD_STEPS
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(config))
    train.main(["--config", str(path)])
    return run_dir


def _last(run_dir: Path) -> dict:
    (path,) = run_dir.glob("**/last.ckpt")
    return torch.load(path, weights_only=True)


def _weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items()}


def test_a_few_bad_batches_are_skipped(tmp_path):
    with pytest.warns(UserWarning) as caught:
        run_dir = _train(tmp_path, bad_batches=MAX_BAD_STEPS - 1, max_steps=8)
    skipped = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert skipped == [
        f"non-finite loss at step {step}: batch skipped"
        for step in range(FIRST_BAD, FIRST_BAD + MAX_BAD_STEPS - 1)
    ]
    checkpoint = _last(run_dir)
    assert checkpoint["global_step"] == 8
    weights = _weights(checkpoint)
    assert all(torch.isfinite(w).all() for w in weights.values())
    before = weights_at_fault[str(run_dir)]
    assert any(not torch.equal(weights[k], before[k]) for k in before), "training stopped"
    # A checkpoint written by training is one that `translate` loads.
    (path,) = run_dir.glob("**/last.ckpt")
    (result,) = Translator.from_checkpoint(path).translate(["Ein Hund läuft."])[0]
    assert result.tokens


def test_too_many_bad_batches_stop_cleanly_with_the_last_good_weights(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _train(tmp_path, bad_batches=MAX_BAD_STEPS + 2, max_steps=20)
    assert exit_.value.code == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: training stopped: 3 consecutive non-finite losses")
    checkpoint = _last(tmp_path / "run")
    weights = _weights(checkpoint)
    before = weights_at_fault[str(tmp_path / "run")]
    assert weights.keys() == before.keys()
    assert all(torch.equal(weights[k], before[k]) for k in before)
    assert all(torch.isfinite(w).all() for w in weights.values())
    # Lightning counts a skipped batch as a step (as it does fp16 loss scaling's skips); the
    # batch that stops the run is not counted.
    assert checkpoint["global_step"] == FIRST_BAD + MAX_BAD_STEPS - 1


def test_a_bad_accumulation_window_changes_no_weight(tmp_path):
    """Accumulating 2 batches per update, with both batches of the second window bad: its
    update is skipped whole, so the weights after it are those from before it, and training
    goes on from there."""
    assert FIRST_BAD % 2 == 0  # the fault fills one whole window
    with pytest.warns(UserWarning, match="non-finite loss"):
        run_dir = _train(tmp_path, bad_batches=2, max_steps=2, accumulate=2)
    checkpoint = _last(run_dir)
    assert checkpoint["global_step"] == 2
    weights = _weights(checkpoint)
    before = weights_at_fault[str(run_dir)]
    assert all(torch.equal(weights[k], before[k]) for k in before)


def test_a_bad_batch_inside_a_window_keeps_the_weights_finite(tmp_path):
    with pytest.warns(UserWarning, match="non-finite loss"):
        run_dir = _train(tmp_path, bad_batches=1, max_steps=4, accumulate=2)
    checkpoint = _last(run_dir)
    assert checkpoint["global_step"] == 4
    weights = _weights(checkpoint)
    assert all(torch.isfinite(w).all() for w in weights.values())
    before = weights_at_fault[str(run_dir)]
    assert any(not torch.equal(weights[k], before[k]) for k in before), "training stopped"
