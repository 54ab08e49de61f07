"""Self-contained checkpoints: weights, model config and both SentencePiece models in one file.

Layout (a Lightning checkpoint written by training has the same two keys plus its own):
    {"state_dict": {"model.<param>": tensor, ...},
     "seq2seq": {"format": 2, "model_config": {...}, "src_vocab_size": int,
                 "tgt_vocab_size": int, "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
                 "src_spm": bytes, "tgt_spm": bytes, "src_lang": str, "tgt_lang": str}}
Format 1 kept the vocabulary sizes and the pad id inside "model_config"; it still loads.

Loading uses `torch.load(..., weights_only=True)` only: a checkpoint is data, never code.
"""

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from seq2seq.atomic import written_whole
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.model import ModelConfig, Seq2Seq, check_vocab_sizes
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

FORMAT = 2
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
PREFIX = "model."  # where the LightningModule keeps the Seq2Seq, so both layouts agree


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


class LoadedModel(NamedTuple):
    model: Seq2Seq  # in eval mode
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    src_lang: str
    tgt_lang: str


def make_payload(
    model: Seq2Seq,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    src_lang: str,
    tgt_lang: str,
) -> dict:
    """Everything besides the weights that translation needs; stored under key "seq2seq"."""
    return {
        "format": FORMAT,
        "model_config": dataclasses.asdict(model.config),
        "src_vocab_size": model.src_vocab_size,
        "tgt_vocab_size": model.tgt_vocab_size,
        "special_ids": SPECIAL_IDS,
        "src_spm": src_tokenizer.model_proto,
        "tgt_spm": tgt_tokenizer.model_proto,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
    }


def readable_by_all(path: str | os.PathLike) -> None:
    """rw-r--r--: a model file is for sharing, but safetensors' writer may create it readable
    by its owner alone."""
    os.chmod(path, 0o644)


def save_model(
    path: str | os.PathLike,
    model: Seq2Seq,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    src_lang: str,
    tgt_lang: str,
) -> None:
    """Write a checkpoint atomically: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    checkpoint = {
        "state_dict": {PREFIX + name: t for name, t in model.state_dict().items()},
        "seq2seq": make_payload(model, src_tokenizer, tgt_tokenizer, src_lang, tgt_lang),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as f:
        torch.save(checkpoint, f)


# Lines of torch.load's messages that say nothing about this file.
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def error_reason(error: BaseException, limit: int = 160) -> str:
    """The informative first sentence of an exception, prefixed with its type."""
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    text = f"{type(error).__name__}: {lines[0].split('. ')[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: Path, map_location, mmap: bool = False) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot load {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter; errors still raise
            checkpoint = torch.load(path, map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        # weights_only names the global it blocked; anything else it cannot read is damage.
        blocked = [line for line in str(e).splitlines() if "unsupported global" in line.lower()]
        if blocked:
            raise CheckpointError(
                f"refusing to load {path}: it contains objects other than tensors and plain "
                f"data ({blocked[0].strip()})"
            ) from None
        raise CheckpointError(
            f"cannot load {path}: not a readable PyTorch file, truncated or corrupted "
            f"({error_reason(e)})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("seq2seq"), dict):
        raise CheckpointError(f"{path}: not a seq2seq checkpoint (no 'seq2seq' entry)")
    return checkpoint


def read_tokenizer(
    path: Path, meta: dict, side: str, vocab_size: int | None = None
) -> Tokenizer:
    try:
        tokenizer = Tokenizer(meta[f"{side}_spm"])
    except Exception as e:
        raise CheckpointError(
            f"{path}: bad {side} SentencePiece model ({error_reason(e)})"
        ) from None
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise CheckpointError(
            f"{path}: the {side} tokenizer has {tokenizer.vocab_size} pieces but the model "
            f"expects {vocab_size}"
        )
    return tokenizer


def _some(names: list[str]) -> str:
    """The first three names, and "..." if there are more: enough to find the rest."""
    return f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def load_weights(path: Path, model: Seq2Seq, state_dict: dict) -> None:
    weights = {
        k[len(PREFIX) :]: v
        for k, v in state_dict.items()
        if isinstance(k, str) and k.startswith(PREFIX)
    }
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    # A number, a string, a sparse tensor: only a dense tensor can be a weight.
    not_dense = sorted(
        k
        for k in expected.keys() & weights.keys()
        if not isinstance(weights[k], torch.Tensor) or weights[k].layout != torch.strided
    )
    mismatched = sorted(
        k
        for k in expected.keys() & weights.keys()
        if k not in not_dense and weights[k].shape != expected[k].shape
    )
    wrong_dtype = sorted(
        k
        for k in expected.keys() & weights.keys()
        if k not in not_dense and k not in mismatched and weights[k].dtype != expected[k].dtype
    )
    if missing or unexpected or not_dense or mismatched or wrong_dtype:
        problems = [
            f"{label} {_some(names)}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("not a dense tensor", not_dense),
                ("wrong shape", mismatched),
                ("wrong dtype", wrong_dtype),
            )
            if names
        ]
        raise CheckpointError(
            f"{path}: weights do not match the model config: {'; '.join(problems)}"
        )
    # Such a model decodes nothing but garbage or errors, sentence after sentence. (Tensors on
    # the meta device are a header being checked: they hold no values yet.)
    nonfinite = sorted(
        k
        for k, v in weights.items()
        if v.is_floating_point() and v.device.type != "meta" and not v.isfinite().all()
    )
    if nonfinite:
        raise CheckpointError(
            f"{path}: weights hold NaN or infinite values ({_some(nonfinite)}): saved after "
            "training diverged? Use an earlier checkpoint"
        )
    model.load_state_dict(weights, assign=True)
    model.tie_weights()  # assign=True gave each key its own tensor


def _mapping(meta: dict, key: str) -> dict:
    value = meta[key]
    if not isinstance(value, dict):  # a hand-edited config.json may hold anything
        raise TypeError(f"{key} must be a mapping (a JSON object), got {type(value).__name__}")
    return value


def read_model_config(path: Path, meta: dict) -> tuple[ModelConfig, int, int]:
    """-> the model config and the source and target vocabulary sizes, any format."""
    version = meta.get("format")
    if version not in (1, FORMAT):
        raise CheckpointError(f"{path}: unsupported checkpoint format {version!r}")
    try:
        config = dict(_mapping(meta, "model_config"))
        if version == 1:
            special_ids = {"pad": config.pop("pad_id", PAD_ID)}
            sizes = config.pop("src_vocab_size"), config.pop("tgt_vocab_size")
        else:
            special_ids = _mapping(meta, "special_ids")
            sizes = meta["src_vocab_size"], meta["tgt_vocab_size"]
        check_vocab_sizes(*sizes)  # before the tokenizers are compared with them
        config = ModelConfig(**config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config ({error_reason(e)})") from None
    for name, token_id in special_ids.items():
        if SPECIAL_IDS.get(name) != token_id:
            raise CheckpointError(
                f"{path}: the model's {name} id is {token_id!r}, but seq2seq's tokenizers use "
                f"{SPECIAL_IDS.get(name)!r}"
            )
    return config, *sizes


def empty_model(path: Path, config: ModelConfig, src_vocab_size, tgt_vocab_size) -> Seq2Seq:
    """The model on the meta device: a hostile config (hidden size 2**40) must not allocate
    before its shapes are checked against the tensors the file really holds."""
    try:
        with torch.device("meta"):
            return Seq2Seq(config, src_vocab_size, tgt_vocab_size)
    except (RuntimeError, ValueError) as e:  # sizes past what a tensor can index, or bad sizes
        raise CheckpointError(f"{path}: bad model config ({error_reason(e)})") from None


def load_model(path: str | os.PathLike, map_location="cpu") -> LoadedModel:
    """Load a checkpoint written by `save_model` or by training, a model folder or a hub id
    (seq2seq/pretrained.py); every failure is one line."""
    from seq2seq import pretrained  # imported here: it builds on this module

    if pretrained.is_pretrained(path):
        return pretrained.load_pretrained(path, map_location=map_location)
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    meta = checkpoint["seq2seq"]
    config, src_vocab_size, tgt_vocab_size = read_model_config(path, meta)
    try:
        src_lang, tgt_lang = str(meta["src_lang"]), str(meta["tgt_lang"])
    except KeyError as e:
        raise CheckpointError(f"{path}: bad model config ({error_reason(e)})") from None
    src_tokenizer = read_tokenizer(path, meta, "src", src_vocab_size)
    tgt_tokenizer = read_tokenizer(path, meta, "tgt", tgt_vocab_size)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: no 'state_dict' entry")
    model = empty_model(path, config, src_vocab_size, tgt_vocab_size)
    load_weights(path, model, state_dict)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return LoadedModel(model.eval(), src_tokenizer, tgt_tokenizer, src_lang, tgt_lang)


def read_tokenizers(path: str | os.PathLike) -> tuple[Tokenizer, Tokenizer]:
    """The source and target SentencePiece models a checkpoint was trained with (one object
    twice when they are the same model). Memory-mapped: the weights are not read."""
    path = Path(path)
    meta = read_checkpoint(path, "cpu", mmap=True)["seq2seq"]
    src = read_tokenizer(path, meta, "src")
    tgt = src if meta.get("tgt_spm") == meta.get("src_spm") else read_tokenizer(path, meta, "tgt")
    return src, tgt


def read_step(path: str | os.PathLike) -> int | None:
    """The optimizer step a training checkpoint was saved at; None for `save_model`'s files.

    Memory-mapped: the weights and optimizer state are mapped, not read, so this is quick.
    """
    step = read_checkpoint(Path(path), "cpu", mmap=True).get("global_step")
    return step if isinstance(step, int) else None


def check_distinct(paths: Sequence[str | os.PathLike]) -> None:
    """Raise CheckpointError naming a model given twice (a shell glob that overlaps a name, say):
    averaged or ensembled, it would weigh double without a word."""
    seen: dict[Path, str | os.PathLike] = {}
    for path in paths:
        if (same := seen.setdefault(Path(path).resolve(), path)) is not path:
            raise CheckpointError(f"{path}: given twice (as {same}); each model counts once")


def check_same_vocabulary(
    reference: str | os.PathLike, loaded: LoadedModel, path: str | os.PathLike, other: LoadedModel
) -> None:
    """For models used together (an ensemble, an average): raise CheckpointError naming `path`
    unless `other` has the same SentencePiece models and languages as `loaded` (from
    `reference`), so that every token id means the same piece to both."""
    for side in ("src", "tgt"):
        mine = getattr(loaded, f"{side}_tokenizer").model_proto
        if getattr(other, f"{side}_tokenizer").model_proto != mine:
            raise CheckpointError(
                f"{path}: its {side} SentencePiece model differs from that of {reference}"
            )
    if (other.src_lang, other.tgt_lang) != (loaded.src_lang, loaded.tgt_lang):
        raise CheckpointError(
            f"{path}: translates {other.src_lang}->{other.tgt_lang} but {reference} translates "
            f"{loaded.src_lang}->{loaded.tgt_lang}"
        )
