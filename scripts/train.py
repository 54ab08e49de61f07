"""Train a translation model: Lightning's CLI over `TranslationModule` + `TranslationDataModule`.

    python scripts/train.py                                  # configs/multi30k_de_en.yaml
    python scripts/train.py --config configs/tiny.yaml --trainer.max_steps 50
    python scripts/train.py --config configs/multi30k_de_en.yaml --ckpt_path last
    python scripts/train.py --print_config
"""

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.training import TranslationModule

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi30k_de_en.yaml"


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            default=None,
            help="resume from this checkpoint; 'last' finds the run's last.ckpt",
        )


def main(args: list[str] | None = None) -> None:
    """`args` replaces the command line (for calls from Python)."""
    given = sys.argv[1:] if args is None else args
    has_config = any(a == "--config" or a.startswith("--config=") for a in given)
    cli = TrainCLI(
        TranslationModule,
        TranslationDataModule,
        args=args,
        run=False,
        parser_kwargs={} if has_config else {"default_config_files": [str(DEFAULT_CONFIG)]},
        save_config_kwargs={"overwrite": True},
    )
    ckpt_path = cli.config.ckpt_path
    if ckpt_path == "last":
        ckpt_path = find_last_checkpoint(Path(cli.trainer.default_root_dir))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)


def find_last_checkpoint(root: Path) -> str:
    """The newest `last.ckpt` below the run folder (each run logs into a new version)."""
    candidates = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        sys.exit(f"error: --ckpt_path last: no last.ckpt below {root}")
    return str(candidates[-1])


if __name__ == "__main__":
    main()
