"""`TranslationModule`: the training and validation step logic around the plain-PyTorch model."""

import math
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn

from seq2seq.checkpoint import LoadedModel, make_payload
from seq2seq.data.batching import Batch
from seq2seq.data.datamodule import TranslationTask
from seq2seq.metrics import bleu
from seq2seq.model import DROPOUTS, ModelConfig, Seq2Seq
from seq2seq.search import MAX_LEN_A, MAX_LEN_B, greedy_search
from seq2seq.special_tokens import PAD_ID


class NonFiniteLossError(RuntimeError):
    """`max_bad_steps` consecutive batches had a non-finite loss. Their updates were skipped,
    so the weights are still those from before the fault (and are saved to last.ckpt)."""



@dataclass
class TrainingConfig(ModelConfig):
    """The `model:` section of a training config: the network (`ModelConfig`'s fields) and how
    it is trained. The training CLI reads this dataclass directly, so every field is a
    `--model.<field>` option; each is checked here, once, before any data is read."""

    label_smoothing: float = 0.1  # epsilon of the label-smoothed cross-entropy
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    lr_reduce_factor: float = 0.5  # reduce the learning rate by this factor when val/bleu
    lr_patience: int = 1  # has not improved for this many validations,
    min_lr: float = 1e-5  # down to this
    max_bad_steps: int = 5  # this many consecutive non-finite losses stop training
    val_max_len_a: float = MAX_LEN_A  # greedy validation decodes at most a * src_len + b
    val_max_len_b: int = MAX_LEN_B

    def __post_init__(self):
        super().__post_init__()
        for f in fields(TrainingConfig):  # YAML reads .inf and .nan as floats
            value = getattr(self, f.name)
            if f.type is float and not math.isfinite(value):
                raise ValueError(f"model.{f.name} must be a finite number, got {value!r}")
        checks = {
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": self.warmup_steps >= 0,
            "lr_reduce_factor": 0.0 < self.lr_reduce_factor < 1.0,
            "lr_patience": self.lr_patience >= 0,
            "min_lr": self.min_lr >= 0,
            "max_bad_steps": self.max_bad_steps > 0,
            "val_max_len_a": self.val_max_len_a >= 0,
            "val_max_len_b": self.val_max_len_b >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"model.{name} is out of range: {getattr(self, name)!r}")

    def model_config(self) -> ModelConfig:
        """The network's part of this config."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def with_network_of(self, network: ModelConfig) -> "tuple[TrainingConfig, dict]":
        """This config with `network`'s settings, as fine-tuning a model needs: every field of
        the network but the dropouts, which leave the weights' shapes and meaning alone and are
        the config's to set. -> (the config, {field: (this config's value, the network's)} for
        each value replaced)."""
        taken = {
            f.name: getattr(network, f.name)
            for f in fields(ModelConfig)
            if f.name not in DROPOUTS
        }
        replaced = {k: (getattr(self, k), v) for k, v in taken.items() if getattr(self, k) != v}
        return replace(self, **taken), replaced


def check_embedding_sharing(config: ModelConfig, joint_vocab: bool) -> None:
    """One embedding table for both languages needs one SentencePiece model for both: with two,
    the same id would mean different pieces on each side."""
    if config.share_embeddings and not joint_vocab:
        raise ValueError(
            "model.share_embeddings needs data.joint_vocab: true (one SentencePiece model for "
            "both languages); set model.share_embeddings: false or data.joint_vocab: true"
        )


class TranslationModule(L.LightningModule):
    def __init__(
        self,
        config: TrainingConfig | None = None,
        pretrained: LoadedModel | None = None,
        init_from: str | None = None,
    ):
        """`pretrained` (`checkpoint.load_model`'s): fine-tune its weights. Its network must be
        `config`'s (`TrainingConfig.with_network_of`), and the data module must tokenize with
        its SentencePiece models (`use_tokenizers`); by default a new network is trained.
        `init_from` names it in every checkpoint, so that a model card made from a checkpoint
        copied out of its run folder still names the base model (and its data's terms)."""
        super().__init__()
        self.init_from = init_from
        self.config = config or TrainingConfig()
        # Plain data in the checkpoint (it is read with weights_only=True), not the dataclass.
        self.save_hyperparameters(asdict(self.config))
        self.model: Seq2Seq | None = None
        self._pretrained: tuple[tuple[bytes, bytes], dict] | None = None  # SentencePiece, weights
        if pretrained is not None:
            if differ := self.config.with_network_of(pretrained.model.config)[1]:
                raise ValueError(
                    f"the pretrained model's network differs from the config's: {', '.join(differ)}"
                )
            # Its weights, not the module: a module held here would join this one's parameters.
            spm = pretrained.src_tokenizer.model_proto, pretrained.tgt_tokenizer.model_proto
            self._pretrained = spm, pretrained.model.state_dict()
        self.task: TranslationTask | None = None
        self._bad_steps = 0
        self._last_step_end: float | None = None
        self._val_hyps: dict[int, str] = {}
        self._val_loss = torch.zeros(2, dtype=torch.float64)  # summed NLL, target tokens
        self._resumed_lr: float | None = None  # model.lr of the run a checkpoint resumes

    # ----------------------------------------------------------------- model and data
    def configure_model(self) -> None:
        """Build the model once the data module knows the vocabulary (Lightning calls this
        after the data module's `setup`), from the pretrained weights when fine-tuning."""
        if self.model is not None:
            return
        self.task = task = self.trainer.datamodule.task
        config = self.config.model_config()
        check_embedding_sharing(config, task.joint_vocab)
        sizes = task.src_tokenizer.vocab_size, task.tgt_tokenizer.vocab_size
        model = Seq2Seq(config, *sizes)  # the config's dropouts, whatever the pretrained had
        if self._pretrained is not None:
            spm, weights = self._pretrained
            # Token ids mean pieces of one SentencePiece model: the same size is not enough.
            if spm != (task.src_tokenizer.model_proto, task.tgt_tokenizer.model_proto):
                raise ValueError(
                    "the data module tokenizes with other SentencePiece models than the "
                    "pretrained model's; give it the model's (use_tokenizers)"
                )
            model.load_state_dict(weights)
            self._pretrained = None
        self.model = model

    def on_fit_start(self) -> None:
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero and log_dir:
            run_dir = Path(log_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.task.src_tokenizer.save(run_dir / "spm.src.model")
            self.task.tgt_tokenizer.save(run_dir / "spm.tgt.model")
            params = sum(p.numel() for p in self.model.parameters())
            self.print(f"model: {params / 1e6:.2f}M parameters")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        task = self.task
        checkpoint["seq2seq"] = make_payload(
            self.model, task.src_tokenizer, task.tgt_tokenizer, task.src_lang, task.tgt_lang
        )
        if self.init_from is not None:
            checkpoint["init_from"] = self.init_from
        # Dropout draws from these: a resumed run continues the same random stream.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Token ids mean pieces of one SentencePiece model: weights trained with another must
        # not go on training with these (`seq2seq-train --ckpt_path` reuses the checkpoint's).
        saved = checkpoint.get("seq2seq", {})
        for side in ("src", "tgt"):
            mine = getattr(self.task, f"{side}_tokenizer").model_proto
            if saved.get(f"{side}_spm", mine) != mine:
                raise ValueError(
                    f"the checkpoint's {side} SentencePiece model differs from the one built "
                    "from the data; resume with the checkpoint's (seq2seq-train does) or start "
                    "a new run"
                )
        self._resumed_lr = checkpoint.get("hyper_parameters", {}).get("lr")
        rng = checkpoint.get("rng_state")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ----------------------------------------------------------------- training
    def _loss(self, batch: Batch, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> summed loss over target tokens, and the number of target tokens."""
        logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            batch.tgt_out.flatten(),
            ignore_index=PAD_ID,
            label_smoothing=label_smoothing,
            reduction="sum",
        )
        return loss, (batch.tgt_out != PAD_ID).sum()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        loss_sum, tokens = self._loss(batch, self.config.label_smoothing)
        loss = loss_sum / tokens
        if not torch.isfinite(loss):
            self._bad_steps += 1
            if self._bad_steps >= self.config.max_bad_steps:
                raise NonFiniteLossError(
                    f"training stopped: {self._bad_steps} consecutive non-finite losses "
                    f"(step {self.global_step}); lower model.lr or check the data"
                )
            warnings.warn(
                f"non-finite loss at step {self.global_step}: batch skipped", stacklevel=1
            )
            return None  # Lightning skips the optimizer step
        self._bad_steps = 0
        now = time.perf_counter()
        if self._last_step_end is not None:
            self.log("train/tokens_per_s", tokens.item() / (now - self._last_step_end))
        self._last_step_end = now
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        warmup = self.config.warmup_steps
        if warmup and self.global_step < warmup:
            ramp = (self.global_step + 1) / warmup
            for group in self.optimizers().param_groups:
                # The ramp scales the rate it ramps to, kept in the group (so in last.ckpt),
                # not config.lr: a validation inside the warm-up may have had ReduceLROnPlateau
                # cut group["lr"], and that cut must hold. A cut shows as group["lr"] no longer
                # being what the last ramp set. Idempotent within a step (accumulation).
                target = group.setdefault("warmup_target", self.config.lr)
                if "warmup_ramp" in group and group["lr"] != target * group["warmup_ramp"]:
                    group["warmup_target"] = target = group["lr"] / group["warmup_ramp"]
                group["warmup_ramp"] = ramp
                group["lr"] = target * ramp

    def on_train_start(self) -> None:
        """On resume, the config's optimisation settings replace those Lightning restored with
        the optimizer and the scheduler (they may change on resume): a new `model.lr` scales the
        rate the run had reached, keeping its warm-up and its plateau cuts."""
        if self._resumed_lr is None:
            return
        hp, scale = self.config, self.config.lr / self._resumed_lr
        for group in self.optimizers().param_groups:
            group["lr"] *= scale
            group["weight_decay"] = hp.weight_decay
            if "warmup_target" in group:
                group["warmup_target"] *= scale
        plateau = self.lr_schedulers()
        plateau.factor, plateau.patience = hp.lr_reduce_factor, hp.lr_patience
        plateau.min_lrs = [hp.min_lr] * len(plateau.min_lrs)

    def on_train_epoch_start(self) -> None:
        self._last_step_end = None

    def on_validation_start(self) -> None:
        self._last_step_end = None  # validation time is not training time

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:  # training_step skipped the batch (non-finite loss): nothing to step
            return
        self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def configure_optimizers(self):
        hp = self.config
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=hp.lr_reduce_factor, patience=hp.lr_patience,
            min_lr=hp.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": plateau, "monitor": "val/bleu", "strict": False},
        }

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Not here: Lightning would step the plateau scheduler at the end of each training
        epoch (however many validations it held, and not in the epoch a resumed run restarts
        in); `on_validation_epoch_end` steps it after each validation, as lr_patience counts."""

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss_sum, tokens = self._loss(batch, 0.0)
        self._val_loss += torch.stack([loss_sum.detach().double().cpu(), tokens.double().cpu()])
        hyps = greedy_search(
            self.model, batch.src, batch.src_lengths,
            self.config.val_max_len_a, self.config.val_max_len_b,
        )
        texts = self.task.tgt_tokenizer.decode([h.tokens for h in hyps])
        self._val_hyps.update(zip(batch.index.tolist(), texts, strict=True))

    def on_validation_epoch_end(self) -> None:
        hyps, loss = self._val_hyps, self._val_loss
        self._val_hyps, self._val_loss = {}, torch.zeros(2, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            # Each rank decoded a disjoint shard: gather every hypothesis exactly once.
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, hyps)
            hyps = {i: text for shard in shards for i, text in shard.items()}
            loss = self.trainer.strategy.reduce(loss.to(self.device), reduce_op="sum").cpu()
        if self.trainer.sanity_checking:
            # Lightning's sanity check decodes only a few batches: no corpus BLEU from those.
            return
        references = self.task.val_references
        order = sorted(hyps)
        score, signature = bleu([hyps[i] for i in order], [references[i] for i in order])
        val_loss = (loss[0] / loss[1]).item()
        self.log("val/loss", val_loss, sync_dist=False)
        self.log("val/ppl", math.exp(min(val_loss, 50.0)), sync_dist=False)
        self.log("val/bleu", score, prog_bar=True, sync_dist=False)
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.lr_schedulers().step(score)  # every rank: each has the whole score
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero:
            return
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("val/bleu_signature", signature, self.global_step)
        if log_dir:
            # Like Joey NMT: every validation's hypotheses, in corpus order, to read or rescore.
            out = Path(log_dir) / "hyps" / f"val_step{self.global_step}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(hyps[i] + "\n" for i in order), encoding="utf-8")
