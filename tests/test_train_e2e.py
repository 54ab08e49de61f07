"""End to end: scripts/train.py trains configs/tiny.yaml for real on the bundled Multi30k."""

import importlib.util
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalars(run_dir: Path) -> dict[str, list[float]]:
    (event_dir,) = {p.parent for p in run_dir.glob("**/events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tiny_config_trains_checkpoints_and_logs_bleu(tmp_path):
    train = load_train_script()
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
    assert payload["model_config"]["src_vocab_size"] <= 500
    assert list(tmp_path.glob("**/spm.src.model"))
