"""Average the weights of several checkpoints of one model into one checkpoint.

    python scripts/average_checkpoints.py a.ckpt b.ckpt c.ckpt --output averaged.ckpt
    python scripts/average_checkpoints.py --last 5 \\
        --dir runs/multi30k_de_en/lightning_logs/version_0/checkpoints --output averaged.ckpt

The last few checkpoints of a run sit around one optimum; their mean is usually a little better
than any of them. The checkpoints (training's or `save_model`'s) must share the model config,
both SentencePiece models and the languages; only the dropouts may differ (a resume may change
them), and the output keeps the first checkpoint's (with --last, the oldest's). Every
floating-point tensor is averaged; the output is a plain checkpoint that `translate -m` and
scripts/decode.py load.
"""

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from seq2seq.arguments import OneLineErrorParser, non_empty, positive_int
from seq2seq.checkpoint import (
    CheckpointError,
    LoadedModel,
    check_distinct,
    check_same_vocabulary,
    load_model,
    read_step,
    save_model,
)
from seq2seq.cli import check_output
from seq2seq.model import DROPOUTS

PROG = "seq2seq-average"  # its console script's name, in every message


def _check_same(first_path: Path, first: LoadedModel, path: Path, other: LoadedModel) -> None:
    """The dropouts may differ (a resume may change them; the average keeps the first
    checkpoint's), unless recurrent dropout turned an LSTM or GRU between its fused and written-out
    layouts, whose weights are named otherwise (a resume refuses that: not one run)."""
    check_same_vocabulary(first_path, first, path, other)
    mine, theirs = dataclasses.asdict(first.model.config), dataclasses.asdict(other.model.config)
    same_layout = first.model.state_dict().keys() == other.model.state_dict().keys()
    for key in mine:
        if mine[key] != theirs[key] and not (key in DROPOUTS and same_layout):
            raise CheckpointError(
                f"{path}: model config differs from that of {first_path} "
                f"({key} = {theirs[key]!r}, not {mine[key]!r})"
            )


def average(paths: Sequence[str | Path]) -> LoadedModel:
    """The first checkpoint with every floating-point tensor replaced by the mean over all (and
    the first checkpoint's config, dropouts included).

    Raises CheckpointError (one line naming the file) for a file unusable or unlike the first,
    or given twice (a shell glob that overlaps a name, say), which would weigh it double.
    """
    check_distinct(paths)
    first = load_model(paths[0])
    state = first.model.state_dict()
    # Sums in float64, in fresh tensors: a tied weight is one tensor under several keys, and
    # adding into it in place would count each checkpoint once per key.
    sums = {k: v.to(torch.float64, copy=True) for k, v in state.items() if v.is_floating_point()}
    for path in paths[1:]:
        other = load_model(path)
        _check_same(paths[0], first, path, other)
        weights = other.model.state_dict()
        for key, total in sums.items():
            total += weights[key]
        del other, weights  # freed before the next one loads: large models, little RAM
    # Each key of a tied weight gets the same mean, so loading them in turn leaves it tied.
    first.model.load_state_dict(
        {key: (total / len(paths)).to(state[key].dtype) for key, total in sums.items()},
        strict=False,  # non-floating tensors keep the first checkpoint's values
    )
    return first


def newest(directory: Path, count: int) -> list[Path]:
    """The `count` checkpoints in `directory` with the highest training steps, oldest first.

    One file per step: last.ckpt usually repeats the step of a best-*.ckpt. Files without a
    step (written by save_model, e.g. an earlier average) are skipped.
    """
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such folder")
    by_step: dict[int, Path] = {}
    for path in sorted(directory.glob("*.ckpt")):
        step = read_step(path)
        if step is None:
            print(f"{PROG}: skipping {path}: no training step", file=sys.stderr)
        else:
            by_step.setdefault(step, path)
    if len(by_step) < count:
        raise CheckpointError(
            f"{directory}: {len(by_step)} checkpoints of distinct training steps, not {count}"
        )
    return [by_step[step] for step in sorted(by_step)[-count:]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", nargs="*", type=non_empty, metavar="CKPT")
    parser.add_argument(
        "--last", type=positive_int, metavar="N", help="the N newest checkpoints in --dir"
    )
    parser.add_argument("--dir", type=Path, help="checkpoint folder for --last")
    parser.add_argument("--output", required=True, type=Path, metavar="OUT.ckpt")
    args = parser.parse_args(argv)
    if bool(args.checkpoints) == (args.last is not None):
        parser.error("give either checkpoint files or --last N --dir DIR")
    if (args.last is None) != (args.dir is None):
        parser.error("--last and --dir go together")
    check_output(parser, args.output)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = args.checkpoints or newest(args.dir, args.last)
        averaged = average(paths)
        save_model(
            args.output,
            averaged.model,
            averaged.src_tokenizer,
            averaged.tgt_tokenizer,
            averaged.src_lang,
            averaged.tgt_lang,
        )
    except (CheckpointError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints into {args.output}: {' '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
