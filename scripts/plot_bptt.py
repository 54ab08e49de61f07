"""How far back a gradient reaches: the plain LSTM against a plain tanh RNN, on the same data.

    python scripts/plot_bptt.py --output docs/bptt_gradient_norms.png    # CPU, about a second

The data needs memory: sequences of noise whose first step also carries one of 4 labels, to be
named from the last hidden state. For each model, initialised as PyTorch initialises it, the
plot shows the norm of the gradient of the loss with respect to the input x_t against how many
steps t lies before the loss. Through the LSTM's cell state the gradient is multiplied by the
forget gate once per step; through the tanh RNN by W_h diag(1 - h_t^2). With PyTorch's
initialisation the forget gate starts near sigmoid(0) = 0.5, so the plain LSTM starts no better
than the RNN; a forget-gate bias moves it towards 1 and the gradient reaches much further
(docs/lstm.md, "Backpropagation through time").
"""

import argparse
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from seq2seq.model.cells import CellLayer

STEPS, LABELS, INPUT, HIDDEN, BATCH = 40, 4, 8, 32, 64


class Classifier(nn.Module):
    """A one-layer recurrence read out at its last step; `rnn(x) -> outputs (B, T, H)`."""

    def __init__(self, kind: str, forget_bias: float = 0.0):
        super().__init__()
        if kind == "tanh":
            self.rnn = nn.RNN(INPUT, HIDDEN, nonlinearity="tanh", batch_first=True)
        else:
            self.rnn = CellLayer("lstm", INPUT, HIDDEN, forget_bias=forget_bias)
        self.readout = nn.Linear(HIDDEN, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, I) -> logits (B, LABELS) from the last step."""
        if isinstance(self.rnn, nn.RNN):
            outputs, _ = self.rnn(x)
        else:
            outputs, _ = self.rnn(x, torch.ones(x.shape[:2], dtype=torch.bool))
        return self.readout(outputs[:, -1])


def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """-> x (B, T, I): noise, with the label one-hot in the first step's first dims; labels (B,)."""
    x = torch.randn(BATCH, STEPS, INPUT, generator=generator)
    labels = torch.randint(LABELS, (BATCH,), generator=generator)
    x[:, 0, :LABELS] = 3.0 * nn.functional.one_hot(labels, LABELS)
    return x, labels


def gradient_norms(model: Classifier, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-> (T,): mean over the batch of ||dL/dx_t||, ordered from the last step backwards."""
    x = x.clone().requires_grad_()
    nn.functional.cross_entropy(model(x), labels, reduction="sum").backward()
    return x.grad.norm(dim=2).mean(dim=0).flip(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/bptt_gradient_norms.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x, labels = batch(torch.Generator().manual_seed(args.seed))
    for label, kind, forget_bias in (
        ("tanh RNN", "tanh", 0.0),
        ("LSTM", "lstm", 0.0),
        ("LSTM, forget bias 1", "lstm", 1.0),
        ("LSTM, forget bias 3", "lstm", 3.0),
    ):
        torch.manual_seed(args.seed)
        axes.semilogy(gradient_norms(Classifier(kind, forget_bias), x, labels).numpy(), label=label)
    axes.set_title(f"Gradient through time at initialisation (hidden {HIDDEN}, batch {BATCH})")
    axes.set_xlabel("steps between input x_t and the loss")
    axes.set_ylabel("||dL / dx_t||, mean over the batch")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
