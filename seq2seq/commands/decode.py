"""Translate a test set and score it with sacreBLEU (BLEU, chrF, TER, with signatures).

    python scripts/decode.py --checkpoint runs/best.ckpt \\
        --src data/multi30k/test_2016_flickr.de.gz --ref data/multi30k/test_2016_flickr.en.gz

With --json the last line of stdout is one JSON object: bleu, chrf, ter, signature, sentences,
seconds (decoding time only, model loading excluded).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from seq2seq.checkpoint import CheckpointError
from seq2seq.data.corpus import CorpusError, read_lines
from seq2seq.ensemble import COMBINE
from seq2seq.metrics import corpus_scores
from seq2seq.translator import Translator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        action="append",
        help="repeat it to decode with an ensemble of the checkpoints",
    )
    parser.add_argument("--src", required=True, type=Path, help="source sentences, plain or .gz")
    parser.add_argument("--ref", required=True, type=Path, help="references, plain or .gz")
    parser.add_argument("--beam-size", type=int, default=5, help="1 = greedy")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="GNMT alpha")
    parser.add_argument("--max-src-len", type=int, default=250, help="longer sources are cut")
    parser.add_argument(
        "--ensemble-combine",
        choices=COMBINE,
        default="log_prob",
        help="with several checkpoints: average log-probabilities (default) or probabilities",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the hypotheses here, one per line")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sources, references = read_lines(args.src), read_lines(args.ref)
        if len(sources) != len(references):
            raise CorpusError(
                f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}"
            )
        translator = Translator.from_checkpoints(
            args.checkpoint, device=args.device, combine=args.ensemble_combine
        )
    except (CheckpointError, CorpusError) as e:
        print(f"decode: error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    results = translator.translate(
        sources,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        batch_size=args.batch_size,
        max_src_len=args.max_src_len,
    )
    seconds = time.perf_counter() - start
    # A decoded newline would shift every later line of --output against the references.
    hypotheses = [" ".join(nbest[0].text.splitlines()) for nbest in results]
    truncated = sum(nbest[0].truncated for nbest in results)
    if truncated:
        print(
            f"decode: warning: {truncated} sources were cut to {args.max_src_len} pieces",
            file=sys.stderr,
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")

    scores = corpus_scores(hypotheses, references)
    for name, label in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER")):
        print(f"{label:<4} = {scores[name]:6.2f}  {scores['signature'][name]}")
    speed = len(sources) / max(seconds, 1e-9)
    print(f"{len(sources)} sentences in {seconds:.1f} s ({speed:.1f} sentences/s)")
    if args.json:
        print(json.dumps({**scores, "sentences": len(sources), "seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
