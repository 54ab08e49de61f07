"""Train a translation model: Lightning's CLI over `TranslationModule` + `TranslationDataModule`.

    seq2seq-train                                            # the default Multi30k de->en config
    seq2seq-train --config configs/tiny.yaml --trainer.max_steps 50
    seq2seq-train --config configs/multi30k_de_en.yaml --ckpt_path last
    seq2seq-train --init_from models/de-en --data.data_dir my_corpus --model.lr 2e-4  # fine-tune
    seq2seq-train --print_config

(`python scripts/train.py ...` is the same command.) Without `-c/--config`, the default config
shipped with the package is used; with one, only the files given are.
"""

import dataclasses
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import NoReturn

import lightning.pytorch
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from seq2seq.allocator import keep_freed_memory
from seq2seq.callbacks import check_validation_callbacks
from seq2seq.checkpoint import (
    CheckpointError,
    LoadedModel,
    load_model,
    read_checkpoint,
    read_model_config,
    read_tokenizers,
)
from seq2seq.data.corpus import CorpusError
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.hub_ids import looks_like_path
from seq2seq.model import Seq2Seq
from seq2seq.training import (
    NonFiniteLossError,
    TrainingConfig,
    TranslationModule,
    check_embedding_sharing,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIGS / "multi30k_de_en.yaml"


class TrainCLI(LightningCLI):
    def add_core_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        # The `model:` section is the TrainingConfig dataclass itself, read directly: its
        # fields are the keys (`--model.lr`), its defaults and checks the only ones.
        parser.add_class_arguments(TrainingConfig, "model")
        parser.add_lightning_class_args(self.datamodule_class, "data")

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            default=None,
            help="resume from this checkpoint; 'last' finds the run's last.ckpt",
        )
        parser.add_argument(
            "--init_from",
            default=None,
            help="fine-tune a model (a checkpoint, a model folder or a hub id): a new run that "
            "starts from its weights, with its SentencePiece models and its network (the "
            "config's dropouts and training settings apply)",
        )

    def instantiate_classes(self) -> None:
        for section in ("trainer", "model", "data"):
            if self.config[section] is None:  # `model:` with no keys under it is YAML's null
                raise ValueError(f"{section}: the section is empty; give it keys or leave it out")
        if self.config.init_from is not None and not self.config.init_from.strip():
            raise ValueError("--init_from is empty: give a checkpoint, a model folder or a hub id")
        super().instantiate_classes()
        config = self.model  # the TrainingConfig parsed above
        self.pretrained: LoadedModel | None = None
        self.replaced: dict = {}  # network settings the pretrained model overrides
        if self.config.init_from:
            try:
                self.pretrained = load_model(self.config.init_from)
            except CheckpointError as e:
                raise CheckpointError(f"--init_from {e}") from None
            self.config.init_from = local_or_hub(self.config.init_from)
            config, self.replaced = config.with_network_of(self.pretrained.model.config)
            for key, (_, theirs) in self.replaced.items():  # so config.yaml says what ran
                setattr(self.config.model, key, theirs)
        self.model = TranslationModule(config, self.pretrained, self.config.init_from)


def local_or_hub(name: str) -> str:
    """`--init_from` as config.yaml records it: a local path shaped like a hub id ("models/de-en")
    gets a leading "./", so that where it does not exist (an export from another folder, a
    resume elsewhere) it still reads as the path it was, not as a hub repo."""
    if Path(name).exists() and not looks_like_path(name):
        return f"./{name}"
    return name


def names_a_config(args: list[str]) -> bool:
    """Whether the command line gives a config file, in any of the forms the parser accepts."""
    return any(a in ("-c", "--config") or a.startswith(("--config=", "-c=")) for a in args)


def main(args: list[str] | None = None) -> None:
    """`args` replaces the command line (for calls from Python).

    A bad configuration exits with status 2, bad data or a numerical fault with status 1;
    either way stderr ends with one line `error: ...` that names the key or the file.
    """
    given = sys.argv[1:] if args is None else args
    keep_freed_memory()  # each step's logits reuse the last one's memory (seq2seq.allocator)
    # Raise instead of printing a usage block, so that the error can be one line.
    parser_kwargs = {"exit_on_error": False}
    if not names_a_config(given):
        parser_kwargs["default_config_files"] = [str(DEFAULT_CONFIG)]
    try:
        cli = TrainCLI(
            TranslationModule,
            TranslationDataModule,
            args=args,
            run=False,
            parser_kwargs=parser_kwargs,
            save_config_kwargs={"overwrite": True},
        )
        if cli.pretrained is not None:
            start_fine_tuning(cli.config.init_from, cli.pretrained, cli.replaced, cli.datamodule)
        ckpt_path = cli.config.ckpt_path
        if ckpt_path == "last":
            ckpt_path = find_last_checkpoint(Path(cli.trainer.default_root_dir))
        if ckpt_path:
            check_resumable(Path(ckpt_path), cli.model, cli.datamodule)
            # A resumed run tokenizes with the SentencePiece models it was trained with, even
            # if the corpus has changed since: its token ids must keep meaning the same pieces.
            cli.datamodule.use_tokenizers(*read_tokenizers(ckpt_path))
            if cli.config.trainer.logger in (None, True):  # Lightning's default logger
                log_into_version_of(cli.trainer, Path(ckpt_path))
        check_embedding_sharing(cli.model.config, cli.datamodule.joint_vocab)
        check_validation_callbacks(cli.trainer.callbacks)
        check_counts(cli.config.trainer)
    except (ArgumentError, ValueError, MisconfigurationException) as e:
        fail(e, status=2)
    # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader has a state;
    # ours is restored by the data module (TranslationDataModule.state_dict), exactly.
    warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before")
    error, status = None, 1
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except (CorpusError, NonFiniteLossError) as e:
        error = e
    except (ValueError, MisconfigurationException) as e:
        if not raised_by_lightning(e):
            raise  # a fault in our code: its traceback is what to read
        # A setting Lightning can only check against the data, e.g. val_check_interval: 15
        # steps with 7 batches an epoch.
        error, status = e, 2
    finally:  # also after Ctrl-C or SIGTERM; before the error, so that stderr ends with it
        if cli.trainer.is_global_zero:
            print_next_steps(cli.trainer)
    if error is not None:
        fail(error, status)


def check_counts(trainer) -> None:
    """Raise ValueError for a count Lightning takes at 0 and divides by once training runs
    (a ZeroDivisionError traceback after the first step), or that validates inside a gradient
    accumulation window (no exact resume)."""
    accumulate = trainer.accumulate_grad_batches
    every = trainer.check_val_every_n_epoch  # null: count val_check_interval across epochs
    if accumulate < 1:
        raise ValueError(f"trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    # Batches (int) or a fraction of an epoch (float); Lightning also takes a time ("00:00:10:00"
    # or a dict), which has no count to check.
    interval = trainer.val_check_interval
    counted = isinstance(interval, int | float) and not isinstance(interval, bool)
    if counted and not interval > 0:
        raise ValueError(
            f"trainer.val_check_interval must be above 0 (steps, or a fraction of an epoch), "
            f"got {interval}"
        )
    validates = trainer.limit_val_batches != 0  # None: Lightning's default, every batch
    # last.ckpt is saved after each validation; one inside an accumulation window would leave
    # out the gradients summed so far, and the resumed run would differ. Windows restart with
    # each epoch, and an epoch's last batch ends one: validating every N batches of an epoch,
    # N a multiple of the window, or at the epoch's end, is safe; a fraction below 1 (its batch
    # count depends on the epoch's) or counting across epochs (check_val_every_n_epoch null) is
    # not.
    if validates and accumulate > 1:
        if isinstance(interval, int) and interval % accumulate:
            raise ValueError(
                f"trainer.val_check_interval ({interval} batches) must be a multiple of "
                f"trainer.accumulate_grad_batches ({accumulate}), for an exact resume"
            )
        if isinstance(interval, float) and interval < 1:
            raise ValueError(
                f"trainer.val_check_interval {interval}: with trainer.accumulate_grad_batches "
                f"{accumulate}, give it in batches (a multiple of {accumulate}) or 1.0, for an "
                "exact resume"
            )
        if every is None:
            raise ValueError(
                f"trainer.check_val_every_n_epoch: null counts validations across epochs, "
                f"inside accumulation windows of {accumulate}; give a number of epochs, for "
                "an exact resume"
            )
    if every is not None and every < 1:
        raise ValueError(
            f"trainer.check_val_every_n_epoch must be at least 1 (or null), got {every}"
        )


def raised_by_lightning(error: Exception) -> bool:
    """Whether the innermost frame of the error's traceback is in Lightning's trainer package:
    Lightning refusing a setting, not a fault in a model or data module."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return False
    package = Path(lightning.pytorch.__file__).parent
    return Path(traceback.tb_frame.f_code.co_filename).is_relative_to(package)


def start_fine_tuning(
    name: str, pretrained: LoadedModel, replaced: dict, data: TranslationDataModule
) -> None:
    """Check that the data is in the pretrained model's languages, hand its SentencePiece models
    to the data module (its token ids must keep meaning the same pieces) and say what the
    pretrained model decided over the config."""
    theirs = check_languages(f"--init_from {name}", pretrained.src_lang, pretrained.tgt_lang, data)
    data.use_tokenizers(pretrained.src_tokenizer, pretrained.tgt_tokenizer)
    if rank_zero_only.rank == 0:
        network = "".join(
            f"; model.{key} {model_value!r} (the config: {config_value!r})"
            for key, (config_value, model_value) in replaced.items()
        )
        print(
            f"fine-tuning {name} ({theirs}): its weights, SentencePiece models and network"
            f"{network}",
            file=sys.stderr,
        )


def check_languages(option: str, src_lang: str, tgt_lang: str, data: TranslationDataModule) -> str:
    """Raise ValueError unless the data is in a model's languages -> "src->tgt"."""
    theirs = f"{src_lang}->{tgt_lang}"
    ours = f"{data.hparams.src_lang}->{data.hparams.tgt_lang}"
    if theirs != ours:
        raise ValueError(
            f"{option}: the model translates {theirs}, the data is {ours} "
            "(data.src_lang, data.tgt_lang)"
        )
    return theirs


def check_resumable(path: Path, module: TranslationModule, data: TranslationDataModule) -> None:
    """Raise CheckpointError unless the checkpoint's weights fit the configured network (names
    and shapes), naming the model keys that differ: Lightning would list every tensor instead.
    Settings that leave the weights alone (dropout, the learning rate) may change on resume;
    the languages may not (the checkpoint's tokenizers would read the other language)."""
    checkpoint = read_checkpoint(path, "cpu", mmap=True)
    if "optimizer_states" not in checkpoint:  # save_model's files: averages, conversions
        raise CheckpointError(
            f"--ckpt_path {path}: weights only, no training state to resume; give a last.ckpt "
            "or best-*.ckpt that training wrote"
        )
    meta = checkpoint["seq2seq"]
    saved, src_vocab_size, tgt_vocab_size = read_model_config(path, meta)  # checks the format
    check_languages(f"--ckpt_path {path}", meta["src_lang"], meta["tgt_lang"], data)
    configured = module.config.model_config()
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        network = Seq2Seq(configured, src_vocab_size, tgt_vocab_size)  # the run's vocabularies
    here = {f"model.{name}": tensor.shape for name, tensor in network.state_dict().items()}
    if here == {name: tensor.shape for name, tensor in checkpoint["state_dict"].items()}:
        return
    theirs, mine = dataclasses.asdict(saved), dataclasses.asdict(configured)
    differ = [
        f"model.{k}: {theirs[k]!r} in it, {mine[k]!r} here" for k in mine if mine[k] != theirs[k]
    ]
    detail = "; ".join(differ) or "tensor names or shapes differ"
    # The run's config.yaml (Lightning's CLI writes it into the version folder) holds them all,
    # --init_from of a fine-tuned run included.
    run_config = path.parent.parent / "config.yaml"
    own = f" (--config {run_config})" if run_config.is_file() else ""
    raise CheckpointError(
        f"--ckpt_path {path}: the checkpoint's network does not fit this config ({detail}); "
        f"resume with the run's own model settings{own}"
    )


def fail(error: Exception, status: int, prog: str = "") -> NoReturn:
    """stderr ends with one line `error: ...` (`prog: error: ...` when named); exit `status`."""
    message = " ".join(str(error).split())  # jsonargparse's messages span several lines
    print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr)
    sys.exit(status)


def newest_last_checkpoint(root: Path) -> Path | None:
    """The newest `last.ckpt` below the run folder (each new run logs into a new version)."""
    return max(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime, default=None)


def find_last_checkpoint(root: Path) -> str:
    """What `--ckpt_path last` resumes from; a CheckpointError when there is none."""
    last = newest_last_checkpoint(root)
    if last is None:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt below {root}")
    return str(last)


def log_into_version_of(trainer, checkpoint: Path) -> None:
    """Resuming from `<root>/lightning_logs/version_N/checkpoints/*.ckpt` logs on into version_N
    rather than a new folder: TensorBoard shows one curve, and ModelCheckpoint, whose folder
    stays the same, keeps its top-k and best checkpoint from before the stop (in a new folder it
    would forget them, and the best 3 to average would be only those after the resume)."""
    logger = trainer.logger
    folder = checkpoint.resolve().parent
    version = folder.parent
    if folder.name == "checkpoints" and version.parent == Path(logger.root_dir).resolve():
        trainer.logger = type(logger)(logger.save_dir, name=logger.name, version=version.name)


def print_next_steps(trainer) -> None:
    """What a user needs once training stops, however it stopped: the checkpoints and the
    commands that use them."""
    best = trainer.checkpoint_callback
    best_path = getattr(best, "best_model_path", "")
    last = newest_last_checkpoint(Path(trainer.default_root_dir))
    if not best_path and last is None:
        return
    lines = ["", "training stopped; next:"]
    if best_path:
        score = best.best_model_score
        score = f" ({best.monitor} {score.item():.2f})" if isinstance(score, torch.Tensor) else ""
        lines.append(f"  best checkpoint  {best_path}{score}")
    if last is not None:
        lines.append(f"  last checkpoint  {last}  (resume: --ckpt_path last)")
    model = best_path or last
    lines += [
        f"  translate        echo 'Ein Satz.' | translate -m {model}",
        f"  watch            tensorboard --logdir {trainer.default_root_dir}",
    ]
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
