"""Translate a test set and score it with sacreBLEU (BLEU, chrF, TER, with signatures).

    seq2seq-decode --checkpoint runs/best.ckpt \\
        --src data/multi30k/test_2016_flickr.de.gz --ref data/multi30k/test_2016_flickr.en.gz

(`python scripts/decode.py ...` is the same command.) Lines end as in `translate`, so both give
one output line for each of the same input lines.

With --json the last line of stdout is one JSON object: bleu, chrf, ter, signature, sentences,
seconds (decoding time only: model loading, and with --workers the processes' start, excluded),
and with --prefix-words, prefix_words, prefix_chars and next_word.

--prefix-words K measures interactive translation, as fairseq-generate's --prefix-size does:
each translation must begin with the first K words of its reference, the search completes it,
and next_word is the share of sentences whose next word is the reference's (the end of the
sentence counts as a word; K = 0: the first word, without a prefix). With --prefix-chars C the
prefix also holds the first C characters of that next word, as if the translator had begun to
type it, and next_word says how often the search completes it to the reference's word. BLEU
then scores whole outputs, the given words included.
"""

import argparse
import json
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from seq2seq.arguments import OneLineErrorParser, non_negative_int
from seq2seq.cli import (
    add_decoding_options,
    check_decoding_flags,
    open_translator,
    output_text,
    read_prefixes,
    reader_gone,
    search_options,
    worker_stopped,
)
from seq2seq.data.corpus import read_test_set
from seq2seq.metrics import corpus_scores
from seq2seq.translator import PrefixError

PROG = "seq2seq-decode"  # its console script's name, in every message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    add_decoding_options(parser, "--checkpoint,-m,--model")
    parser.add_argument("--src", required=True, type=Path, help="source sentences, plain or .gz")
    parser.add_argument("--ref", required=True, type=Path, help="references, plain or .gz")
    parser.add_argument("--output", type=Path, help="write the hypotheses here, one per line")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument(
        "--prefix",
        type=Path,
        metavar="FILE",
        help="one line per source line: text its translation must begin with, which the "
        "search completes (an empty line: none), as translate --prefix",
    )
    parser.add_argument(
        "--prefix-words",
        type=non_negative_int,
        metavar="K",
        help="begin each translation with the first K words of its reference and report how "
        "often the next word is the reference's (interactive translation; 0: no prefix, the "
        "first word)",
    )
    parser.add_argument(
        "--prefix-chars",
        type=non_negative_int,
        default=0,
        metavar="C",
        help="with --prefix-words: the prefix also holds the first C characters of the next "
        "word, which the search completes (default: 0)",
    )
    args = parser.parse_args(argv)
    check_decoding_flags(parser, args)
    if args.prefix_chars and args.prefix_words is None:
        parser.error("--prefix-chars: applies with --prefix-words only")
    if args.prefix and args.prefix_words is not None:
        parser.error("--prefix: the prefixes come from a file or from the references, not both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.stdout is None:  # `>&-`: the scores would go nowhere
        return _fail("no output: stdout is closed; the scores are printed there")
    try:
        sources, references = read_test_set(args.src, args.ref)
        if args.prefix:
            given = read_prefixes(args.prefix, len(sources))
        else:
            given = prefixes(references, args.prefix_words, args.prefix_chars)
        if args.output:  # now, not after the decoding
            args.output.parent.mkdir(parents=True, exist_ok=True)
        opened = open_translator(args)
    except ValueError as e:  # CorpusError, CheckpointError, a device, --int8
        return _fail(str(e))
    except BrokenProcessPool as e:
        return _fail(worker_stopped(e))
    except OSError as e:
        return _fail(f"--output {args.output}: cannot make its folder ({e.strerror})")

    with opened as translator:
        start = time.perf_counter()
        try:
            results = translator.translate(sources, **search_options(args), prefixes=given)
        except PrefixError as e:  # longer than --max-src-len pieces
            where = f"--prefix {args.prefix}" if args.prefix else f"--prefix-words: {args.ref}"
            return _fail(f"{where}: line {e.index + 1}: {e.problem}")
        except BrokenProcessPool as e:
            return _fail(worker_stopped(e))
        seconds = time.perf_counter() - start
    hypotheses = [output_text(nbest[0]) for nbest in results]
    truncated = sum(nbest[0].truncated for nbest in results)
    if truncated:
        print(
            f"{PROG}: warning: {truncated} sources were cut to {args.max_src_len} pieces",
            file=sys.stderr,
        )
    write_error = None
    if args.output:
        try:
            args.output.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        except OSError as e:  # the scores below are still worth printing
            write_error = f"--output {args.output}: {e.strerror or e}"

    try:
        _report(args, sources, hypotheses, references, seconds)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return reader_gone()
    except OSError as e:  # a full disk behind `> file`
        return _fail(f"stdout: {e.strerror or e}")
    return _fail(write_error) if write_error else 0


def _report(args, sources: list[str], hypotheses: list[str], references: list[str],
            seconds: float) -> None:
    """The scores, the speed and, with --prefix-words, the next-word share, on stdout."""
    scores = corpus_scores(hypotheses, references)
    labels = (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"), ("bleu_lc", "BLEU lowercased"))
    for name, label in labels:
        print(f"{label:<4} = {scores[name]:6.2f}  {scores['signature'][name]}")
    speed = len(sources) / max(seconds, 1e-9)
    print(f"{len(sources)} sentences in {seconds:.1f} s ({speed:.1f} sentences/s)")
    prefixed = {}
    if args.prefix_words is not None:
        k = args.prefix_words
        share = next_word(hypotheses, references, k)
        typed = f" and {args.prefix_chars} characters" if args.prefix_chars else ""
        print(f"next word after {k} reference words{typed}: the reference's in {100 * share:.1f}%")
        prefixed = {"prefix_words": k, "prefix_chars": args.prefix_chars}
        prefixed["next_word"] = round(share, 4)
    if args.json:
        timing = {"sentences": len(sources), "seconds": round(seconds, 3)}
        print(json.dumps({**scores, **timing, **prefixed}))
    sys.stdout.flush()  # here, where a failed write is caught, not at exit


def prefixes(references: list[str], words: int | None, chars: int = 0) -> list[str] | None:
    """Each reference's first `words` whitespace-separated words, ended by a space (so that the
    search completes them as they are), and the first `chars` characters of the word after them
    (which it completes); None for no prefix at all."""
    if not words and not chars:
        return None
    found = []
    for reference in references:
        split = reference.split()
        given, rest = split[:words], split[words:]
        if rest and chars:
            found.append(" ".join([*given, rest[0][:chars]]))
        else:
            found.append(" ".join(given) + (" " if rest and given else ""))
    return found


def next_word(hypotheses: list[str], references: list[str], words: int) -> float:
    """The share of hypotheses whose word after the first `words` is the reference's (both
    ending there counts as the same word)."""
    same = sum(
        h.split()[words : words + 1] == r.split()[words : words + 1]
        for h, r in zip(hypotheses, references, strict=True)
    )
    return same / max(len(references), 1)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
