"""Train a translation model: Lightning's CLI over `TranslationModule` + `TranslationDataModule`.

    python scripts/train.py                                  # configs/multi30k_de_en.yaml
    python scripts/train.py --config configs/tiny.yaml --trainer.max_steps 50
    python scripts/train.py --config configs/multi30k_de_en.yaml --ckpt_path last
    python scripts/train.py --print_config
"""

import dataclasses
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from seq2seq.data.corpus import CorpusError
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.model import ModelConfig
from seq2seq.training import NonFiniteLossError, TranslationModule

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi30k_de_en.yaml"


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            default=None,
            help="resume from this checkpoint; 'last' finds the run's last.ckpt",
        )


def main(args: list[str] | None = None) -> None:
    """`args` replaces the command line (for calls from Python).

    A bad configuration exits with status 2, bad data or a numerical fault with status 1;
    either way stderr ends with one line `error: ...` that names the key or the file.
    """
    given = sys.argv[1:] if args is None else args
    has_config = any(a == "--config" or a.startswith("--config=") for a in given)
    # Raise instead of printing a usage block, so that the error can be one line.
    parser_kwargs = {"exit_on_error": False}
    if not has_config:
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
        check_model_config(cli.model.hparams)
    except (ArgumentError, ValueError, MisconfigurationException) as e:
        fail(e, status=2)
    ckpt_path = cli.config.ckpt_path
    if ckpt_path == "last":
        ckpt_path = find_last_checkpoint(Path(cli.trainer.default_root_dir))
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except (CorpusError, NonFiniteLossError) as e:
        fail(e, status=1)


def check_model_config(hparams) -> None:
    """Fail on an impossible model setting now, not after the corpus is read and SentencePiece
    trained: the model (and its config) is otherwise first built when fit starts."""
    names = {f.name for f in dataclasses.fields(ModelConfig)} & hparams.keys()
    try:
        # Stand-in vocabulary sizes: the real ones come from SentencePiece.
        ModelConfig(src_vocab_size=1, tgt_vocab_size=1, **{k: hparams[k] for k in names})
    except ValueError as e:
        # ModelConfig says "model config: <field> ..."; the user's key is model.<field>.
        raise ValueError(str(e).replace("model config: ", "model.", 1)) from None


def fail(error: Exception, status: int) -> NoReturn:
    message = " ".join(str(error).split())  # jsonargparse's messages span several lines
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def find_last_checkpoint(root: Path) -> str:
    """The newest `last.ckpt` below the run folder (each run logs into a new version)."""
    candidates = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        sys.exit(f"error: --ckpt_path last: no last.ckpt below {root}")
    return str(candidates[-1])


if __name__ == "__main__":
    main()
