"""`TranslationModule`: the training and validation step logic around the plain-PyTorch model."""

import math
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F

from seq2seq.checkpoint import make_payload
from seq2seq.data.batching import Batch
from seq2seq.data.tokenizer import PAD_ID
from seq2seq.metrics import bleu
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.search import greedy_search


class NonFiniteLossError(RuntimeError):
    """`max_bad_steps` consecutive batches had a non-finite loss. Their updates were skipped,
    so the weights are still those from before the fault (and are saved to last.ckpt)."""


class TranslationModule(L.LightningModule):
    def __init__(
        self,
        embedding_size: int = 256,
        encoder_hidden_size: int = 256,
        encoder_layers: int = 1,
        decoder_hidden_size: int = 512,
        decoder_layers: int = 1,
        attention_size: int = 256,
        dropout: float = 0.3,
        embedding_dropout: float = 0.1,
        tie_output_embedding: bool = True,
        share_embeddings: bool = True,
        label_smoothing: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_reduce_factor: float = 0.5,
        lr_patience: int = 1,
        min_lr: float = 1e-5,
        max_bad_steps: int = 5,
        val_max_len_a: float = 1.5,
        val_max_len_b: int = 10,
    ):
        """
        Args:
            embedding_size .. share_embeddings: the model (see `seq2seq.model.ModelConfig`);
                vocabulary sizes come from the data module's SentencePiece models.
            label_smoothing: epsilon of the label-smoothed cross-entropy (padding ignored).
            lr, weight_decay: Adam.
            warmup_steps: linear learning-rate warm-up over this many optimizer steps.
            lr_reduce_factor, lr_patience, min_lr: reduce the learning rate when val/bleu
                has not improved for `lr_patience` validations.
            max_bad_steps: this many consecutive non-finite losses stop training.
            val_max_len_a, val_max_len_b: greedy validation decodes at most a * src_len + b.
        """
        super().__init__()
        for key in ("lr", "max_bad_steps"):
            if locals()[key] <= 0:
                raise ValueError(f"model.{key} must be > 0, got {locals()[key]}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.model: Seq2Seq | None = None
        self._bad_steps = 0
        self._last_step_end: float | None = None
        self._val_hyps: dict[int, str] = {}
        self._val_loss = torch.zeros(2, dtype=torch.float64)  # summed NLL, target tokens

    # ----------------------------------------------------------------- model and data
    def configure_model(self) -> None:
        """Build the model once the data module knows the vocabulary sizes."""
        if self.model is not None:
            return
        dm = self.trainer.datamodule
        dm.setup("fit")
        self.src_tokenizer, self.tgt_tokenizer = dm.src_tokenizer, dm.tgt_tokenizer
        hp = self.hparams
        self.model = Seq2Seq(
            ModelConfig(
                src_vocab_size=self.src_tokenizer.vocab_size,
                tgt_vocab_size=self.tgt_tokenizer.vocab_size,
                embedding_size=hp.embedding_size,
                encoder_hidden_size=hp.encoder_hidden_size,
                encoder_layers=hp.encoder_layers,
                decoder_hidden_size=hp.decoder_hidden_size,
                decoder_layers=hp.decoder_layers,
                attention_size=hp.attention_size,
                dropout=hp.dropout,
                embedding_dropout=hp.embedding_dropout,
                tie_output_embedding=hp.tie_output_embedding,
                share_embeddings=hp.share_embeddings and dm.hparams.joint_vocab,
            )
        )

    def on_fit_start(self) -> None:
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero and log_dir:
            run_dir = Path(log_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.src_tokenizer.save(run_dir / "spm.src.model")
            self.tgt_tokenizer.save(run_dir / "spm.tgt.model")
            params = sum(p.numel() for p in self.model.parameters())
            self.print(f"model: {params / 1e6:.2f}M parameters")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = self.trainer.datamodule
        checkpoint["seq2seq"] = make_payload(
            self.model, self.src_tokenizer, self.tgt_tokenizer, dm.hparams.src_lang,
            dm.hparams.tgt_lang,
        )
        # Dropout draws from these: a resumed run continues the same random stream.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
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
        loss_sum, tokens = self._loss(batch, self.hparams.label_smoothing)
        loss = loss_sum / tokens
        if not torch.isfinite(loss):
            self._bad_steps += 1
            if self._bad_steps >= self.hparams.max_bad_steps:
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
        warmup = self.hparams.warmup_steps
        if warmup and self.global_step < warmup:
            for group in self.optimizers().param_groups:
                group["lr"] = self.hparams.lr * (self.global_step + 1) / warmup

    def on_train_epoch_start(self) -> None:
        self._last_step_end = None

    def on_validation_start(self) -> None:
        self._last_step_end = None  # validation time is not training time

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        if not norms:  # training_step skipped the batch (non-finite loss): nothing to step
            return
        self.log("train/grad_norm", torch.stack(norms).norm())

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=hp.lr_reduce_factor, patience=hp.lr_patience,
            min_lr=hp.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": plateau, "monitor": "val/bleu", "strict": False},
        }

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss_sum, tokens = self._loss(batch, 0.0)
        self._val_loss += torch.stack([loss_sum.detach().double().cpu(), tokens.double().cpu()])
        hyps = greedy_search(
            self.model, batch.src, batch.src_lengths,
            self.hparams.val_max_len_a, self.hparams.val_max_len_b,
        )
        texts = self.tgt_tokenizer.decode([h.tokens for h in hyps])
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
        references = self.trainer.datamodule.val_references
        order = sorted(hyps)
        score, signature = bleu([hyps[i] for i in order], [references[i] for i in order])
        val_loss = (loss[0] / loss[1]).item()
        self.log("val/loss", val_loss, sync_dist=False)
        self.log("val/ppl", math.exp(min(val_loss, 50.0)), sync_dist=False)
        self.log("val/bleu", score, prog_bar=True, sync_dist=False)
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
