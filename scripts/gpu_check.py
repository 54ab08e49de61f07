"""The GPU check (issue 17): tests, the de->en recipe and the benchmark on one CUDA GPU, in one
call of under 8 minutes, ending with one table.

    scripts/gpu_check.sh OUT_DIR                    # installs the carried wheels, runs this
    scripts/gpu_check.sh OUT_DIR --parts tests,bench    # again, some parts only

The parts run in this order, each command under its own time limit and all inside one budget,
and each part runs whatever happened to those before it:

  tests   pytest -m gpu tests/test_gpu.py
  bench   seq2seq-benchmark --accelerator gpu on the recipe model, bf16-mixed and float32
  recipe  configs/multi30k_de_en_best.yaml in bf16-mixed with a GPU token budget, trained for
          what is left of the budget (10 minutes at most, the issue's goal), validated every
          epoch; then test2016 beam 5 with the best checkpoint and with the average of the best
          three, and the same at a GPU-sized decoding batch

OUT_DIR gets at most 8 files, which is all the device tool brings back: a log per part,
gpu_check.json (every figure), summary.md (the table), nvidia-smi's samples and the recipe's
curves. Checkpoints stay in a scratch folder. This script imports no torch, so that its own
CUDA context does not count in the memory samples.
"""

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO / "seq2seq" / "data" / "multi30k"
RECIPE = REPO / "configs" / "multi30k_de_en_best.yaml"
RECIPE_PRECISION = "bf16-mixed"
RECIPE_TOKENS = 12_000  # per batch: the GPU recipe's budget (README), ~5x the CPU recipe's
RECIPE_SECONDS = 600  # of training at most (Lightning's max_time): the issue's 10 minutes
RECIPE_AFTER = 165  # s: setup, the last validation, averaging, four decodes and the plot
RECIPE_ALPHA = "1.4"  # the de->en recipe's length penalty, chosen on the validation set
GPU_DECODE_BATCH = "1000"  # sentences: all of test2016 at once on a GPU, beside the default
BENCH_SECONDS = 10  # timed training seconds of each benchmark run
# bf16: trained in bf16-mixed and decoded with --bf16; then float32 throughout. In this order.
BENCH_RUNS = {"bf16-mixed": ["--trainer.precision", "bf16-mixed", "--bf16", "--profile", "3"],
              "32-true": []}  # bf16 also profiles 3 steps (untimed): operator calls per step
PACKAGES = ("torch", "lightning", "datasets", "pyarrow", "jsonargparse", "sentencepiece",
            "sacrebleu")


class Check:
    """Runs the commands of every part under one deadline, logging each into OUT_DIR."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline = out, time.monotonic() + budget
        self.scratch = Path(tempfile.mkdtemp(prefix="seq2seq-gpu-check-"))
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list, limit: float, log: str) -> tuple[int | None, str]:
        """-> (exit status, stdout); None when the command was stopped at its time limit (the
        smaller of `limit` and the time left) or never started for want of time."""
        command = [str(c) for c in command]
        timeout = min(limit, self.left())
        step = {"name": name, "command": shlex.join(command), "limit_s": round(timeout)}
        self.steps.append(step)
        with open(self.out / log, "a") as f:
            print(f"\n### {name}\n$ {step['command']}", file=f, flush=True)
            if timeout < 10:
                print("not run: no time left", file=f)
                step.update(rc=None, seconds=0, status="no time left")
                return None, ""
            step["start"] = time.time()
            try:
                done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=f,
                                      text=True, timeout=timeout)
                rc, stdout = done.returncode, done.stdout
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired as e:
                stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
                rc, status = None, f"stopped at {timeout:.0f} s"
            step.update(end=time.time(), rc=rc, status=status)
            step["seconds"] = round(step["end"] - step["start"], 1)
            print(f"{stdout}\n[{name}: {status}, {step['seconds']} s]", file=f, flush=True)
        return rc, stdout


def last_json(stdout: str) -> dict:
    """The JSON object on the last line of a command's stdout (`--json`), or {}."""
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


# ----------------------------------------------------------------------------- the parts
def tests(check: Check, result: dict) -> None:
    # The GPU file only: other test files import what the GPU machine lacks (fastapi, ...).
    junit = check.scratch / "tests.xml"
    rc, _ = check.run("pytest -m gpu", [
        sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
        f"--junitxml={junit}", "tests/test_gpu.py",
    ], limit=150, log="tests.log")
    outcomes = {}
    if junit.exists():
        import xml.etree.ElementTree as ET

        for case in ET.parse(junit).iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    counts = {k: list(outcomes.values()).count(k) for k in sorted(set(outcomes.values()))}
    result.update(rc=rc, counts=counts, outcomes=outcomes)


def scalars(run_dir: Path, since: float) -> dict[str, list[tuple[float, int, float]]]:
    """Every scalar a run logged: tag -> [(seconds since `since`, step, value)], in time order."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    series: dict[str, list] = {}
    for event_dir in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(event_dir), size_guidance={SCALARS: 0})  # keep every point
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, []).extend(
                (round(e.wall_time - since, 1), e.step, e.value) for e in events.Scalars(tag)
            )
    return {tag: sorted(points) for tag, points in series.items()}


def decode(check: Check, name: str, checkpoint: Path, *options: str) -> dict:
    """test2016, beam 5, on the GPU -> BLEU, chrF, TER and sentences/s."""
    _, stdout = check.run(name, [
        sys.executable, "-m", "seq2seq.commands.decode", "--checkpoint", checkpoint,
        "--src", MULTI30K / "test_2016_flickr.de.gz", "--ref", MULTI30K / "test_2016_flickr.en.gz",
        "--beam-size", "5", "--length-penalty", RECIPE_ALPHA, "--device", "cuda", "--json",
        *options,
    ], limit=60, log="recipe.log")
    scores = last_json(stdout)
    if scores:
        scores["sents_per_s"] = round(scores["sentences"] / scores["seconds"], 1)
    return {k: scores[k] for k in ("bleu", "chrf", "ter", "sents_per_s") if k in scores}


def recipe(check: Check, result: dict) -> None:
    run_dir = check.scratch / "recipe"
    seconds = int(min(RECIPE_SECONDS, check.left() - RECIPE_AFTER))
    if seconds < 30:
        result["error"] = "no time left"
        return
    started = time.time()
    rc, _ = check.run("recipe training", [
        sys.executable, "-m", "seq2seq.commands.train", "--config", RECIPE,
        "--trainer.default_root_dir", run_dir, "--trainer.accelerator", "gpu",
        "--trainer.devices", "1", "--trainer.precision", RECIPE_PRECISION,
        "--data.max_tokens", RECIPE_TOKENS, "--trainer.max_epochs", "1000",
        "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        "--trainer.enable_progress_bar", "false",
    ], limit=seconds + 90, log="recipe.log")
    logged = scalars(run_dir, started)
    speeds = [value for _, _, value in logged.get("train/tokens_per_s", [])]
    result.update(
        rc=rc, precision=RECIPE_PRECISION, max_tokens=RECIPE_TOKENS, train_seconds=seconds,
        # (seconds since the command started, setup included; optimizer step; BLEU)
        val_bleu=[(t, step, round(v, 2)) for t, step, v in logged.get("val/bleu", [])],
        median_tgt_tokens_per_s=round(statistics.median(speeds)) if speeds else None,
    )
    best = sorted(run_dir.glob("**/checkpoints/best-*.ckpt"), key=named_bleu, reverse=True)
    if not best:
        return
    result["test_best"] = decode(check, "test2016, best checkpoint", best[0])
    final = best[0]
    if len(best) >= 3:
        final = check.scratch / "average.ckpt"
        rc, _ = check.run("average of the best 3", [
            sys.executable, "-m", "seq2seq.commands.average", *best[:3], "--output", final,
        ], limit=40, log="recipe.log")
        if rc == 0:
            result["test_average3"] = decode(check, "test2016, average of the best 3", final)
        else:
            final = best[0]
    result[f"test_batch{GPU_DECODE_BATCH}"] = decode(
        check, f"test2016, {GPU_DECODE_BATCH} sentences a batch", final,
        "--batch-size", GPU_DECODE_BATCH,
    )
    result[f"test_batch{GPU_DECODE_BATCH}_bf16"] = decode(
        check, f"test2016, {GPU_DECODE_BATCH} sentences a batch, --bf16", final,
        "--batch-size", GPU_DECODE_BATCH, "--bf16",
    )
    check.run("curves", [
        sys.executable, "-m", "seq2seq.commands.plot_curves", run_dir,
        "--output", check.out / "recipe_curves.png",
    ], limit=30, log="recipe.log")


def named_bleu(checkpoint: Path) -> float:
    """The val BLEU in a checkpoint's name (the recipe's ModelCheckpoint puts it there)."""
    found = re.search(r"bleu(\d+\.\d+)", checkpoint.name)
    return float(found.group(1)) if found else 0.0


def bench(check: Check, result: dict) -> None:
    """The recipe model at the recipe's GPU token budget: bf16 first, the issue's goal."""
    keys = ("train_tokens_per_s", "flop_utilization", "greedy_sents_per_s", "beam5_sents_per_s",
            "peak_gpu_mb", "train_steps", "params")
    for name, options in BENCH_RUNS.items():
        rc, stdout = check.run(f"benchmark {name}", [
            sys.executable, "-m", "seq2seq.commands.benchmark", "--accelerator", "gpu",
            "--config", RECIPE, "--data.max_tokens", RECIPE_TOKENS,
            "--seconds", BENCH_SECONDS, "--json", *options,
        ], limit=100, log="bench.log")
        figures = last_json(stdout)
        result[name] = {"rc": rc, **{k: figures[k] for k in keys if k in figures}}


# In this order: the recipe last, since it trains for whatever time the others leave.
PARTS = {"tests": tests, "bench": bench, "recipe": recipe}


# ----------------------------------------------------------------------------- the machine
class GpuSamples:
    """nvidia-smi's memory use and load every half second, written to OUT_DIR, so that each
    part's peak can be read off without touching CUDA in this process."""

    QUERY = ["--query-gpu=timestamp,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self, path: Path):
        self.path, self.file = path, open(path, "w")
        try:
            self.process = subprocess.Popen(["nvidia-smi", *self.QUERY, "-lms", "500"],
                                            stdout=self.file, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            self.process = None

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait()
        self.file.close()

    def between(self, start: float, end: float) -> dict:
        memory, load = [], []
        for line in self.path.read_text().splitlines():
            try:
                stamp, used, util = (x.strip() for x in line.split(","))
                at = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            except ValueError:
                continue
            if start <= at <= end and used.isdigit() and util.isdigit():
                memory.append(int(used))
                load.append(int(util))
        if not memory:
            return {}
        peak, mean = max(memory), round(statistics.mean(load))
        return {"gpu_memory_peak_mib": peak, "gpu_util_mean_pct": mean}


def environment() -> dict:
    env = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        env["gpu"] = gpu.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["gpu"] = f"nvidia-smi failed: {e}"
    return env


# ----------------------------------------------------------------------------- report
def rows(report: dict) -> list[tuple[str, str]]:
    env, parts = report["environment"], report["parts"]
    steps = {s["name"]: s for s in report["steps"]}
    out = [("GPU", f"{env['gpu']}; torch {env['torch']}, Python {env['python']}")]
    if "outcomes" in parts.get("tests", {}):
        t = parts["tests"]
        failed = [n for n, o in t["outcomes"].items() if o in ("failure", "error")]
        out.append(("pytest -m gpu", f"{t['counts']}" + (f"; failed: {failed}" if failed else "")))
    r = parts.get("recipe", {})
    if "val_bleu" in r:
        trained = steps.get("recipe training", {})
        curve = ", ".join(f"{t:.0f} s {b}" for t, _, b in r["val_bleu"][-8:])
        out += [
            ("recipe training", f"{r['precision']}, {r['max_tokens']} tokens/batch, "
             f"{r['train_seconds']} s: median {r['median_tgt_tokens_per_s']} tgt tokens/s; "
             f"nvidia-smi: {trained.get('gpu_memory_peak_mib')} MiB peak, "
             f"{trained.get('gpu_util_mean_pct')}% mean load"),
            ("recipe val BLEU (s since start)", curve or "none"),
        ]
    for key, label in (("test_best", "best checkpoint"), ("test_average3", "average of 3"),
                       (f"test_batch{GPU_DECODE_BATCH}", f"{GPU_DECODE_BATCH} a batch"),
                       (f"test_batch{GPU_DECODE_BATCH}_bf16", f"{GPU_DECODE_BATCH} a batch, bf16")):
        if key in r:
            d = r[key]
            out.append((f"test2016 beam 5, {label}", f"BLEU {d.get('bleu')}, chrF "
                        f"{d.get('chrf')}, {d.get('sents_per_s')} sentences/s"))
    for name in BENCH_RUNS:
        b = parts.get("bench", {}).get(name, {})
        if not b:
            continue
        out.append((f"benchmark {name}", f"{b.get('train_tokens_per_s')} tgt tokens/s (FLOP "
                    f"use {b.get('flop_utilization')}), greedy {b.get('greedy_sents_per_s')}, "
                    f"beam 5 {b.get('beam5_sents_per_s')} sentences/s, "
                    f"{b.get('peak_gpu_mb')} MB allocated at most"))
    problems = [f"{s['name']}: {s['status']}" for s in report["steps"] if s["status"] != "ok"]
    problems += [f"{p}: {v['error']}" for p, v in parts.items() if "error" in v]
    out += [("problems", "; ".join(problems) or "none"),
            ("wall time", f"{report['seconds']:.0f} s")]
    return out


def write(report: dict, check: Check, samples: GpuSamples, out: Path, seconds: float) -> None:
    """gpu_check.json and summary.md as they stand, each step with nvidia-smi's figures."""
    for step in check.steps:
        if "end" in step:
            step.update(samples.between(step["start"], step["end"]))
    report.update(steps=check.steps, seconds=seconds)
    table = "\n".join(["| figure | value |", "|---|---|"]
                      + [f"| {k} | {v} |" for k, v in rows(report)])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "summary.md").write_text(table + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the logs and gpu_check.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=465.0, help="seconds for everything")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    begun = time.monotonic()
    check = Check(args.out, args.budget)
    samples = GpuSamples(args.out / "gpu_samples.csv")
    report = {"environment": environment(), "parts": {}, "scratch": str(check.scratch)}
    for name, part in PARTS.items():
        if name in parts:
            result = report["parts"][name] = {}  # filled as the part goes: kept if it breaks
            try:
                part(check, result)
            except Exception as e:  # a broken part must not stop the others; its log says more
                result["error"] = f"{type(e).__name__}: {e}"
            # After every part, so that a check stopped from outside leaves what it measured.
            write(report, check, samples, args.out, time.monotonic() - begun)
    samples.stop()
    print((args.out / "summary.md").read_text(), end="")
    return 0 if all(s["status"] == "ok" for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
