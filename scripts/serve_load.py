"""Load benchmark of `translate serve`: N concurrent clients on loopback, one sentence per
request, with dynamic batching on and off in the same sitting, against `translate -i file` on
the same sentences.

    python scripts/serve_load.py -m MODEL                 # 32 clients, 20 s per service mode
    python scripts/serve_load.py -m MODEL --clients 8 --duration 5 --sentences 200   # a smoke run
    python scripts/serve_load.py --url http://127.0.0.1:8080   # a running service, as it is

It starts the service itself (`translate serve`, on a free 127.0.0.1 port) for each mode:
batching on (the defaults) and off (`--max-batch-tokens 1 --max-wait-ms 0`: one sentence per
decode). Each client sends a sentence, waits for the answer, sends the next; the clients take
the sentences in turn from the first --sentences of the file, cycling, until --duration
seconds or --max-requests requests. `translate -i` then translates those sentences once, its
time measured as the run minus the same command on an empty file (start-up and model
loading). Prints a table, then one JSON line. Compare only figures of one sitting.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

import httpx
import torch

from seq2seq.commands.benchmark import cpu_info
from seq2seq.data.corpus import read_lines
from seq2seq.serve.load import latency_percentiles, run_clients
from seq2seq.serve.process import ServerProcess
from seq2seq.translator import BEAM_SIZE

TEST2016_DE = Path(__file__).resolve().parent.parent / "data/multi30k/test_2016_flickr.de.gz"
BATCHING_OFF = ["--max-batch-tokens", "1", "--max-wait-ms", "0"]
WARM_UP_REQUESTS = 8  # per client: the first decodes of a process are slower (allocations)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", "--model", action="append", help="what `translate -m` takes")
    target.add_argument("--url", help="a running service (measured as it is, nothing else)")
    parser.add_argument("--input", type=Path, default=TEST2016_DE, help="sentences (plain/.gz)")
    parser.add_argument("--sentences", type=int, default=1000, help="the first N of --input")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20, help="seconds per service mode")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per service mode")
    parser.add_argument("--beam-size", type=int, default=BEAM_SIZE)
    parser.add_argument("--threads", type=int, help="torch threads of server and translate")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    return parser.parse_args(argv)


def measure_service(url: str, sentences: list[str], args: argparse.Namespace) -> dict:
    bodies = [
        json.dumps({"text": [s], "beam_size": args.beam_size}).encode() for s in sentences
    ]

    def sender(limit: int):
        numbers = count()

        def next_body(client: int) -> bytes | None:
            n = next(numbers)  # one counter for all clients: asyncio runs them in one thread
            return bodies[n % len(bodies)] if n < limit else None

        return next_body

    endpoint = f"{url}/v1/translate"
    run_clients(endpoint, args.clients, sender(args.clients * WARM_UP_REQUESTS), args.duration)
    outcomes, seconds = run_clients(
        endpoint, args.clients, sender(args.max_requests), args.duration
    )
    failed = [o for o in outcomes if o.status != 200]
    if failed:
        print(f"warning: {len(failed)} requests failed, e.g. {failed[0].answer}", file=sys.stderr)
    ok = len(outcomes) - len(failed)
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "seconds": round(seconds, 2),
        "requests_per_s": round(ok / seconds, 2),
        "sentences_per_s": round(ok / seconds, 2),  # one sentence per request
        **{k: round(v, 1) for k, v in latency_percentiles(outcomes).items()},
    }


def measure_translate(sentences: list[str], args: argparse.Namespace, env: dict) -> dict:
    models = [x for m in args.model for x in ("-m", m)]
    command = [sys.executable, "-m", "seq2seq.cli", *models, "--beam-size", str(args.beam_size)]
    with tempfile.TemporaryDirectory() as tmp:
        full, empty = Path(tmp, "in.txt"), Path(tmp, "empty.txt")
        full.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        empty.write_text("", encoding="utf-8")
        times = {}
        for name, path in (("empty", empty), ("full", full)):
            start = time.monotonic()
            subprocess.run(
                [*command, "-i", str(path), "-o", os.devnull], check=True, env=env,
                stderr=subprocess.DEVNULL,
            )
            times[name] = time.monotonic() - start
    seconds = times["full"] - times["empty"]
    return {
        "sentences": len(sentences),
        "seconds": round(seconds, 2),
        "startup_seconds": round(times["empty"], 2),
        "sentences_per_s": round(len(sentences) / seconds, 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sentences = [s for s in read_lines(args.input)[: args.sentences] if s.strip()]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    report = {
        "cpu": cpu_info()["cpu"],  # the model name: "x86_64" says nothing
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "clients": args.clients,
        "beam_size": args.beam_size,
        "sentences": len(sentences),
    }
    if args.url:
        report["service"] = measure_service(args.url, sentences, args)
    else:
        common = ["--log-level", "warning"]
        if args.threads:
            common += ["--threads", str(args.threads)]
        for mode, extra in (("batching_on", []), ("batching_off", BATCHING_OFF)):
            command = [x for m in args.model for x in ("-m", m)] + common + extra
            with ServerProcess(command, env=env) as server:
                report[mode] = measure_service(server.url, sentences, args)
                health = httpx.get(f"{server.url}/health").json()  # warm-up included
                report[mode]["mean_requests_per_batch"] = round(
                    health["requests_decoded"] / max(health["batches"], 1), 2
                )
        report["translate_file"] = measure_translate(sentences, args, env)
        on, off = report["batching_on"], report["batching_off"]
        file_rate = report["translate_file"]["sentences_per_s"]
        report["on_over_off"] = round(on["sentences_per_s"] / off["sentences_per_s"], 2)
        report["on_over_translate_file"] = round(on["sentences_per_s"] / file_rate, 2)
    if not args.json:
        print_table(report)
    print(json.dumps(report))
    return 0


def print_table(report: dict) -> None:
    print(f"{report['clients']} clients, one sentence per request, beam {report['beam_size']}, "
          f"{report['sentences']} sentences; {report['cpus']} CPUs ({report['cpu']}), "
          f"torch {report['torch']}")
    print(f"{'':22}{'req/s':>9}{'sent/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'req/batch':>11}{'failed':>8}")
    for mode in ("service", "batching_on", "batching_off"):
        if mode in report:
            r = report[mode]
            print(f"{mode:22}{r['requests_per_s']:>9.1f}{r['sentences_per_s']:>9.1f}"
                  f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{r.get('mean_requests_per_batch', float('nan')):>11.2f}{r['failed']:>8}")
    if "translate_file" in report:
        t = report["translate_file"]
        print(f"{'translate -i file':22}{'':>9}{t['sentences_per_s']:>9.1f}"
              f"   ({t['seconds']} s for {t['sentences']} sentences, start-up "
              f"{t['startup_seconds']} s excluded)")
        print(f"batching on / off: {report['on_over_off']}x (goal >= 3); "
              f"on / translate -i file: {report['on_over_translate_file']}x (goal >= 0.8)")


if __name__ == "__main__":
    sys.exit(main())
