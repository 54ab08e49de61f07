"""Plot validation BLEU and training loss of runs against wall-clock time, one line per run.

    python scripts/plot_curves.py runs/baseline runs/bigger --output curves.png

Each RUN_DIR is searched for TensorBoard event files; a resumed run has several (one per
lightning_logs/version_N/), and their points are joined in wall-time order. Time counts from
the run's first event, so runs of different speed are compared at equal cost; the axis is in
minutes, or in hours when a run lasts longer than two.
"""

import argparse
import math
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from seq2seq.arguments import OneLineErrorParser

PROG = "seq2seq-plot-curves"  # its console script's name, in every message
PANELS = {"val/bleu": "validation BLEU", "train/loss": "training loss"}


class Run:
    """One run folder's points: (seconds since its start, value) per tag, in time order."""

    def __init__(self, run_dir: Path):
        event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
        if not event_dirs:
            raise FileNotFoundError(f"{run_dir}: no TensorBoard event files below it")
        self.name = run_dir.resolve().name
        start = math.inf
        points: dict[str, list[tuple[float, float]]] = {tag: [] for tag in PANELS}
        for event_dir in event_dirs:
            # size_guidance 0 keeps every point; the default keeps a random sample of long runs.
            events = EventAccumulator(str(event_dir), size_guidance={SCALARS: 0})
            events.Reload()
            start = min(start, events.FirstEventTimestamp())
            logged = events.Tags()["scalars"]
            for tag in PANELS:
                if tag in logged:
                    points[tag] += [(e.wall_time, e.value) for e in events.Scalars(tag)]
        self.points = {
            tag: [(time - start, value) for time, value in sorted(series)]
            for tag, series in points.items()
        }

    def duration(self) -> float:
        return max((series[-1][0] for series in self.points.values() if series), default=0.0)


LINE_STYLES = ("-", "--", ":", "-.")


def plot(runs: list[Run], output: Path, groups: list[str] | None = None) -> None:
    """groups: one label per run; runs with the same label (the seeds of one setting) share a
    colour and differ in line style. Default: every run its own colour."""
    groups = groups or [run.name for run in runs]
    colours = {group: f"C{i}" for i, group in enumerate(dict.fromkeys(groups))}
    styles = [LINE_STYLES[groups[:i].count(group) % len(LINE_STYLES)]
              for i, group in enumerate(groups)]
    hours = max(run.duration() for run in runs) > 2 * 3600
    unit, seconds_per_unit = ("hours", 3600) if hours else ("minutes", 60)
    figure = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (tag, label) in zip(axes, PANELS.items(), strict=True):
        for run, group, style in zip(runs, groups, styles, strict=True):
            times = [t / seconds_per_unit for t, _ in run.points[tag]]
            values = [v for _, v in run.points[tag]]
            # Validation is rare enough to show its points; loss is logged too often for that.
            marker = "o" if tag.startswith("val/") else None
            ax.plot(times, values, color=colours[group], linestyle=style, marker=marker,
                    markersize=3, label=run.name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[-1].set_xlabel(f"wall-clock time since the run started ({unit})")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--output", type=Path, default=Path("curves.png"), help="a .png file")
    args = parser.parse_args(argv)
    # matplotlib would write "OUT.png" for an OUT without a known suffix: not the file named.
    if args.output.is_dir():
        parser.error(f"--output {args.output}: a folder; name a file, e.g. curves.png")
    suffix = args.output.suffix.lower().removeprefix(".")
    if suffix not in FigureCanvasAgg.get_supported_filetypes():
        parser.error(f"--output {args.output}: name a .png file (or .svg, .pdf)")
    try:
        runs = [Run(run_dir) for run_dir in args.run_dirs]
        plot(runs, args.output)
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
