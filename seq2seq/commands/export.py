"""Checkpoint(s) -> a model folder in the Hugging Face layout, to share or to push to the hub.

    python scripts/export.py runs/.../checkpoints/best-step1500.ckpt --output models/de-en
    python scripts/export.py a.ckpt b.ckpt c.ckpt --output models/de-en   # weights averaged
    python scripts/export.py CKPT --output DIR \\
        --eval-src data/multi30k/test_2016_flickr.de.gz \\
        --eval-ref data/multi30k/test_2016_flickr.en.gz   # test scores into the model card
    python scripts/export.py CKPT --output DIR --push-to-hub ORG/NAME   # needs the network

The folder holds config.json, model.safetensors, the SentencePiece model(s) and README.md (the
model card); see seq2seq/pretrained.py. `translate -m DIR` and `Translator.from_pretrained(DIR)`
load it; so do they the hub id once it is pushed.
"""

import argparse
import math
import sys
from pathlib import Path

import yaml

from seq2seq import model_card
from seq2seq.arguments import OneLineErrorParser, non_empty, non_empty_path, one_line
from seq2seq.checkpoint import CheckpointError, load_model, read_checkpoint
from seq2seq.cli import check_search_flags, output_text
from seq2seq.commands.average import average
from seq2seq.data.corpus import CorpusError, read_test_set
from seq2seq.errors import first_line
from seq2seq.metrics import corpus_scores
from seq2seq.pretrained import (
    CARD_FILE,
    check_repo_id,
    is_pretrained,
    push_to_hub,
    read_training_config,
    save_pretrained,
)
from seq2seq.translator import BEAM_SIZE, Translator

RUN_CONFIG = "config.yaml"  # what Lightning's CLI writes into a run folder

PROG = "seq2seq-export"  # its console script's name, in every message


def training_config(path: str | Path) -> dict | None:
    """The configuration a training checkpoint came from: the run's config.yaml beside its
    checkpoints/ folder (everything: trainer, model, data), else what the checkpoint itself
    keeps (model and data arguments); None for a file written by checkpoint.save_model. A
    model folder or hub id passes on what its config.json keeps."""
    if is_pretrained(path):
        return read_training_config(path)
    path = Path(path)
    run_config = path.parent.parent / RUN_CONFIG
    if path.parent.name == "checkpoints" and run_config.is_file():
        try:
            config = _strict_json(yaml.safe_load(run_config.read_text(encoding="utf-8")))
        except yaml.MarkedYAMLError as e:  # its str() spans lines: the problem, and its line
            line = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
            raise CheckpointError(f"{run_config}{line}: not valid YAML ({e.problem})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{run_config}: not valid YAML ({first_line(e)})") from None
        except RecursionError:  # both recurse once per level; a YAML alias may hold itself
            message = f"{run_config}: nested too deeply, or a value holds itself"
            raise CheckpointError(message) from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{run_config}: not a YAML mapping of options")
        return config
    checkpoint = read_checkpoint(path, "cpu", mmap=True)
    model, data = checkpoint.get("hyper_parameters"), checkpoint.get("datamodule_hyper_parameters")
    if model is None and data is None:
        return None
    hidden = ("_instantiator",)  # Lightning's bookkeeping, not an option
    config = {
        part: {k: v for k, v in dict(values).items() if k not in hidden}
        for part, values in (("model", model), ("data", data))
        if values is not None
    }
    if "init_from" in checkpoint:  # a fine-tuned run's base model, as its config.yaml has it
        config["init_from"] = checkpoint["init_from"]
    return config


def _strict_json(value):
    """A YAML value as config.json (strict JSON) can hold it: keys become strings, and what JSON
    has no type for (a date, bytes, NaN or an infinity) becomes its text."""
    if isinstance(value, dict):
        return {str(key): _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    return str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoints", nargs="+", type=non_empty, metavar="CKPT",
        help="checkpoint(s) of one run; several are averaged (as average_checkpoints.py does)",
    )
    parser.add_argument("--output", required=True, type=non_empty_path, metavar="DIR")
    parser.add_argument("--eval-src", type=Path, help="test sources (plain or .gz) to score")
    parser.add_argument("--eval-ref", type=Path, help="their references")
    parser.add_argument(
        "--eval-name", type=one_line,
        help="the test set's name in the card (default: --eval-src's file name)",
    )
    parser.add_argument("--beam-size", type=int, default=BEAM_SIZE, help="for --eval-src")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="for --eval-src")
    parser.add_argument(
        "--push-to-hub", metavar="ORG/NAME", help="then upload the folder to this hub repo"
    )
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():  # before any model is read
        parser.error(f"--output {args.output}: a file, not a folder")
    if (args.eval_src is None) != (args.eval_ref is None):
        parser.error("--eval-src and --eval-ref go together")
    if args.eval_name is not None and args.eval_src is None:
        parser.error("--eval-name names the test set of --eval-src, which is missing")
    check_search_flags(parser, beam_size=args.beam_size, length_penalty=args.length_penalty)
    if args.push_to_hub:
        try:
            check_repo_id(args.push_to_hub)
        except ValueError as e:
            parser.error(f"--push-to-hub: {e}")
    return args


def _evaluate(
    args: argparse.Namespace, sources: list[str], references: list[str]
) -> tuple[dict, str, str]:
    """Scores of the folder just written (so the card tells what users will get)."""
    translator = Translator.from_pretrained(args.output)
    results = translator.translate(
        sources, beam_size=args.beam_size, length_penalty=args.length_penalty
    )
    hypotheses = [output_text(nbest[0]) for nbest in results]
    scores = {**corpus_scores(hypotheses, references), "sentences": len(sources)}
    search = "greedy search" if args.beam_size == 1 else f"beam search, beam {args.beam_size}"
    name = args.eval_name or Path(args.eval_src.name.removesuffix(".gz")).stem
    return scores, name, f"{search}, length penalty {args.length_penalty:g}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = args.checkpoints
    try:
        # Read first: a bad test set must fail before a half-made folder (no card) is written.
        test_set = read_test_set(args.eval_src, args.eval_ref) if args.eval_src else None
        loaded = load_model(paths[0]) if len(paths) == 1 else average(paths)
        trained_with = training_config(paths[0])  # before --output, which may be paths[0]
        config = save_pretrained(args.output, loaded, trained_with)
        scores, test_name, decoding = _evaluate(args, *test_set) if test_set else (None, "", "")
        parameters = sum(p.numel() for p in loaded.model.parameters())
        card = model_card.render(
            config, parameters, [Path(p).name for p in paths], scores, test_name, decoding
        )
        (args.output / CARD_FILE).write_text(card, encoding="utf-8")
        print(f"exported {' '.join(map(str, paths))} to {args.output}")
        if scores is not None:
            print(f"{test_name}: BLEU {scores['bleu']:.2f} ({scores['signature']['bleu']})")
        if args.push_to_hub:
            url = push_to_hub(args.output, args.push_to_hub)
            print(f"pushed {args.output} to {url}")
    except (CheckpointError, CorpusError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
