"""Side effects of training that a user watches: sample translations and attention heatmaps."""

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seq2seq.data.batching import collate
from seq2seq.plotting import attention_figure
from seq2seq.search import greedy_search
from seq2seq.training import NonFiniteLossError


class TranslationSamples(L.Callback):
    """At each validation, logs the greedy translations of a few fixed validation sentences
    (as text) and their attention heatmaps (as images) to TensorBoard."""

    def __init__(self, num_sentences: int = 3):
        if num_sentences < 1:  # to log none, leave the callback out
            raise ValueError(f"TranslationSamples.num_sentences must be > 0, got {num_sentences}")
        self.num_sentences = num_sentences

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.sanity_checking or not trainer.is_global_zero or experiment is None:
            return
        dm = trainer.datamodule
        count = min(self.num_sentences, len(dm.val_examples))
        examples = [dm.val_examples[k] for k in range(count)]
        batch = collate(examples)
        model = pl_module.model
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            hyps = greedy_search(
                model, batch.src.to(pl_module.device), batch.src_lengths.to(pl_module.device),
                pl_module.config.val_max_len_a, pl_module.config.val_max_len_b,
            )
        model.train(was_training)
        task = pl_module.task
        src_tok, tgt_tok = task.src_tokenizer, task.tgt_tokenizer
        rows = ["| source | reference | translation |", "|---|---|---|"]
        for k, ((index, src_ids, _), hyp) in enumerate(zip(examples, hyps, strict=True)):
            translation = tgt_tok.decode([hyp.tokens])[0]
            rows.append(
                f"| {task.val_sources[index]} | {task.val_references[index]} | {translation} |"
            )
            figure = attention_figure(
                src_tok.pieces(src_ids) + ["</s>"],
                tgt_tok.pieces(hyp.tokens) + ["</s>"],
                hyp.attention,
            )
            experiment.add_figure(f"attention/{k}", figure, trainer.global_step, close=True)
        experiment.add_text("val/samples", "\n".join(rows), trainer.global_step)


class LastCheckpoint(Checkpoint):
    """Keeps `last.ckpt` current, so that a killed run loses little: every `every_n_steps`
    optimizer steps, after each validation, when training stops, and on SIGTERM or Ctrl-C. Each
    save goes to a temporary file that is then renamed, so a crash mid-save leaves the previous
    `last.ckpt` intact.

    A resumed run must know what the validation before the save did. The learning-rate
    scheduler steps in the module's `on_validation_epoch_end`, before this hook. ModelCheckpoint
    and EarlyStopping must act in `on_validation_end` too, where Lightning runs this `Checkpoint`
    after them; by default they act at the end of the training epoch when validation runs once
    an epoch, which comes after the save: `setup` refuses that. A run that stops mid-epoch is
    saved before Lightning counts the unfinished epoch as done, which would skip its rest."""

    def __init__(self, every_n_steps: int = 500):
        if every_n_steps <= 0:
            raise ValueError(f"LastCheckpoint.every_n_steps must be > 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._saved_step = -1
        self._interrupted_validation = False  # while on_exception saves a stop mid-validation
        self._scheduler_steps: list[int] = []  # at the start of the validation under way

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_validation_callbacks(trainer.callbacks)

    @staticmethod
    def path(trainer: L.Trainer) -> Path:
        """Beside the best checkpoints: ModelCheckpoint's folder, else <log_dir>/checkpoints."""
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                return Path(callback.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        final = self.path(trainer) / "last.ckpt"
        partial = final.with_name("last.ckpt.partial")
        trainer.save_checkpoint(partial, weights_only=False)  # every rank joins; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, final)
        trainer.strategy.barrier("last_checkpoint")
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stops = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
        # With gradient accumulation one step spans several batches: save it once.
        if (trainer.global_step % self.every_n_steps == 0 or stops) and (
            trainer.global_step != self._saved_step
        ):
            self.save(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._scheduler_steps = _scheduler_steps(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Only a run that ended with its epoch (max_epochs, no validation) has steps unsaved here.
        if trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # After a NonFiniteLossError the weights are sound: the bad batches were skipped.
        if isinstance(exception, KeyboardInterrupt | SIGTERMException | NonFiniteLossError):
            # Before its results were applied: once the scheduler has stepped on it (in the
            # module's on_validation_epoch_end, before ModelCheckpoint and EarlyStopping act),
            # running it again would count it twice.
            self._interrupted_validation = trainer.validating and (
                _scheduler_steps(trainer) == self._scheduler_steps
            )
            try:
                self.save(trainer)
            finally:
                self._interrupted_validation = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._interrupted_validation:
            return
        # Stopped inside a validation, whose BLEU needs every sentence: as saved, Lightning's
        # loop state reads "validation over" and the resumed run would go on without it (no
        # val/bleu at this step, no ranking, no scheduler or early-stopping step). Counters of
        # a batch started but not processed read "stopped mid-validation" instead, and Lightning
        # then runs the validation again first, from its first batch.
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
        started = max(progress["total"]["started"], 1)
        progress["total"] = {"ready": started, "started": started,
                             "processed": started - 1, "completed": started - 1}
        progress["current"] = {"ready": 0, "started": 0, "processed": 0, "completed": 0}


def _scheduler_steps(trainer: L.Trainer) -> list[int]:
    """How many times each learning-rate scheduler has stepped."""
    return [config.scheduler.last_epoch for config in trainer.lr_scheduler_configs]


def check_validation_callbacks(callbacks: list[L.Callback]) -> None:
    """With a LastCheckpoint among `callbacks`: a ValueError naming the key if a ModelCheckpoint
    or an EarlyStopping would act at the end of the training epoch, after LastCheckpoint has
    saved the validation before it (LastCheckpoint says why that matters)."""
    if not any(isinstance(callback, LastCheckpoint) for callback in callbacks):
        return
    flags = {ModelCheckpoint: "save_on_train_epoch_end", EarlyStopping: "check_on_train_epoch_end"}
    late = [
        f"{type(callback).__name__}: set {flag}: false"
        for callback in callbacks
        for kind, flag in flags.items()
        if isinstance(callback, kind) and getattr(callback, f"_{flag}") is not False
    ]
    if late:
        raise ValueError(
            "LastCheckpoint saves after each validation, so the callbacks that react to one "
            f"must act right after it, not at the end of the epoch: {'; '.join(late)}"
        )
