"""Side effects of training that a user watches: sample translations and attention heatmaps."""

import lightning as L
import torch

from seq2seq.data.batching import collate
from seq2seq.plotting import attention_figure
from seq2seq.search import greedy_search


class TranslationSamples(L.Callback):
    """At each validation, logs the greedy translations of a few fixed validation sentences
    (as text) and their attention heatmaps (as images) to TensorBoard."""

    def __init__(self, num_sentences: int = 3):
        self.num_sentences = num_sentences

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.sanity_checking or not trainer.is_global_zero or experiment is None:
            return
        dm = trainer.datamodule
        examples = dm.val_examples[: self.num_sentences]
        batch = collate(examples)
        model = pl_module.model
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            hyps = greedy_search(
                model, batch.src.to(pl_module.device), batch.src_lengths.to(pl_module.device),
                pl_module.hparams.val_max_len_a, pl_module.hparams.val_max_len_b,
            )
        model.train(was_training)
        src_tok, tgt_tok = pl_module.src_tokenizer, pl_module.tgt_tokenizer
        rows = ["| source | reference | translation |", "|---|---|---|"]
        for k, ((index, src_ids, _), hyp) in enumerate(zip(examples, hyps, strict=True)):
            translation = tgt_tok.decode([hyp.tokens])[0]
            rows.append(
                f"| {dm.val_sources[index]} | {dm.val_references[index]} | {translation} |"
            )
            figure = attention_figure(
                src_tok.pieces(src_ids) + ["</s>"],
                tgt_tok.pieces(hyp.tokens) + ["</s>"],
                hyp.attention,
            )
            experiment.add_figure(f"attention/{k}", figure, trainer.global_step, close=True)
        experiment.add_text("val/samples", "\n".join(rows), trainer.global_step)
