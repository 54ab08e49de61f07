"""Training and decoding speed, peak memory and FLOP utilisation on this machine.

    seq2seq-benchmark                    # the default config on the bundled Multi30k
    seq2seq-benchmark --peer             # the peers' model on their synthetic corpus
    seq2seq-benchmark --peer joey        # ... with Joey NMT / fairseq encoder sizes
    seq2seq-benchmark --config configs/bench_m30k_2x512.yaml
    seq2seq-benchmark --model.decoder_layers 2 --data.max_tokens 4000   # any training option
    seq2seq-benchmark --json             # the last stdout line is one JSON object
    seq2seq-benchmark --profile 5        # + where 5 training steps spend their time
    seq2seq-benchmark --accelerator gpu --trainer.precision bf16-mixed   # on a CUDA GPU
    seq2seq-benchmark --peer --bf16      # decode in bfloat16 (or --int8), as translate does

(`python scripts/benchmark.py ...` is the same command.) Everything runs through the code a user
runs: the config is parsed by the training CLI's parser (so any `--model.*`, `--data.*` or
`--trainer.precision` option of `seq2seq-train` applies), `TranslationModule` +
`TranslationDataModule` + `lightning.Trainer` train (a callback times the steps),
`Translator.translate` decodes. Training speed is target tokens (non-pad `tgt_out`, EOS
included) per second over `--seconds` of steps after `--warmup-steps` steps; decoding speed is
sentences and output tokens (EOS excluded) per second. Decoding uses the weights trained here,
so quality means nothing. Training runs in `--trainer.precision`; decoding in float32, or as
`translate --int8` / `--bf16` does with those options.

`--peer` rebuilds the peers kit's benchmark (OpenNMT-py, fairseq, Joey NMT): 20,000
training lines of 5-30 words drawn from w0000..w1999, target = source reversed, 1,000 test
lines, and the model of `configs/bench_peer.yaml`. `--peer onmt` (the default) matches
OpenNMT-py's sizes, where `enc_hid_size: 256` is split over the two directions (128 each);
`--peer joey` uses 256 per direction, as Joey NMT and fairseq do. It decodes the synthetic test
lines twice: stopping at EOS (at most 40 tokens, as the peers' "natural" rows) and at exactly 30
tokens with EOS blocked (the peers' "fixed30" rows, the same work in every toolkit).

FLOPs: `Seq2Seq.training_flops` (the formula is there, next to the model). Utilisation is that
rate over the best float32 (or, under a bf16 precision, bfloat16) `torch.mm` rate this script
measures on this machine (on the GPU with `--accelerator gpu`) in the same run.
"""

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import resource
import sys
import tempfile
import time
import warnings
from argparse import ArgumentError
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from seq2seq.allocator import keep_freed_memory
from seq2seq.arguments import OneLineErrorParser, positive_float, positive_int
from seq2seq.cli import add_precision_options, check_precision, set_precision
from seq2seq.commands.train import CONFIGS, DEFAULT_CONFIG, TrainCLI, fail
from seq2seq.data.batching import Batch
from seq2seq.data.corpus import CorpusError, read_lines
from seq2seq.data.datamodule import BUNDLED_MULTI30K, TranslationDataModule
from seq2seq.search import MAX_LEN_A, MAX_LEN_B
from seq2seq.special_tokens import PAD_ID
from seq2seq.training import TranslationModule
from seq2seq.translator import BATCH_SIZE, Translator

MULTI30K_TEST = BUNDLED_MULTI30K / "test_2016_flickr.de.gz"
PROG = "seq2seq-benchmark"
PEER_CONFIG = CONFIGS / "bench_peer.yaml"

# The peers' corpus shape (make_reverse_corpus.py): words, lengths, split sizes.
PEER_WORDS, PEER_MIN_LEN, PEER_MAX_LEN = 2000, 5, 30
PEER_TRAIN, PEER_VAL, PEER_TEST = 20_000, 500, 1_000
PEER_BATCH_TOKENS = 2000  # the peers decode batches of about this many source tokens
PEER_ENCODER_PER_DIRECTION = {"onmt": 128, "joey": 256}
PEER_NATURAL_MAX_LEN = 40  # the peers' natural rows: stop at EOS, at most 40 tokens
PEER_FIXED_LEN = 30  # the peers' fixed30 rows: EOS blocked, exactly 30 tokens


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """-> this script's options, and the rest: training options for the config parser."""
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a training yaml")
    parser.add_argument(
        "--peer", nargs="?", const="onmt", choices=sorted(PEER_ENCODER_PER_DIRECTION),
        help="the peers' model and synthetic corpus instead of --config (default sizes: onmt)",
    )
    parser.add_argument(
        "--seconds", type=positive_float, default=60.0, help="timed training seconds"
    )
    parser.add_argument(
        "--warmup-steps", type=positive_int, default=10, help="untimed first steps"
    )
    parser.add_argument(
        "--sentences", type=positive_int, default=1000, help="sentences per decode"
    )
    parser.add_argument(
        "--decode-batch", type=positive_int, default=None,
        help=f"sentences per decoding batch (default: {BATCH_SIZE}; with --peer about "
        f"{PEER_BATCH_TOKENS:,} source tokens)",
    )
    parser.add_argument(
        "--fixed-len", type=int, default=None,
        help="also decode at exactly this many output tokens, EOS blocked (default: 30 with "
        "--peer, none otherwise); 0 turns it off",
    )
    parser.add_argument(
        "--accelerator", choices=["cpu", "gpu"], default="cpu",
        help="where to train, decode and measure the matrix-product peak (gpu: CUDA)",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--processes", type=positive_int, default=1,
        help="training processes (DDP on CPU, gloo); each gets cores/processes threads unless "
        "OMP_NUM_THREADS or --threads says otherwise. Tokens/s are summed over them",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="STEPS",
        help="profile this many training steps after warm-up (torch.profiler, untimed): time in "
        "matrix products vs the rest, the costliest operations, operations per decoder step",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    add_precision_options(parser)
    args, training_options = parser.parse_known_args(argv)
    if args.fixed_len is None:
        args.fixed_len = PEER_FIXED_LEN if args.peer else 0
    if args.fixed_len < 0:
        parser.error(f"--fixed-len must be 0 (off) or a number of tokens, got {args.fixed_len}")
    if args.profile < 0:
        parser.error(f"--profile must be 0 (off) or a number of steps, got {args.profile}")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA GPU here")
    try:
        check_precision(args, "cuda" if args.accelerator == "gpu" else "cpu")
    except ValueError as e:
        parser.error(str(e))
    return args, training_options


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout is the table (and the JSON line)."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the machine
def cpu_info() -> dict:
    """CPU model, cores, torch threads and the vector units that decide matmul speed."""
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
        "torch": torch.__version__,
    }


def peak_matmul_flops(
    dtype: torch.dtype, device: str = "cpu", max_n: int = 2048, budget_s: float = 3.0
) -> float:
    """The best FLOP/s of a square `torch.mm` in `dtype`: the ceiling the model could reach.

    The size doubles from 256 while one product takes under 50 ms (up to max_n), so that a
    dtype without fast kernels here (bfloat16 without AVX-512/AMX runs at well under 1 GFLOP/s)
    costs seconds, not minutes. Then repeats until `budget_s` has passed, keeping the best.
    """

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        torch.mm(a, b)  # the first call pays for set-up
        return a, b

    def timed_mm(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize()  # the product runs asynchronously: wait for its end
        return time.perf_counter() - start

    n = 256
    a, b = operands(n)
    best = spent = timed_mm(a, b)
    while best < 0.05 and n < max_n:
        n *= 2
        a, b = operands(n)
        best = spent = timed_mm(a, b)
    while spent < budget_s:
        took = timed_mm(a, b)
        best, spent = min(best, took), spent + took
    return 2 * n**3 / best


# ----------------------------------------------------------------------------- configurations
def parse_config(options: list[str]):
    """The training CLI's parser over `options` (`--config ...` and overrides) -> the parsed
    config, the module and the data module, built exactly as `seq2seq-train` builds them. A bad
    key or value is one error line naming it, and exit status 2, as in `seq2seq-train`."""
    try:
        cli = TrainCLI(
            TranslationModule, TranslationDataModule, args=options, run=False,
            parser_kwargs={"exit_on_error": False},
        )
    except (ArgumentError, ValueError, MisconfigurationException) as e:
        fail(e, 2, PROG)
    return cli.config, cli.model, cli.datamodule


def config_options(args: argparse.Namespace, training_options: list[str], corpus: Path | None):
    """The training CLI's command line for this benchmark: --config, then the peer settings,
    then whatever else the user gave."""
    if args.peer:
        return [
            "--config", str(PEER_CONFIG), "--data.data_dir", str(corpus),
            "--model.encoder_hidden_size", str(PEER_ENCODER_PER_DIRECTION[args.peer]),
            *training_options,
        ]
    return ["--config", str(args.config), *training_options]


def write_reverse_corpus(out: Path, seed: int) -> list[str]:
    """The peers' corpus shape with our own seeded generator: writes train/val .src/.tgt to
    `out` and returns the test sources (targets are not needed: quality is not measured)."""
    rng = random.Random(seed)
    words = [f"w{i:04d}" for i in range(PEER_WORDS)]

    def sentence() -> list[str]:
        return [rng.choice(words) for _ in range(rng.randint(PEER_MIN_LEN, PEER_MAX_LEN))]

    for split, n in (("train", PEER_TRAIN), ("val", PEER_VAL)):
        sources = [sentence() for _ in range(n)]
        (out / f"{split}.src").write_text("".join(" ".join(s) + "\n" for s in sources))
        (out / f"{split}.tgt").write_text("".join(" ".join(s[::-1]) + "\n" for s in sources))
    return [" ".join(sentence()) for _ in range(PEER_TEST)]


def pieces_per_word(tokenizer, lines: list[str]) -> float:
    """SentencePiece pieces per whitespace word: 1.00 means our token counts are the peers'."""
    pieces = sum(len(ids) for ids in tokenizer.encode(lines))
    return pieces / sum(len(line.split()) for line in lines)


# ----------------------------------------------------------------------------- training
class StepTimer(L.Callback):
    """Times the real training loop (data loading, forward, backward, clipping, Adam, Lightning)
    from the end of warm-up step `warmup_steps` to the end of the last step, counts what the
    timed steps processed, and stops training once `seconds` have been timed. Under DDP every
    rank stops at the same step (the decision is reduced over ranks) and the counts are summed
    over ranks at the end."""

    def __init__(self, warmup_steps: int, seconds: float):
        self.warmup_steps, self.seconds = warmup_steps, seconds
        self.steps = self.timed_steps = 0
        self.start: float | None = None
        self.elapsed = 0.0
        self.tgt_tokens = self.src_tokens = self.pairs = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Batch, batch_idx) -> None:
        now = time.perf_counter()
        self.steps += 1
        if self.steps == self.warmup_steps:
            self.start = now
            return
        if self.start is None:
            return
        tgt_lengths = (batch.tgt_out != PAD_ID).sum(dim=1)  # (B,) EOS included
        self.tgt_tokens += int(tgt_lengths.sum())
        self.src_tokens += int(batch.src_lengths.sum())
        self.pairs += int((tgt_lengths * batch.src_lengths.to(tgt_lengths.device)).sum())
        self.timed_steps += 1
        self.elapsed = now - self.start
        # Every rank must stop at the same step, or the others would wait in all-reduce forever.
        if trainer.strategy.reduce_boolean_decision(self.elapsed >= self.seconds, all=False):
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        counts = torch.tensor(
            [self.tgt_tokens, self.src_tokens, self.pairs, self.timed_steps], dtype=torch.float64
        )
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        self.tgt_tokens, self.src_tokens, self.pairs, self.timed_steps = map(int, counts.tolist())
        elapsed = torch.tensor([self.elapsed], dtype=torch.float64)
        self.elapsed = float(trainer.strategy.reduce(elapsed, reduce_op="max"))


# Operations that are matrix products (or the fused recurrence, which is mostly products): what
# the FLOP count measures. Everything else is the per-step overhead worth cutting.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_rnn_layer",
              "aten::mkldnn_rnn_layer_backward", "aten::_addmm_activation")


class StepProfiler(L.Callback):
    """torch.profiler over training steps `first` .. `first + steps - 1` (forward, backward,
    clipping, Adam), then a summary: self CPU time per operation, its share in matrix products,
    and operator calls per decoder step (one decoder step = one target position of a batch)."""

    def __init__(self, first: int, steps: int):
        self.first, self.steps = first, steps
        self.seen = self.decoder_steps = 0
        self.profiler: torch.profiler.profile | None = None
        self.summary: dict | None = None
        self.summarised_at: float | None = None  # time.perf_counter() when the summary was made

    def on_train_batch_start(self, trainer, pl_module, batch: Batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.first:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
        if self.profiler is not None:
            self.decoder_steps += batch.tgt_in.size(1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Batch, batch_idx) -> None:
        if self.profiler is None or self.seen < self.first + self.steps - 1:
            return
        self.profiler.__exit__(None, None, None)
        ops = [e for e in self.profiler.key_averages() if e.key.startswith("aten::")]
        self.profiler = None
        total = sum(e.self_cpu_time_total for e in ops)
        matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS)
        top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        self.summary = {
            "steps": self.steps,
            "decoder_steps": self.decoder_steps,
            "ms_per_step": round(total / 1e3 / self.steps, 1),
            "matmul_share": round(matmul / total, 4),
            "aten_calls_per_decoder_step": round(sum(e.count for e in ops) / self.decoder_steps, 1),
            "top": [
                {"op": e.key, "share": round(e.self_cpu_time_total / total, 4),
                 "calls_per_decoder_step": round(e.count / self.decoder_steps, 2)}
                for e in top
            ],
        }
        self.summarised_at = time.perf_counter()


def train(options: list[str], args: argparse.Namespace, root: Path):
    """Trains the parsed config until the timer stops it
    -> (module, datamodule, timer, StepProfiler or None, precision, rank)."""
    config, module, datamodule = parse_config(options)
    L.seed_everything(config.seed_everything, verbose=False)
    # A profiled step runs slower: profiling comes right after warm-up, before the timed steps.
    timer = StepTimer(args.warmup_steps + args.profile, args.seconds)
    profiler = StepProfiler(args.warmup_steps + 1, args.profile) if args.profile else None
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.processes,
        strategy="ddp" if args.processes > 1 else "auto",
        precision=config.trainer.precision,
        gradient_clip_val=config.trainer.gradient_clip_val,
        max_epochs=-1,
        limit_val_batches=0,  # validation is not training time
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=root,
        # The profiler first: its summary, made at the end of the last profiled step, takes
        # seconds on a GPU, and must be over before the timer starts at the end of that step.
        callbacks=([profiler] if profiler else []) + [timer],
    )
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table and the JSON
        try:
            trainer.fit(module, datamodule=datamodule)
        except CorpusError as e:  # a file of --data.data_dir missing or unreadable
            fail(e, 1, PROG)
    if timer.timed_steps == 0:
        raise SystemExit("benchmark: training ended before any step was timed")
    return module, datamodule, timer, profiler, str(config.trainer.precision), trainer.global_rank


# ----------------------------------------------------------------------------- decoding
def decode(
    translator: Translator, texts: list[str], beam: int, batch: int, max_len_a: float,
    max_len_b: float, min_len: int = 1,
) -> dict:
    """Translates `texts` once -> seconds, sentences/s, output tokens/s (EOS excluded)."""
    start = time.perf_counter()
    results = translator.translate(
        texts, beam_size=beam, batch_size=batch, max_len_a=max_len_a, max_len_b=max_len_b,
        min_len=min_len,
    )
    seconds = time.perf_counter() - start
    lengths = [len(nbest[0].tokens) for nbest in results]
    if min(lengths) < min_len:
        raise SystemExit(f"benchmark: min_len {min_len} was not applied (shortest {min(lengths)})")
    return {
        "seconds": round(seconds, 3),
        "sents_per_s": round(len(texts) / seconds, 2),
        "tokens_per_s": round(sum(lengths) / seconds, 1),
        "tokens": sum(lengths),
    }


def decode_all(translator: Translator, args, test_texts: list[str], peer: bool) -> dict:
    """The decodes to report: greedy and beam 5, each stopping at EOS and, with --fixed-len N
    (--peer: 30), at exactly N tokens: the rows whose work does not depend on the weights."""
    texts = test_texts[: args.sentences]
    batch = args.decode_batch
    if batch is None:
        batch = BATCH_SIZE
        if peer:  # the peers decode 2,000-token batches: as many sentences as that holds
            mean_src = sum(len(t.split()) + 1 for t in texts) / len(texts)
            batch = max(1, round(PEER_BATCH_TOKENS / mean_src))
    limits = (0.0, PEER_NATURAL_MAX_LEN) if peer else (MAX_LEN_A, MAX_LEN_B)
    runs = {}
    for beam in (1, 5):
        name = "greedy" if beam == 1 else f"beam{beam}"
        log(f"decoding {len(texts)} sentences, {name}, {batch} per batch")
        runs[name] = decode(translator, texts, beam, batch, *limits)
        n = args.fixed_len
        if n:
            log(f"decoding {len(texts)} sentences, {name}, fixed {n} tokens")
            runs[f"fixed{n}_{name}"] = decode(translator, texts, beam, batch, 0.0, n, min_len=n)
    return {"decode_batch_sentences": batch, "decode": runs}


# ----------------------------------------------------------------------------- report
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(args: argparse.Namespace, training_options: list[str]) -> dict | None:
    """The figures, on the first process; None on the other training processes."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="seq2seq-bench-") as tmp:
        root = Path(tmp)
        corpus = None
        if args.peer:
            corpus = root / "corpus"
            corpus.mkdir()
            test_texts = write_reverse_corpus(corpus, args.seed)
            name = f"peer ({args.peer} sizes)"
        else:
            test_texts = read_lines(MULTI30K_TEST)
            name = str(args.config)
        options = config_options(args, training_options, corpus)
        log(f"training {name}: {args.warmup_steps} warm-up steps + {args.seconds:g} s")
        module, datamodule, timer, profiler, precision, rank = train(options, args, root / "run")
    if rank != 0:
        return None
    gpu = args.accelerator == "gpu"
    device = "cuda" if gpu else "cpu"
    # Training's peak, read before the matrix-product peak allocates its large operands.
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if gpu else None
    threads = torch.get_num_threads()  # per training process (DDP sets it at launch)
    arrangement = f"{args.processes} process(es) x {threads} thread(s)"
    # The peak and decoding get all the cores the training processes had together.
    torch.set_num_threads(args.processes * threads)
    result = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **cpu_info(),
        "arrangement": arrangement,
    }
    if gpu:
        result.update(gpu=torch.cuda.get_device_name(), peak_gpu_mb=round(peak_gpu_mb, 1))
    log(f"measuring the matrix-product peak on the {device} (float32, bfloat16)")
    # A GPU needs products of 8192 to leave launch overhead behind; a CPU reaches its peak early.
    max_n = 8192 if gpu else 2048
    peak = {name: peak_matmul_flops(dtype, device, max_n) for name, dtype in (
        ("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    model = module.model
    flops = model.training_flops(timer.src_tokens, timer.tgt_tokens, timer.pairs)
    achieved = flops / timer.elapsed
    peak_used = peak["bfloat16" if "bf16" in precision else "float32"]
    result.update(
        config=name,
        options=training_options,
        precision=precision,
        params=sum(p.numel() for p in model.parameters()),
        model={**vars(model.config), "tgt_vocab_size": model.tgt_vocab_size},
        train_steps=timer.timed_steps,
        train_seconds=round(timer.elapsed, 2),
        train_tokens_per_s=round(timer.tgt_tokens / timer.elapsed, 1),
        train_src_tokens_per_s=round(timer.src_tokens / timer.elapsed, 1),
        train_steps_per_s=round(timer.timed_steps / timer.elapsed, 3),
        train_tgt_tokens_per_step=round(timer.tgt_tokens / timer.timed_steps, 1),
        train_mflop_per_tgt_token=round(flops / timer.tgt_tokens / 1e6, 3),
        achieved_gflop_per_s=round(achieved / 1e9, 2),
        peak_mm_gflop_per_s_float32=round(peak["float32"] / 1e9, 1),
        peak_mm_gflop_per_s_bfloat16=round(peak["bfloat16"] / 1e9, 1),
        flop_utilization=round(achieved / peak_used, 4),
    )
    if args.peer:
        result["pieces_per_word"] = round(pieces_per_word(datamodule.tgt_tokenizer, test_texts), 4)
    translator = Translator(model, datamodule.src_tokenizer, datamodule.tgt_tokenizer, device)
    try:
        translator = set_precision(translator, args)
    except ValueError as e:  # --int8 without torchao, --bf16 on a GPU without it
        raise SystemExit(f"benchmark: {e}") from None
    result["decode_precision"] = "int8" if args.int8 else "bfloat16" if args.bf16 else "float32"
    result.update(decode_all(translator, args, test_texts, bool(args.peer)))
    for name, figures in result["decode"].items():
        result[f"{name}_sents_per_s"] = figures["sents_per_s"]
        result[f"{name}_tokens_per_s"] = figures["tokens_per_s"]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if profiler:
        result["profile"] = profiler.summary
    return result


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def table(r: dict) -> str:
    m = r["model"]
    rows = [
        ("CPU", f"{r['cpu']}, {r['cores']} cores, {r['torch_threads']} torch threads, "
                f"AVX2 {yes(r['avx2'])}, AVX-512 {yes(r['avx512'])}, AMX {yes(r['amx'])}"),
        ("when", f"{r['when']} (torch {r['torch']})"),
        ("model", f"{r['config']}: embeddings {m['embedding_size']}, encoder "
                  f"{m['encoder_layers']} x {m['encoder_hidden_size']} per direction, decoder "
                  f"{m['decoder_layers']} x {m['decoder_hidden_size']}, attention "
                  f"{m['attention_size']}, vocabulary {m['tgt_vocab_size']}, "
                  f"{r['params'] / 1e6:.2f}M parameters, {r['precision']}"),
    ]
    if "gpu" in r:
        rows.append(("GPU", f"{r['gpu']}, training peak {r['peak_gpu_mb']:,.0f} MB allocated"))
    if "pieces_per_word" in r:
        rows.append(("pieces per word", f"{r['pieces_per_word']:.3f}"))
    rows += [
        ("training", f"**{r['train_tokens_per_s']:,.0f} target tokens/s** "
                     f"({r['train_steps_per_s']:.2f} steps/s, {r['train_tgt_tokens_per_step']:,.0f}"
                     f" target tokens/step; {r['train_steps']} steps in {r['train_seconds']:.1f} s"
                     f" after warm-up; {r['arrangement']})"),
    ]
    for name, d in r["decode"].items():
        rows.append((f"decoding ({r['decode_precision']}), {name}",
                     f"**{d['sents_per_s']:,.1f} sentences/s**, "
                     f"{d['tokens_per_s']:,.0f} tokens/s ({d['seconds']:.2f} s, "
                     f"{d['tokens']:,} tokens, {r['decode_batch_sentences']} sentences/batch)"))
    rows += [
        ("peak RSS", f"{r['peak_rss_mb']:,.0f} MB"),
        ("FLOP utilisation", f"{r['flop_utilization']:.1%}: {r['achieved_gflop_per_s']:.1f} "
                             f"GFLOP/s of training ({r['train_mflop_per_tgt_token']:.2f} MFLOP "
                             f"per target token) against a measured torch.mm peak of "
                             f"{r['peak_mm_gflop_per_s_float32']:.0f} GFLOP/s float32, "
                             f"{r['peak_mm_gflop_per_s_bfloat16']:.0f} GFLOP/s bfloat16"),
    ]
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if "profile" in r:
        lines += ["", profile_table(r["profile"])]
    return "\n".join(lines)


def profile_table(p: dict) -> str:
    head = (f"Profile of {p['steps']} training steps ({p['decoder_steps']} decoder steps): "
            f"{p['ms_per_step']:,.0f} ms of operator time per step, "
            f"{p['matmul_share']:.1%} in matrix products and the fused recurrence, "
            f"{p['aten_calls_per_decoder_step']:,.0f} operator calls per decoder step")
    rows = [f"| {t['op']} | {t['share']:.1%} | {t['calls_per_decoder_step']:g} |" for t in p["top"]]
    return "\n".join([head, "", "| operation | self time | calls per decoder step |",
                      "|---|---|---|", *rows])


def quiet() -> None:
    """Lightning's and datasets' start-up chatter would bury the table."""
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args, training_options = parse_args(argv)
    quiet()
    keep_freed_memory()  # as seq2seq-train and the decoding commands do
    started = time.perf_counter()
    result = run(args, training_options)
    if result is None:  # a second training process: the first one reports
        return 0
    result["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    print(table(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
