"""translate serve: the model(s) behind an HTTP service, and a web page to try them.

    translate serve -m model.ckpt                       # http://127.0.0.1:8080/
    curl -s localhost:8080/v1/translate -H 'content-type: application/json' \\
        -d '{"text": ["Ein Mann fährt Fahrrad."]}'
    curl -s localhost:8080/v1/score -H 'content-type: application/json' \\
        -d '{"source": ["Ein Mann fährt Fahrrad."], "target": ["A man rides a bike."]}'

The models are chosen here, at start-up; no request names a file. SIGTERM (or Ctrl-C) stops
accepting connections, answers what is in flight, and exits with status 0.
"""

import argparse
import contextlib
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import uvicorn

from seq2seq.arguments import (
    OneLineErrorParser,
    non_empty,
    non_negative_float,
    one_line,
    positive_int,
)
from seq2seq.cli import add_precision_options, load_translator
from seq2seq.ensemble import COMBINE, Ensemble
from seq2seq.pretrained import CARD_FILE, is_hub_id
from seq2seq.serve.app import create_app
from seq2seq.serve.batcher import (
    MAX_BATCH_TOKENS,
    MAX_QUEUE,
    MAX_WAIT_MS,
    MOST_WAIT_MS,
    DynamicBatcher,
)
from seq2seq.serve.schema import Limits
from seq2seq.translator import Translator

PROG = "translate serve"
BACKLOG = 2048  # connections waiting to be accepted: uvicorn's own default


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {number}")
    return number


def _wait_ms(value: str) -> float:
    number = non_negative_float(value)
    if number > MOST_WAIT_MS:
        raise argparse.ArgumentTypeError(f"must be at most {MOST_WAIT_MS:g}, got {value}")
    return number


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket. Made before the model loads, so that a port in use or a
    host this machine does not have is one error line at once, not after the loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as e:
        # create_server appends the address to the reason, which the message names already.
        reason = str(e.strerror or e).partition(" (while attempting to bind")[0]
        raise ValueError(f"cannot listen on {host}:{port} ({reason})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-m", "--model", action="append", type=non_empty, required=True, metavar="MODEL",
        help="what `translate -m` takes; repeat it to serve an ensemble",
    )
    parser.add_argument("--ensemble-combine", choices=COMBINE, default="log_prob")
    parser.add_argument(  # "" would listen on every interface: say 0.0.0.0 to mean that
        "--host", type=one_line, default="127.0.0.1", help="0.0.0.0 listens on every interface"
    )
    parser.add_argument("--port", type=_port, default=8080, help="0: any free port")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    add_precision_options(parser)
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info",
        help="info logs every request; warning only problems",
    )
    batching = parser.add_argument_group("dynamic batching")
    batching.add_argument(
        "--max-batch-tokens", type=positive_int, default=MAX_BATCH_TOKENS,
        help="source pieces times beam size decoded together at most (1: a sentence at a time)",
    )
    batching.add_argument(
        "--max-wait-ms", type=_wait_ms, default=MAX_WAIT_MS,
        help="how long the oldest request waits for others to join its batch",
    )
    batching.add_argument(
        "--max-queue", type=positive_int, default=MAX_QUEUE,
        help="requests waiting at most; more are answered 503 with Retry-After",
    )
    limits = parser.add_argument_group("request limits (a request over one gets a 4xx answer)")
    for name in Limits.__dataclass_fields__:
        default = getattr(Limits(), name)
        limits.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int, default=default,
            help=f"default {default}",
        )
    return parser


def card_scores(name: str) -> list[dict]:
    """The test scores in the model card of a model folder or a cached hub model; [] for a
    checkpoint or a card without them. Read from disk only: the service starts offline."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    if Path(name).is_dir():
        card = Path(name) / CARD_FILE
    elif is_hub_id(name):
        card = try_to_load_from_cache(name, CARD_FILE)
    else:
        return []
    if not isinstance(card, (str, Path)) or not Path(card).is_file():
        return []
    results = ModelCard.load(card).data.eval_results or []
    return [
        {"dataset": r.dataset_name, "metric": r.metric_type, "value": r.metric_value,
         "signature": r.metric_config}
        for r in results
    ]


def describe_models(translator: Translator, names: list[str]) -> dict:
    """What GET /v1/models answers."""
    model = translator.model
    members = list(model.models) if isinstance(model, Ensemble) else [model]
    return {
        "source_language": translator.src_lang,
        "target_language": translator.tgt_lang,
        "vocabulary_size": {
            "source": translator.src_tokenizer.vocab_size,
            "target": translator.tgt_tokenizer.vocab_size,
        },
        "ensemble": model.combine if isinstance(model, Ensemble) else None,
        "models": [
            {
                "name": name,
                "parameters": sum(p.numel() for p in member.parameters()),
                "config": asdict(member.config),
                "scores": card_scores(name),
            }
            for name, member in zip(names, members, strict=True)
        ],
    }


def _exit_zero(signum, frame):
    # uvicorn shuts down gracefully on SIGTERM or SIGINT, then raises the signal again for the
    # handler that was there before it: this one, so that a requested stop ends with status 0.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        try:  # the port first: taken or not, that is known before the model loads
            sock = stack.enter_context(listen(args.host, args.port))
            translator = load_translator(args)
        except ValueError as e:  # a port, a host, a model (CheckpointError), a device
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        serve(translator, args, sock)
    return 0


def serve(translator: Translator, args: argparse.Namespace, sock: socket.socket) -> None:
    """Answer requests on `sock` until SIGTERM or SIGINT."""
    batcher = DynamicBatcher(translator, args.max_batch_tokens, args.max_wait_ms, args.max_queue)
    limits = Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__})
    app = create_app(batcher, describe_models(translator, args.model), limits)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _exit_zero)
    # uvicorn announces only addresses it bound itself; with --port 0 the port is known only
    # now. Printed at every --log-level: without it a client could not find the service.
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"{PROG}: listening on {url} (Ctrl+C stops)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
