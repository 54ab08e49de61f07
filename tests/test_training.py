"""TrainingConfig (the `model:` section, checked in one place), what TranslationModule
refuses to resume from, and its learning-rate warm-up."""

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import yaml

from seq2seq.data.datamodule import TranslationDataModule, TranslationTask
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.model import ModelConfig
from seq2seq.training import TrainingConfig, TranslationModule

ROOT = Path(__file__).resolve().parents[1]


def test_training_config_holds_every_model_field_with_the_same_defaults():
    model = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    training = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    assert training.items() >= model.items()
    assert TrainingConfig().model_config() == ModelConfig()


@pytest.mark.parametrize(
    "key,value",
    [("lr", 0.0), ("label_smoothing", 1.0), ("warmup_steps", -1), ("max_bad_steps", 0),
     ("lr_reduce_factor", 1.5), ("dropout", 1.0), ("attention_size", 0)],
)
def test_each_bad_value_names_its_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key}"):
        TrainingConfig(**{key: value})


def test_another_sentencepiece_model_is_refused(decoding_tokenizer, decoding_pairs):
    """Its token ids would mean other pieces: training on would silently scramble the model."""
    other = Tokenizer.train(decoding_pairs[1][:300], vocab_size=decoding_tokenizer.vocab_size)
    module = TranslationModule()
    module.task = TranslationTask(
        decoding_tokenizer, decoding_tokenizer, "de", "en", joint_vocab=True,
        val_sources=[], val_references=[],
    )
    same = {"src_spm": decoding_tokenizer.model_proto, "tgt_spm": decoding_tokenizer.model_proto}
    module.on_load_checkpoint({"seq2seq": same})
    with pytest.raises(ValueError, match="tgt SentencePiece model differs"):
        module.on_load_checkpoint({"seq2seq": {**same, "tgt_spm": other.model_proto}})


class LearningRates(L.Callback):
    """The rate of every optimizer step, and the steps after which a validation cut it."""

    def __init__(self):
        self.by_step: dict[int, float] = {}
        self.cut_after: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.by_step[trainer.global_step] = optimizer.param_groups[0]["lr"]

    def on_validation_start(self, trainer, pl_module):
        self._before = trainer.optimizers[0].param_groups[0]["lr"]

    def on_validation_end(self, trainer, pl_module):
        if trainer.optimizers[0].param_groups[0]["lr"] < self._before:
            self.cut_after.append(trainer.global_step)


def test_warmup_keeps_the_cuts_of_validations_inside_it(tmp_path):
    """ReduceLROnPlateau may halve the rate at a validation inside the warm-up; the ramp once
    overwrote it with config.lr * step / warm-up at the next step, undoing the cut."""
    settings = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # One-piece validation outputs: BLEU 0 every time, so each validation after the first cuts.
    settings["model"].update(warmup_steps=12, lr_patience=0, val_max_len_b=1)
    settings["data"]["train_lines"] = 400
    rates = LearningRates()
    L.seed_everything(1234)
    trainer = L.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, max_steps=12, val_check_interval=3,
        logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[rates],
    )
    trainer.fit(TranslationModule(TrainingConfig(**settings["model"])),
                TranslationDataModule(**settings["data"]))
    assert any(after < 12 for after in rates.cut_after), "the test needs a cut inside warm-up"
    lr = settings["model"]["lr"]
    for step, rate in rates.by_step.items():
        cuts = sum(step >= after for after in rates.cut_after)
        assert rate == pytest.approx(lr * 0.5**cuts * (step + 1) / 12), step
