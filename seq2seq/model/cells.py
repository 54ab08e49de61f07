"""Recurrent cells written from their equations, one class each (docs/lstm.md shows each
equation beside the line here that computes it).

One interface for every cell. A recurrent layer computes two affine maps and hands them to its
cell for one time step:

    x_gates = W_x x_t + b    (B, G*H)  the caller's: precomputed for all steps where it can be
    h_gates = W_h h_{t-1}    (B, G*H)  the caller's: h_{t-1} after the recurrent dropout mask
    state   = cell(x_gates, h_gates, state)

G is the cell's `num_gates`; a state is a tuple of (B, H) tensors whose first is h_t. The cell
holds only what its equations add to W_x, W_h and b: peepholes, layer-norm gains, the GRU's
b_hn. Keeping the weight matrices with the caller lets the decoder split W_x into an embedding
part (applied to all T steps at once) and a context part, under the parameter names it had
before cells were switchable. `CellLayer` is that caller for a plain layer, with the loop over a
padded sequence in either direction.

Gate order inside x_gates and h_gates follows PyTorch (i, f, g, o for the LSTM; r, z, n for the
GRU), so `nn.LSTM` and `nn.GRU` weights load directly (the equality tests do that).
"""

import math

import torch
from torch import nn

State = tuple[torch.Tensor, ...]  # each (B, H); state[0] is h_t


def uniform_parameter(hidden_size: int, *shape: int) -> nn.Parameter:
    """A parameter initialised as PyTorch initialises every recurrent weight and bias:
    U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class Cell(nn.Module):
    num_gates: int  # G: pre-activations per hidden unit in x_gates and h_gates
    keep_gate: int  # the chunk of b whose gate keeps the old state: forget_bias goes there
    keep_sign: float = 1.0  # -1 where a larger pre-activation forgets more (CIFG)
    input_bias: bool = True  # False: the cell has its own bias; the caller's x_gates has none
    state_size: int = 2  # tensors in a state: (h, c); 1 for the GRU, which has no cell state

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    def init_state(self, h: torch.Tensor) -> State:
        """h (B, H) -> the state that starts from it (cell state, where there is one, zero)."""
        return h, torch.zeros_like(h)

    def gate_weight(self, input_size: int) -> nn.Parameter:
        """A layer's W_x or W_h for this cell: (G*H, input_size)."""
        return uniform_parameter(self.hidden_size, self.num_gates * self.hidden_size, input_size)

    def gate_bias(self, forget_bias: float) -> nn.Parameter | None:
        """A layer's b for this cell (G*H,), forget_bias added; None where the cell holds its
        own (input_bias False)."""
        if not self.input_bias:
            return None
        bias = uniform_parameter(self.hidden_size, self.num_gates * self.hidden_size)
        self.add_forget_bias(bias, forget_bias)
        return bias

    @classmethod
    def add_forget_bias(cls, bias: torch.Tensor, value: float) -> None:
        """Add `value` to the initial bias b (G*H,) of the gate that keeps the old state
        (Jozefowicz et al. 2015: a forget-gate bias of 1 keeps gradients flowing early on)."""
        with torch.no_grad():
            bias.view(cls.num_gates, -1)[cls.keep_gate] += cls.keep_sign * value


class LSTM(Cell):
    """Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000."""

    num_gates, keep_gate = 4, 1

    def forward(self, x_gates: torch.Tensor, h_gates: torch.Tensor, state: State) -> State:
        _, cell = state  # (B, H)
        i, f, g, o = (x_gates + h_gates).chunk(4, dim=1)  # each (B, H)
        input_gate, forget_gate, output_gate = i.sigmoid(), f.sigmoid(), o.sigmoid()
        cell_candidate = g.tanh()
        cell = forget_gate * cell + input_gate * cell_candidate
        hidden = output_gate * cell.tanh()
        return hidden, cell


class PeepholeLSTM(Cell):
    """Gers & Schmidhuber 2000: the gates also see the cell state through diagonal weights,
    c_{t-1} for the input and forget gates, the new c_t for the output gate."""

    num_gates, keep_gate = 4, 1

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)
        self.peephole_input = uniform_parameter(hidden_size, hidden_size)  # p_i (H,)
        self.peephole_forget = uniform_parameter(hidden_size, hidden_size)  # p_f (H,)
        self.peephole_output = uniform_parameter(hidden_size, hidden_size)  # p_o (H,)

    def forward(self, x_gates: torch.Tensor, h_gates: torch.Tensor, state: State) -> State:
        _, cell = state  # (B, H)
        i, f, g, o = (x_gates + h_gates).chunk(4, dim=1)  # each (B, H)
        input_gate = torch.sigmoid(i + self.peephole_input * cell)
        forget_gate = torch.sigmoid(f + self.peephole_forget * cell)
        cell_candidate = g.tanh()
        cell = forget_gate * cell + input_gate * cell_candidate
        output_gate = torch.sigmoid(o + self.peephole_output * cell)
        hidden = output_gate * cell.tanh()
        return hidden, cell


class CIFG(Cell):
    """Coupled input and forget gate (Greff et al. 2017): f_t = 1 - i_t, one gate fewer.
    A larger input-gate pre-activation forgets more, hence keep_sign -1."""

    num_gates, keep_gate, keep_sign = 3, 0, -1.0

    def forward(self, x_gates: torch.Tensor, h_gates: torch.Tensor, state: State) -> State:
        _, cell = state  # (B, H)
        i, g, o = (x_gates + h_gates).chunk(3, dim=1)  # each (B, H)
        input_gate, output_gate = i.sigmoid(), o.sigmoid()
        forget_gate = 1.0 - input_gate
        cell_candidate = g.tanh()
        cell = forget_gate * cell + input_gate * cell_candidate
        hidden = output_gate * cell.tanh()
        return hidden, cell


class GRU(Cell):
    """Cho et al. 2014, in PyTorch's (and cuDNN's) form: the reset gate multiplies W_hn h_{t-1}
    + b_hn rather than h_{t-1} before the product. No cell state: the state is (h,)."""

    num_gates, keep_gate, state_size = 3, 1, 1  # z keeps the old state: see `hidden` below

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)
        self.bias_hn = uniform_parameter(hidden_size, hidden_size)  # b_hn (H,), inside r * (...)

    def init_state(self, h: torch.Tensor) -> State:
        return (h,)

    def forward(self, x_gates: torch.Tensor, h_gates: torch.Tensor, state: State) -> State:
        (hidden,) = state  # (B, H)
        x_r, x_z, x_n = x_gates.chunk(3, dim=1)  # each (B, H)
        h_r, h_z, h_n = h_gates.chunk(3, dim=1)  # each (B, H)
        reset_gate = torch.sigmoid(x_r + h_r)
        update_gate = torch.sigmoid(x_z + h_z)
        hidden_candidate = torch.tanh(x_n + reset_gate * (h_n + self.bias_hn))
        hidden = (1.0 - update_gate) * hidden_candidate + update_gate * hidden
        return (hidden,)


class LayerNormLSTM(Cell):
    """Ba et al. 2016 (eqs. 20-22): the input and recurrent pre-activations are each normalised
    over their 4H units, per time step, and so is the new cell before its tanh. The shift of
    the input normalisation is the bias b (a second one would be redundant), so the caller adds
    none, and forget_bias goes into that shift."""

    num_gates, keep_gate, input_bias = 4, 1, False

    def __init__(self, hidden_size: int, forget_bias: float = 0.0):
        super().__init__(hidden_size)
        self.input_norm = nn.LayerNorm(4 * hidden_size)  # gain alpha_x, shift = b
        self.recurrent_norm = nn.LayerNorm(4 * hidden_size, bias=False)  # gain alpha_h
        self.cell_norm = nn.LayerNorm(hidden_size)  # gain alpha_c, shift beta_c
        self.add_forget_bias(self.input_norm.bias, forget_bias)

    def forward(self, x_gates: torch.Tensor, h_gates: torch.Tensor, state: State) -> State:
        _, cell = state  # (B, H)
        gates = self.input_norm(x_gates) + self.recurrent_norm(h_gates)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
        input_gate, forget_gate, output_gate = i.sigmoid(), f.sigmoid(), o.sigmoid()
        cell_candidate = g.tanh()
        cell = forget_gate * cell + input_gate * cell_candidate
        hidden = output_gate * torch.tanh(self.cell_norm(cell))
        return hidden, cell


CELLS: dict[str, type[Cell]] = {
    "lstm": LSTM,
    "peephole": PeepholeLSTM,
    "cifg": CIFG,
    "gru": GRU,
    "layernorm_lstm": LayerNormLSTM,
}


def make_cell(name: str, hidden_size: int, forget_bias: float = 0.0) -> Cell:
    """The cell called `name` (a key of CELLS). forget_bias reaches the cell only where the cell
    holds the bias itself; otherwise the caller adds it to its b with `add_forget_bias`."""
    cell_class = CELLS[name]
    if cell_class.input_bias:
        return cell_class(hidden_size)
    return cell_class(hidden_size, forget_bias)


def recurrent_dropout_mask(
    batch: int, hidden_size: int, p: float, training: bool, like: torch.Tensor
) -> torch.Tensor | None:
    """One dropout mask per sequence for h_{t-1}, reused at every step (Gal & Ghahramani 2016):
    (B, H) of 0 and 1/(1-p), or None when off (p = 0 or not training)."""
    if not training or p == 0.0:
        return None
    keep = torch.full((batch, hidden_size), 1.0 - p, dtype=like.dtype, device=like.device)
    return torch.bernoulli(keep) / (1.0 - p)


class CellLayer(nn.Module):
    """One recurrent layer around a cell: W_x (G*H, I), W_h (G*H, H), b (G*H,)."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 0.0,
        recurrent_dropout: float = 0.0,
    ):
        super().__init__()
        self.cell = make_cell(cell, hidden_size, forget_bias)
        self.weight_ih = self.cell.gate_weight(input_size)
        self.weight_hh = self.cell.gate_weight(hidden_size)
        self.bias = self.cell.gate_bias(forget_bias)
        self.hidden_size = hidden_size
        self.recurrent_dropout = recurrent_dropout

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., I) -> W_x x + b (..., G*H): one matrix product for every step at once."""
        return nn.functional.linear(x, self.weight_ih, self.bias)

    def step(
        self, x_gates: torch.Tensor, state: State, h_mask: torch.Tensor | None
    ) -> State:
        """x_gates (B, G*H) from `input_gates`, state of (B, H) tensors -> the next state."""
        h = state[0] if h_mask is None else state[0] * h_mask
        # linear, not h @ weight.t(): see DecoderLSTM._step (training's autocast casts it once)
        return self.cell(x_gates, nn.functional.linear(h, self.weight_hh), state)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False
    ) -> tuple[torch.Tensor, State]:
        """Run over a padded batch, from a zero state.

        x (B, T, I); mask (B, T) bool, True at real steps, which come first in each row.
        reverse: read each row from its last real step back to its first.
        Returns outputs (B, T, H), zero at padded steps, and the final state. A padded step
        leaves the state as it was, so a row's result does not depend on its batch's padding.
        """
        batch = x.size(0)
        x_gates = self.input_gates(x)  # (B, T, G*H)
        state = self.cell.init_state(x.new_zeros(batch, self.hidden_size))
        h_mask = recurrent_dropout_mask(
            batch, self.hidden_size, self.recurrent_dropout, self.training, x
        )
        # unbind, not x_gates[:, t]: indexing would make backward sum T full-size gradients.
        steps = list(zip(x_gates.unbind(1), mask.unsqueeze(2).unbind(1), strict=True))
        outputs = []
        for x_gates_t, real_t in reversed(steps) if reverse else steps:  # (B, G*H), (B, 1)
            new = self.step(x_gates_t, state, h_mask)
            state = tuple(torch.where(real_t, n, s) for n, s in zip(new, state, strict=True))
            outputs.append(state[0] * real_t)
        if reverse:
            outputs.reverse()
        return torch.stack(outputs, dim=1), state


# The names of one layer's weights in PyTorch's fused nn.LSTM / nn.GRU (each with a suffix
# _l{layer}[_reverse]) and nn.LSTMCell, and in a `CellLayer` of the same cell.
FUSED_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
LAYER_WEIGHTS = {
    "lstm": ("weight_ih", "weight_hh", "bias"),
    "gru": ("weight_ih", "weight_hh", "bias", "cell.bias_hn"),
}


def _fused_to_layer(cell: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PyTorch's layer adds b_ih and b_hh to the gates; a `CellLayer` adds its one b, the same
    function with b = b_ih + b_hh. But the GRU's b_hn sits inside r * (W_hn h + b_hn): that part
    of b_hh is the cell's bias_hn, not part of b."""
    bias_ih, bias_hh = weights["bias_ih"], weights["bias_hh"]
    layer = {"weight_ih": weights["weight_ih"], "weight_hh": weights["weight_hh"]}
    if cell == "gru":
        b_hr_hz, b_hn = bias_hh.split([2 * bias_hh.size(0) // 3, bias_hh.size(0) // 3])
        bias = bias_ih + torch.cat([b_hr_hz, torch.zeros_like(b_hn)])
        return layer | {"bias": bias, "cell.bias_hn": b_hn}
    return layer | {"bias": bias_ih + bias_hh}


def _layer_to_fused(cell: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `_fused_to_layer`: b_ih = b, and b_hh zero but for the GRU's b_hn."""
    bias = weights["bias"]
    bias_hh = torch.zeros_like(bias)
    if cell == "gru":
        bias_hh = torch.cat([bias_hh[: 2 * bias.size(0) // 3], weights["cell.bias_hn"]])
    return {
        "weight_ih": weights["weight_ih"],
        "weight_hh": weights["weight_hh"],
        "bias_ih": bias,
        "bias_hh": bias_hh,
    }


def load_other_layout(
    state_dict: dict, cell: str, fused_keys: dict[str, str], layer_keys: dict[str, str],
    fused_here: bool,
) -> None:
    """Rewrite one layer's weights in `state_dict`, in place, from the other layout to this
    module's: PyTorch's fused layer (`fused_keys`: FUSED_WEIGHTS -> state_dict key) where
    `fused_here`, else a `CellLayer` (`layer_keys`: LAYER_WEIGHTS[cell] -> key). The LSTM and
    the GRU run fused only without recurrent dropout, and fine-tuning may change that dropout:
    the same weights, laid out either way, compute the same function. A state_dict that holds
    neither layout's keys is left alone, for load_state_dict to name what is missing."""
    source, target = (layer_keys, fused_keys) if fused_here else (fused_keys, layer_keys)
    # nn.LSTMCell and a decoder's CellLayer share the weights' keys: only the biases tell.
    if any(key not in state_dict for key in source.values()) or any(
        key in state_dict for key in set(target.values()) - set(source.values())
    ):
        return
    weights = {name: state_dict.pop(key) for name, key in source.items()}
    converted = _layer_to_fused(cell, weights) if fused_here else _fused_to_layer(cell, weights)
    state_dict.update({target[name]: tensor for name, tensor in converted.items()})
