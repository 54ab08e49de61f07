"""Which LSTM variant? Train the default config with only the cell (or recurrent dropout, or the
forget-gate bias) changed, each for the same wall-clock time on one core, two runs side by side,
then decode test2016 with beam 5 and write the README's table and plot.

    python scripts/cell_study.py --out runs/cell_study12        # every run, 12 minutes each
    python scripts/cell_study.py --out runs/cell_study12 --runs gru_s1 lstm_s1
    python scripts/cell_study.py --out runs/cell_study12 --report-only   # table + plot

A run whose folder already holds a `last.ckpt` is not trained again, so a stopped study goes on
where it stopped. Seeds: three for the plain LSTM and for the two variants ahead of it in a first,
single-seed look (the layer-normalised LSTM and the GRU), two for CIFG (as good and cheaper in
Greff et al. 2017; it also makes the count even, so every run has a partner); one for the others.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from seq2seq.checkpoint import load_model
from seq2seq.commands.plot_curves import Run, plot

# name -> training options beyond the default config
VARIANTS = {
    "lstm": [],
    "peephole": ["--model.cell", "peephole"],
    "cifg": ["--model.cell", "cifg"],
    "gru": ["--model.cell", "gru"],
    "layernorm_lstm": ["--model.cell", "layernorm_lstm"],
    "lstm_recurrent_dropout_0.2": ["--model.recurrent_dropout", "0.2"],
    "lstm_forget_bias_1": ["--model.forget_bias", "1"],
}
SEEDS = {"lstm": 3, "layernorm_lstm": 3, "gru": 3, "cifg": 2}
QUARTERS = (0.25, 0.5, 0.75, 1.0)  # of the training time: where the table reads val BLEU
TEST_SRC = "data/multi30k/test_2016_flickr.de.gz"
TEST_REF = "data/multi30k/test_2016_flickr.en.gz"


def runs() -> dict[str, list[str]]:
    """Every run's name -> its training options."""
    return {
        f"{variant}_s{seed}": [*options, "--seed_everything", str(seed)]
        for variant, options in VARIANTS.items()
        for seed in range(1, SEEDS.get(variant, 1) + 1)
    }


def variant_of(name: str) -> str:
    """A run's name (`runs`' keys: variant_s<seed>) -> its variant."""
    return name.rsplit("_s", 1)[0]


def train(names: list[str], minutes: int, out: Path) -> None:
    """Two at a time, one core each: the recipes' arrangement."""
    pending = [n for n in names if not list((out / n).glob("**/last.ckpt"))]
    for start in range(0, len(pending), 2):
        processes = []
        for name in pending[start : start + 2]:
            command = [
                sys.executable, "scripts/train.py", *runs()[name],
                "--trainer.max_time", f"00:00:{minutes:02d}:00",
                "--trainer.default_root_dir", str(out / name),
                "--trainer.enable_progress_bar", "false",
            ]
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            processes.append((subprocess.Popen(command, stdout=log, stderr=log, env=env), log))
        for process, log in processes:
            process.wait()
            log.close()


def decode(name: str, out: Path) -> dict:
    """test2016, beam 5, the run's best checkpoint: the scores JSON (cached in the run)."""
    cached = out / name / "test2016_beam5.json"
    if not cached.exists():
        (best,) = (out / name).glob("**/checkpoints/best-*.ckpt")
        done = subprocess.run(
            [sys.executable, "scripts/decode.py", "--checkpoint", str(best), "--beam-size", "5",
             "--src", TEST_SRC, "--ref", TEST_REF, "--json"],
            capture_output=True, text=True, check=True,
        )
        cached.write_text(done.stdout.splitlines()[-1])
    return json.loads(cached.read_text())


def val_bleu_at(run: Run, minute: float) -> float | None:
    """The last val/bleu logged by `minute` minutes into the run (a run's last validation,
    at its time limit, comes a few seconds after it: counted as at the limit)."""
    seen = [value for time, value in run.points["val/bleu"] if time <= minute * 60 + 30]
    return seen[-1] if seen else None


def speed_and_size(name: str, out: Path) -> tuple[float, int]:
    """The median of the logged training tokens/s, and the model's parameter count."""
    (event_dir,) = {p.parent for p in (out / name).glob("**/events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir), size_guidance={SCALARS: 0})
    events.Reload()
    speeds = sorted(e.value for e in events.Scalars("train/tokens_per_s"))
    (last,) = (out / name).glob("**/checkpoints/last.ckpt")
    params = sum(p.numel() for p in load_model(last).model.parameters())
    return speeds[len(speeds) // 2], params


def report(names: list[str], out: Path, minutes: int) -> str:
    marks = [minutes * q for q in QUARTERS]
    rows = [
        "| run | " + " | ".join(f"val BLEU {m:g} min" for m in marks)
        + " | test2016 beam 5 | parameters | tgt tok/s |",
        "|---|" + "---|" * (len(marks) + 3),
    ]
    for name in names:
        run = Run(out / name)
        bleus = [val_bleu_at(run, m) for m in marks]
        cells = [f"{b:.2f}" if b is not None else "" for b in bleus]
        speed, params = speed_and_size(name, out)
        rows.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {decode(name, out)['bleu']:.2f} | {params / 1e6:.2f}M | {speed:,.0f} |"
        )
    return "\n".join(rows)


def summary(names: list[str], out: Path) -> str:
    """One row per variant: its seeds' test2016 BLEU as mean and range, best-first."""
    scores: dict[str, list[float]] = {}
    for name in names:
        scores.setdefault(variant_of(name), []).append(decode(name, out)["bleu"])
    rows = ["| variant | seeds | test2016 beam 5: mean | min – max |", "|---|---|---|---|"]
    for variant, bleus in sorted(scores.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        rows.append(f"| {variant} | {len(bleus)} | {sum(bleus) / len(bleus):.2f} | "
                    f"{min(bleus):.2f} – {max(bleus):.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for every run")
    parser.add_argument(
        "--minutes", type=int, default=12, help="training time of each run (README's study: 12)"
    )
    parser.add_argument("--runs", nargs="*", choices=sorted(runs()), help="default: all")
    parser.add_argument("--report-only", action="store_true", help="no training")
    args = parser.parse_args(argv)
    names = args.runs or list(runs())
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        train(names, args.minutes, args.out)
    table = report(names, args.out, args.minutes) + "\n\n" + summary(names, args.out)
    (args.out / "table.md").write_text(table + "\n")
    variants = [variant_of(name) for name in names]  # a colour per variant
    plot([Run(args.out / name) for name in names], args.out / "cell_study.png", variants)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
