"""TrainingConfig (the `model:` section, checked in one place) and what TranslationModule
refuses to resume from."""

import dataclasses

import pytest

from seq2seq.data.datamodule import TranslationTask
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.model import ModelConfig
from seq2seq.training import TrainingConfig, TranslationModule


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
