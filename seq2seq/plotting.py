"""Attention heatmaps: source pieces across, target pieces down.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot: no display is
needed, no global backend is switched, and no figure outlives its caller.
"""

import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

INCHES_PER_PIECE = 0.3
MAX_INCHES = 40.0  # a 250-piece sentence still makes a figure one can open


def _label(piece: str) -> str:
    # "$" would start matplotlib's mathtext and can make a label fail to render.
    return piece.replace("$", r"\$")


def attention_figure(
    src_pieces: list[str], tgt_pieces: list[str], alphas: torch.Tensor | np.ndarray
) -> Figure:
    """alphas (T, S): row t is the attention that produced target piece t over source pieces."""
    alphas = alphas.detach().float().cpu().numpy() if torch.is_tensor(alphas) else alphas
    alphas = np.asarray(alphas, dtype=np.float32)
    rows, cols = alphas.shape
    if (rows, cols) != (len(tgt_pieces), len(src_pieces)):
        raise ValueError(
            f"attention is {rows}x{cols} but there are {len(tgt_pieces)} target and "
            f"{len(src_pieces)} source pieces"
        )
    width = min(MAX_INCHES, 3.0 + INCHES_PER_PIECE * cols)
    height = min(MAX_INCHES, 2.0 + INCHES_PER_PIECE * rows)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        alphas, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    axes.set_xticks(range(cols), labels=[_label(p) for p in src_pieces], rotation=90)
    axes.set_yticks(range(rows), labels=[_label(p) for p in tgt_pieces])
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return figure


def save_attention_png(
    path: str | os.PathLike,
    src_pieces: list[str],
    tgt_pieces: list[str],
    alphas: torch.Tensor | np.ndarray,
    dpi: int = 100,
) -> None:
    attention_figure(src_pieces, tgt_pieces, alphas).savefig(path, dpi=dpi)
