"""On a CUDA GPU: decoding gives the CPU's outputs, checkpoints move between the devices, and
mixed precision trains. Every test here is skipped without CUDA (CI has none); `pytest -m gpu
tests/test_gpu.py` selects them, and scripts/gpu_check.sh runs them on a GPU machine."""

import copy
import math
from pathlib import Path

import pytest
import torch

from seq2seq.commands import train
from seq2seq.commands.plot_curves import Run
from seq2seq.translator import Translator
from tests.test_precision import MAX_CHANGED_TOKENS, changed_token_share

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("decoding_one_thread"),
]

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SCORE_TOLERANCE = 1e-4  # float32 on both devices: summed log-probabilities agree far closer
SEARCHES = {"greedy": {"beam_size": 1}, "beam5": {"beam_size": 5, "nbest": 3}}


@pytest.fixture
def exact_float32():
    """TF32 off while comparing with the CPU: cuDNN's LSTM uses it by default, and its 10-bit
    mantissa moves scores by far more than float32 rounding does."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_cuda(model, tokenizer) -> Translator:
    # A copy: Translator moves the model it is given, and the session's fixture model must stay
    # on the CPU for the other tests.
    return Translator(copy.deepcopy(model), tokenizer, tokenizer, device="cuda")


def assert_same(expected, actual) -> None:
    """Two `translate` results: the same ids in every n-best list, scores within tolerance."""
    for want, got in zip(expected, actual, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        for w, g in zip(want, got, strict=True):
            assert g.score == pytest.approx(w.score, abs=SCORE_TOLERANCE)


def train_tiny(root: Path, *options: str) -> None:
    """configs/tiny.yaml trained on one GPU through the training command."""
    train.main([
        "--config", str(TINY), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "gpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", *options,
    ])


@pytest.mark.parametrize("search", SEARCHES)
def test_cuda_decodes_as_the_cpu(
    search, exact_float32, decoding_model, decoding_tokenizer, decoding_val_sources
):
    options = SEARCHES[search]
    cpu = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    expected = cpu.translate(decoding_val_sources, **options)
    cuda = on_cuda(decoding_model, decoding_tokenizer)
    assert_same(expected, cuda.translate(decoding_val_sources, **options))


@pytest.mark.parametrize("search", SEARCHES)
def test_cuda_batch_invariance(
    search, exact_float32, decoding_model, decoding_tokenizer, decoding_val_sources
):
    """A sentence translates the same alone as in a batch of mixed lengths (padding, masks and
    finished rows on the GPU)."""
    options = SEARCHES[search]
    translator = on_cuda(decoding_model, decoding_tokenizer)
    alone = [translator.translate([text], **options)[0] for text in decoding_val_sources]
    together = translator.translate(
        decoding_val_sources, batch_size=len(decoding_val_sources), **options
    )
    assert_same(alone, together)


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuda_run")
    train_tiny(root)
    (best,) = root.glob("**/checkpoints/best-*.ckpt")
    return best


def test_checkpoint_trained_on_cuda_translates_on_the_cpu(
    cuda_checkpoint, exact_float32, decoding_val_sources
):
    cpu = Translator.from_checkpoint(cuda_checkpoint)
    assert {p.device.type for p in cpu.model.parameters()} == {"cpu"}
    expected = cpu.translate(decoding_val_sources, beam_size=5)
    assert any(nbest[0].tokens for nbest in expected)
    cuda = Translator.from_checkpoint(cuda_checkpoint, device="cuda")
    assert_same(expected, cuda.translate(decoding_val_sources, beam_size=5))


def test_cpu_checkpoint_translates_on_cuda(
    decoding_checkpoint, exact_float32, decoding_val_sources
):
    expected = Translator.from_checkpoint(decoding_checkpoint).translate(decoding_val_sources)
    cuda = Translator.from_checkpoint(decoding_checkpoint, device="cuda")
    assert_same(expected, cuda.translate(decoding_val_sources))


@pytest.mark.parametrize("search", SEARCHES)
def test_cuda_bf16_decodes_close_to_float32(
    decoding_model, decoding_tokenizer, decoding_val_sources, search
):
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    cuda = on_cuda(decoding_model, decoding_tokenizer)
    float32 = cuda.translate(decoding_val_sources, **SEARCHES[search])
    cuda.autocast_dtype = torch.bfloat16
    bf16 = cuda.translate(decoding_val_sources, **SEARCHES[search])
    assert changed_token_share(float32, bf16) <= MAX_CHANGED_TOKENS
    assert all(math.isfinite(h.score) for nbest in bf16 for h in nbest)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains(precision, tmp_path):
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    train_tiny(tmp_path, "--trainer.precision", precision, "--trainer.max_steps", "50")
    points = Run(tmp_path).points
    losses = [value for _, value in points["train/loss"]]
    assert len(losses) >= 5 and all(map(math.isfinite, losses)), losses
    assert losses[-1] < losses[0], losses  # the updates were applied, not all skipped
    assert points["val/bleu"] and all(math.isfinite(v) for _, v in points["val/bleu"])
