"""End to end: scripts/train.py trains configs/tiny.yaml for real on the bundled Multi30k."""

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seq2seq.commands import train

ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    (event_dir,) = {p.parent for p in run_dir.glob("**/events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tiny_config_trains_checkpoints_and_logs_bleu(tmp_path, capsys):
    train.main([
        "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    logged = scalars(tmp_path)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                "val/loss", "val/ppl", "val/bleu"):
        assert tag in logged, f"{tag} not logged; got {sorted(logged)}"
    losses = logged["train/loss"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert len(logged["val/bleu"]) == 2

    (last,) = tmp_path.glob("**/checkpoints/last.ckpt")
    assert list(last.parent.glob("best-*.ckpt"))
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 30
    payload = checkpoint["seq2seq"]
    assert payload["src_lang"] == "de" and payload["tgt_lang"] == "en"
    assert payload["src_vocab_size"] <= 500
    assert list(tmp_path.glob("**/spm.src.model"))

    # What a user needs next, printed when training stops.
    err = capsys.readouterr().err
    (best,) = last.parent.glob("best-*.ckpt")
    assert f"best checkpoint  {best} (val/bleu " in err
    assert f"last checkpoint  {last}" in err
    assert f"translate -m {best}" in err and f"tensorboard --logdir {tmp_path}" in err
