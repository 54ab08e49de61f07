"""translate: one output line per input line, in order, always.

    translate -m model.ckpt < input.de > output.en
    translate -m model.ckpt -i test.de.gz -o test.en --beam-size 5
    translate -m model.ckpt            # type a sentence, get its translation
    translate -m a.ckpt -m b.ckpt < input.de > output.en   # an ensemble of two models
    translate -m models/de-en < input.de    # a model folder (scripts/export.py)
    translate -m ORG/NAME < input.de        # a hub repo, downloaded once into the HF cache

From a pipe or a terminal, lines are translated as they arrive (whatever a read returns is one
group), so the command works interactively and inside other programs' pipelines. A file (-i, or
stdin redirected from a file) is read whole and batched by length, with a progress bar; with
--workers N, N processes share it.

A line's problems (invalid UTF-8, too long, an exception while translating it) are warnings on
stderr naming the line; its output line is still written, empty if nothing better exists.
"""

import argparse
import codecs
import functools
import os
import stat
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import BinaryIO, NoReturn

import torch
from tqdm import tqdm

from seq2seq.allocator import keep_freed_memory
from seq2seq.arguments import OneLineErrorParser, non_empty, positive_int
from seq2seq.atomic import written_whole
from seq2seq.checkpoint import CheckpointError
from seq2seq.data.corpus import LINE_END, CorpusError, read_bytes, split_lines
from seq2seq.ensemble import COMBINE
from seq2seq.errors import first_line
from seq2seq.quantize import quantize_int8
from seq2seq.search import (
    MAX_LEN_A,
    MAX_LEN_B,
    SAMPLING_DEFAULTS,
    SAMPLING_TOPK,
    SEED,
    TEMPERATURE,
    SearchOptionError,
    check_applicable,
    check_search_options,
)
from seq2seq.translator import (
    BATCH_SIZE,
    BEAM_SIZE,
    MAX_SRC_LEN,
    PrefixError,
    TranslationResult,
    Translator,
    empty_result,
)
from seq2seq.workers import AUTO, TranslatorPool, plan

READ_SIZE = 1 << 16  # bytes per read from a pipe; a terminal returns one line per read
FILE_CHUNK_BATCHES = 16  # batches per chunk of a file: length-sorting needs many sentences
# The options of `add_decoding_options` that search.check_search_options rules on.
SEARCH_FLAGS = (
    "beam_size", "length_penalty", "max_len_a", "max_len_b",
    "sampling", "sampling_topk", "temperature", "seed",
)


def _workers(value: str) -> int | str:
    if value == AUTO:
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or {AUTO!r}, got {value!r}"
        ) from None


def add_model_options(parser: argparse.ArgumentParser, model_option: str) -> None:
    """The options that say which model runs how (`load_translator` reads them): the models,
    how an ensemble combines, the device and the precision; and the length penalty, which
    every score the model gives depends on."""
    parser.add_argument(
        *model_option.split(","),
        dest="model",
        action="append",
        type=non_empty,
        required=True,
        metavar="MODEL",
        help="checkpoint, model folder (scripts/export.py) or hub id (ORG/NAME); repeat it to "
        "decode with an ensemble (the models must share their SentencePiece models)",
    )
    parser.add_argument(
        "--ensemble-combine",
        choices=COMBINE,
        default=COMBINE[0],
        help="with several models: average log-probabilities (default) or probabilities",
    )
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    add_precision_options(parser)
    parser.add_argument("--length-penalty", type=float, default=1.0, help="GNMT alpha")


def add_decoding_options(parser: argparse.ArgumentParser, model_option: str) -> None:
    """The options every decoding command shares (`translate`, `seq2seq-decode`), with the
    defaults of `Translator.translate`."""
    add_model_options(parser, model_option)
    parser.add_argument(
        "--beam-size", type=positive_int, help=f"1 = greedy (default: {BEAM_SIZE})"
    )
    parser.add_argument(
        "--sampling",
        action="store_true",
        help="draw a translation from the model's distribution instead of searching (e.g. for "
        "back-translation); the same --seed gives the same samples",
    )
    parser.add_argument(
        "--sampling-topk",
        type=int,
        metavar="K",
        help=f"with --sampling: draw from the K most probable tokens (default: {SAMPLING_TOPK}, "
        "all)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help="with --sampling: p ** (1 / T); below 1 sharper, above 1 flatter (default: "
        f"{TEMPERATURE})",
    )
    parser.add_argument("--seed", type=int, help=f"with --sampling (default: {SEED})")
    parser.add_argument(
        "--max-len-a", type=float, default=MAX_LEN_A, help="max output: a*src_len+b"
    )
    parser.add_argument("--max-len-b", type=float, default=MAX_LEN_B, help="see --max-len-a")
    parser.add_argument(
        "--max-src-len",
        type=positive_int,
        default=MAX_SRC_LEN,
        help="longer inputs are cut to this many pieces (with a warning)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="sentences")
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="translate a whole file (not a pipe) on N processes, the cores' threads shared "
        f"among them; {AUTO!r}: one process per core",
    )


def check_search_flags(parser: argparse.ArgumentParser, **options) -> None:
    """`search.check_search_options` on parsed flags: a value out of range is a usage error
    that names its flag, before any model is loaded."""
    try:
        check_search_options(**options)
    except SearchOptionError as e:
        _flag_error(parser, e)


def _flag_error(parser: argparse.ArgumentParser, e: SearchOptionError) -> NoReturn:
    parser.error(f"argument --{e.option.replace('_', '-')}: {e.problem}")


def check_decoding_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`check_search_flags` for what `add_decoding_options` parsed (and --nbest, if any), and
    an --output that is a folder: found now, not after the whole input is translated."""
    # The options whose default is None: given, or left to the mode's default.
    defaults = {"beam_size": BEAM_SIZE, **SAMPLING_DEFAULTS}
    given = [name for name in defaults if getattr(args, name) is not None]
    try:
        check_applicable(args.sampling, given, switch="--sampling")
    except SearchOptionError as e:
        _flag_error(parser, e)
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    options = {name: getattr(args, name) for name in SEARCH_FLAGS}
    check_search_flags(parser, nbest=getattr(args, "nbest", 1), **options)
    check_output(parser, args.output)


def check_output(parser: argparse.ArgumentParser, output: Path | None) -> None:
    """An --output that is a folder is a usage error: found now, not after the whole input is
    done."""
    if output is not None and output.is_dir():
        parser.error(f"--output {output}: a folder, not a file")


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    """--int8 or --bf16: what every command that decodes (translate, decode, serve, benchmark)
    offers besides float32."""
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--int8",
        action="store_true",
        help="int8 weights for the linear layers, on the CPU (needs torchao)",
    )
    precision.add_argument(
        "--bf16",
        action="store_true",
        help="weights and matrix products in bfloat16: fast on GPUs and on CPUs with amx_bf16 "
        "or avx512_bf16 in lscpu, slow on others",
    )


def check_precision(args: argparse.Namespace, device: str) -> None:
    """Raises ValueError (one line) for --int8 off the CPU: before a model is loaded."""
    if args.int8 and device != "cpu":
        raise ValueError(f"--int8 runs on the CPU only, not --device {device}")


def set_precision(translator: Translator, args: argparse.Namespace) -> Translator:
    """`translator` decoding as --int8 or --bf16 say. Raises ValueError (one line) without
    torchao, or for --bf16 on a GPU without bfloat16."""
    if args.int8:
        try:
            translator.model = quantize_int8(translator.model)
        except ImportError as e:
            raise ValueError(str(e)) from None
    if args.bf16:
        device = translator.device
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"--bf16: {torch.cuda.get_device_name(device)} has no bfloat16")
        translator.use_bfloat16()
    return translator


def search_options(args: argparse.Namespace) -> dict:
    """The `Translator.translate` arguments that `add_decoding_options` parsed."""
    return {name: getattr(args, name) for name in (*SEARCH_FLAGS, "batch_size", "max_src_len")}


def load_translator(args: argparse.Namespace) -> Translator:
    """The parsed models on the parsed device, int8 or bf16 if asked. Raises CheckpointError,
    or ValueError naming the device, --int8 or --bf16: one line either way. Every command
    that decodes loads its models here, in each --workers process too: the process keeps the
    memory it frees (`seq2seq.allocator`)."""
    check_precision(args, args.device)
    keep_freed_memory()
    try:
        translator = Translator.from_checkpoints(
            args.model, device=args.device, combine=args.ensemble_combine
        )
    except CheckpointError:
        raise
    except (RuntimeError, AssertionError, ValueError) as e:  # what torch raises for devices
        raise ValueError(f"cannot use device {args.device!r}: {first_line(e)}") from None
    return set_precision(translator, args)


def open_translator(
    args: argparse.Namespace, whole_file: bool = True
) -> AbstractContextManager[Translator | TranslatorPool]:
    """`load_translator` as a context manager; for a whole file with --workers N > 1, a pool of
    N processes that each load it. Raises as `load_translator`."""
    processes, threads = plan(args.workers)
    if processes > 1 and whole_file:
        return TranslatorPool(functools.partial(load_translator, args), processes, threads)
    return nullcontext(load_translator(args))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="translate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_decoding_options(parser, "-m,--model")
    parser.add_argument("-i", "--input", type=Path, help="input file (plain or .gz); default stdin")
    parser.add_argument("-o", "--output", type=Path, help="output file; default stdout")
    parser.add_argument("--nbest", type=positive_int, default=1, help="lines per input line")
    parser.add_argument(
        "--nbest-format",
        choices=("plain", "tsv"),
        default="plain",
        help="tsv: input_index<TAB>score<TAB>text, index counted from 0",
    )
    parser.add_argument("--scores", action="store_true", help="prefix each line with score<TAB>")
    parser.add_argument(
        "--plot-attention",
        type=Path,
        metavar="DIR",
        help="write DIR/000001.png, ...: the best translation's attention per input line",
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        metavar="FILE",
        help="one line per input line: text its translation must begin with, which the search "
        "completes (an empty line: none); with a whole input file (-i, or < FILE)",
    )
    return parser


def _output_file(args: argparse.Namespace) -> AbstractContextManager[BinaryIO]:
    """-o opened for writing. When it is the -i file, a new file that replaces it once every
    line is written: a run that fails half-way (Ctrl-C, a full disk) leaves the input whole."""
    if args.input and args.output.exists() and args.output.samefile(args.input):
        target = args.input.resolve()  # a link stays a link to the new file
        return written_whole(target, stat.S_IMODE(target.stat().st_mode))
    return open(args.output, "wb")


def _fail(message: str) -> int:
    print(f"translate: error: {message}", file=sys.stderr)
    return 2


def worker_stopped(e: BrokenProcessPool) -> str:
    """The error when a process of `--workers` died (killed, out of memory)."""
    return f"--workers: a worker process stopped ({first_line(e)})"


def _warn(message: str) -> None:
    tqdm.write(f"translate: warning: {message}", file=sys.stderr)


def reader_gone() -> int:
    """The exit status once stdout's reader went away (e.g. `| head`): stop quietly, with
    stdout sent to /dev/null so that Python's own flush at exit does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def output_text(result: TranslationResult) -> str:
    """A translation as one output line: a decoded newline must not split it (the service
    answers with the same words)."""
    return " ".join(result.text.splitlines())


def _stream_groups(fd: int) -> Iterator[list[bytes]]:
    """Complete lines as they arrive, grouped by what one read returned; lines end as in
    `split_lines`. A read that ends in "\\r" keeps it back: a "\\n" may follow."""
    pending = b""
    while chunk := os.read(fd, READ_SIZE):
        data = pending + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        *lines, pending = LINE_END.split(data[: len(data) - len(held)])
        pending += held
        if lines:
            yield lines
    if pending:
        yield split_lines(pending)


def _decode(raw: bytes, lineno: int, where: str = "") -> str:
    """A line as text; invalid UTF-8 replaced, with a warning naming `where` (a file) and the
    line."""
    if lineno == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _warn(f"{where}line {lineno}: invalid UTF-8 bytes replaced with U+FFFD")
        return raw.decode("utf-8", errors="replace")


def read_prefixes(path: Path, lines: int) -> list[str]:
    """--prefix FILE: one line per input line. Raises CorpusError naming the file."""
    if not path.exists():
        raise CorpusError(f"--prefix {path}: no such file")
    raw = split_lines(read_bytes(path))
    if len(raw) != lines:
        raise CorpusError(f"--prefix {path}: {len(raw)} lines for {lines} input lines")
    return [_decode(line, n, f"--prefix {path} ") for n, line in enumerate(raw, 1)]


class LineTranslator:
    """Turns numbered input lines into output lines, warning about each line's problems."""

    def __init__(
        self,
        translator: Translator,
        args: argparse.Namespace,
        out: BinaryIO,
        prefixes: list[str] | None = None,
    ):
        self.translator = translator
        self.args = args
        self.out = out
        self.failed = 0
        self.options = {**search_options(args), "nbest": args.nbest}
        self.prefixes = prefixes  # of every input line, in order (--prefix)

    def _prefixes(self, linenos: range) -> dict:
        """The prefixes option for these lines: {} without --prefix."""
        if self.prefixes is None:
            return {}
        return {"prefixes": self.prefixes[linenos.start - 1 : linenos.stop - 1]}

    def __call__(self, lines: list[bytes], first_lineno: int) -> None:
        """Translate, write and flush lines numbered first_lineno, first_lineno + 1, ..."""
        linenos = range(first_lineno, first_lineno + len(lines))
        texts = [_decode(raw, n) for raw, n in zip(lines, linenos, strict=True)]
        try:
            results = self.translator.translate(texts, **self.options, **self._prefixes(linenos))
        except BrokenProcessPool:
            raise  # a worker died (out of memory?): no later line would be translated either
        except Exception:
            # Find the line that fails; every other line still gets its translation.
            results = [self._one(text, n) for text, n in zip(texts, linenos, strict=True)]
        output = []
        for n, nbest in zip(linenos, results, strict=True):
            if nbest[0].truncated:
                _warn(
                    f"line {n}: longer than {self.args.max_src_len} pieces; "
                    "only the beginning was translated"
                )
            if self.args.plot_attention and nbest[0].src_pieces:
                self._plot(n, nbest[0])
            output += self._format(n - 1, nbest)
        self.out.write("".join(line + "\n" for line in output).encode("utf-8"))
        self.out.flush()

    def _one(self, text: str, lineno: int) -> list[TranslationResult]:
        try:
            prefixes = self._prefixes(range(lineno, lineno + 1))
            return self.translator.translate([text], **self.options, **prefixes)[0]
        except Exception as e:
            self.failed += 1
            if isinstance(e, PrefixError):  # the line's prefix, not the model, is at fault
                problem = f"--prefix {self.args.prefix}: {e.problem}"
            else:
                problem = f"translation failed ({type(e).__name__}: {first_line(e)})"
            _warn(f"line {lineno}: {problem}; empty line")
            return [empty_result()]

    def _plot(self, lineno: int, result: TranslationResult) -> None:
        # Imported here: matplotlib adds a second to every start-up that plots nothing.
        from seq2seq.plotting import save_attention_png

        path = self.args.plot_attention / f"{lineno:06d}.png"
        try:
            save_attention_png(path, result.src_pieces, result.tgt_pieces, result.attention)
        except Exception as e:
            _warn(f"line {lineno}: could not plot attention to {path} ({e})")

    def _format(self, index: int, nbest: list[TranslationResult]) -> list[str]:
        nbest = nbest + [empty_result()] * (self.args.nbest - len(nbest))
        lines = []
        for result in nbest:
            text = output_text(result)
            if self.args.nbest_format == "tsv":
                lines.append(f"{index}\t{result.score:.4f}\t{text}")
            elif self.args.scores:
                lines.append(f"{result.score:.4f}\t{text}")
            else:
                lines.append(text)
        return lines


def _whole_file(args: argparse.Namespace) -> bool:
    """Whether the input is a file read whole, not lines to translate as they arrive."""
    return bool(args.input) or stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode)


def _run(
    args: argparse.Namespace,
    translator: Translator | TranslatorPool,
    out: BinaryIO,
    data: bytes | None,
    prefixes: list[str] | None,
) -> int:
    """Translate `data` (the -i file's bytes, or stdin's with --prefix) or stdin into `out`,
    each line beginning with its line of `prefixes` if given."""
    translate = LineTranslator(translator, args, out, prefixes)
    if _whole_file(args):
        lines = split_lines(sys.stdin.buffer.read() if data is None else data)
        chunk = args.batch_size * FILE_CHUNK_BATCHES * plan(args.workers)[0]  # per process
        with tqdm(total=len(lines), unit="line", file=sys.stderr, disable=None) as progress:
            for start in range(0, len(lines), chunk):
                translate(lines[start : start + chunk], start + 1)
                progress.update(min(chunk, len(lines) - start))
    else:
        if sys.stdin.isatty():
            print("translate: one sentence per line; Ctrl-D ends", file=sys.stderr)
        lineno = 1
        for group in _stream_groups(sys.stdin.fileno()):
            for start in range(0, len(group), args.batch_size):
                translate(group[start : start + args.batch_size], lineno + start)
            lineno += len(group)
    return 1 if translate.failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from seq2seq.serve.cli import main as serve  # FastAPI loads only for the service

        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    check_decoding_flags(parser, args)
    if args.input and not args.input.exists():  # a pipe, <(...), is read like a file
        return _fail(f"{args.input}: no such input file")
    if not args.input and sys.stdin is None:  # started with stdin closed, e.g. `<&-`
        return _fail("no input: stdin is closed; give -i FILE")
    if not args.output and sys.stdout is None:  # `>&-`
        return _fail("no output: stdout is closed; give -o FILE")
    try:  # before the model loads: an unreadable file (a broken gzip, say) fails at once
        data = read_bytes(args.input) if args.input else None
        prefixes = None
        if args.prefix:
            if not _whole_file(args):
                return _fail("--prefix: needs a whole input file (-i, or < FILE), not a pipe")
            if data is None:
                data = sys.stdin.buffer.read()
            prefixes = read_prefixes(args.prefix, len(split_lines(data)))
    except CorpusError as e:
        return _fail(str(e))
    if args.plot_attention:
        try:
            args.plot_attention.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _fail(
                f"--plot-attention: cannot make the folder {args.plot_attention} ({e.strerror})"
            )
    # stdin is looked at before loading only with --workers: callers may give no stdin at all.
    pipe = plan(args.workers)[0] > 1 and not _whole_file(args)
    if pipe:
        _warn("--workers applies to a whole file (-i, or < FILE); a pipe is translated here")
    try:
        opened = open_translator(args, whole_file=not pipe)
    except ValueError as e:  # CheckpointError included
        return _fail(str(e))
    except BrokenProcessPool as e:
        return _fail(worker_stopped(e))
    try:
        with opened as translator:
            if args.output:
                with _output_file(args) as out:
                    return _run(args, translator, out, data, prefixes)
            return _run(args, translator, sys.stdout.buffer, data, prefixes)
    except BrokenProcessPool as e:
        return _fail(worker_stopped(e))
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            return reader_gone()
        # A failed write (a full disk) names no file: it is the output.
        return _fail(f"{e.filename or args.output or 'stdout'}: {e.strerror or e}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
