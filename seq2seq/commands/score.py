"""Score given translations: the model's log-probability of each reference, and perplexity.

    seq2seq-score -m runs/best.ckpt \\
        --src data/multi30k/test_2016_flickr.de.gz --ref data/multi30k/test_2016_flickr.en.gz

(`python scripts/score.py ...` is the same command.) One line a pair, in order, on stdout or
--output: score<TAB>log-probability<TAB>tokens. The score is what `translate --scores` prints
when its search finds that translation (the log-probability over the GNMT length penalty with
--length-penalty, 1.0 by default; 0 gives the log-probability itself); tokens counts the
reference's pieces, EOS included. The corpus's perplexity ends stderr. Uses: a test set's
perplexity, reranking n-best lists, filtering a parallel corpus by the model's score.
"""

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from seq2seq.arguments import OneLineErrorParser, positive_int
from seq2seq.cli import (
    FILE_CHUNK_BATCHES,
    add_model_options,
    check_output,
    check_search_flags,
    load_translator,
    reader_gone,
)
from seq2seq.data.corpus import read_test_set
from seq2seq.translator import BATCH_SIZE, MAX_SRC_LEN, Translator

PROG = "seq2seq-score"  # its console script's name, in every message
NOT_SCORED = "nan\tnan\tnan"  # the line of a pair that is not scored: numbers stay in columns


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    add_model_options(parser, "--checkpoint,-m,--model")
    parser.add_argument("--src", required=True, type=Path, help="source sentences, plain or .gz")
    parser.add_argument(
        "--ref", required=True, type=Path, help="their translations to score, plain or .gz"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write the scores here instead of stdout"
    )
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="pairs")
    parser.add_argument(
        "--max-len",
        type=positive_int,
        default=MAX_SRC_LEN,
        help="a pair with more pieces on either side is not scored (a warning, and nan)",
    )
    args = parser.parse_args(argv)
    check_search_flags(parser, length_penalty=args.length_penalty)
    check_output(parser, args.output)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.output and sys.stdout is None:  # `>&-`
        return _fail("no output: stdout is closed; give --output FILE")
    try:
        sources, references = read_test_set(args.src, args.ref)
        translator = load_translator(args)
    except ValueError as e:  # CorpusError, CheckpointError, a device, --int8
        return _fail(str(e))

    start = time.perf_counter()
    try:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as out:
                log_prob, tokens, not_scored = _score(translator, sources, references, args, out)
        else:
            log_prob, tokens, not_scored = _score(translator, sources, references, args, sys.stdout)
    except BrokenPipeError:
        return reader_gone()
    except OSError as e:  # a full disk names no file: it is the output
        return _fail(f"{e.filename or args.output or 'stdout'}: {e.strerror or e}")
    seconds = time.perf_counter() - start

    if tokens:
        print(
            f"{PROG}: {len(sources) - not_scored} pairs, {tokens} reference tokens (EOS "
            f"included): log-probability {log_prob:.2f}, perplexity "
            f"{math.exp(-log_prob / tokens):.3f}; {seconds:.1f} s",
            file=sys.stderr,
        )
    if not_scored:
        print(f"{PROG}: {not_scored} pairs not scored (--max-len {args.max_len})", file=sys.stderr)
        return 1
    return 0


def _score(
    translator: Translator,
    sources: list[str],
    references: list[str],
    args: argparse.Namespace,
    out: TextIO,
) -> tuple[float, int, int]:
    """Write a line for each pair, a chunk at a time -> the total log-probability and reference
    tokens of the pairs scored, and how many were not."""
    log_prob, tokens, not_scored = 0.0, 0, 0
    chunk = args.batch_size * FILE_CHUNK_BATCHES
    with tqdm(total=len(sources), unit="pair", file=sys.stderr, disable=None) as progress:
        for first in range(0, len(sources), chunk):
            results = translator.score(
                sources[first : first + chunk],
                references[first : first + chunk],
                length_penalty=args.length_penalty,
                batch_size=args.batch_size,
                max_len=args.max_len,
            )
            lines = []
            for lineno, result in enumerate(results, start=first + 1):
                if result is None:
                    not_scored += 1
                    tqdm.write(
                        f"{PROG}: warning: line {lineno}: longer than --max-len {args.max_len} "
                        "pieces (source or reference); not scored",
                        file=sys.stderr,
                    )
                    lines.append(NOT_SCORED)
                    continue
                count = len(result.tgt_pieces)
                lines.append(f"{result.score:.4f}\t{result.log_prob:.4f}\t{count}")
                log_prob += result.log_prob
                tokens += count
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            progress.update(len(results))
    return log_prob, tokens, not_scored


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
