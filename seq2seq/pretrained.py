"""A model folder in the Hugging Face layout, and the hub ids that name one.

    DIR/config.json        the checkpoint's "seq2seq" entry without the SentencePiece bytes
                           (format, model config, vocabulary sizes, special ids, languages),
                           plus "joint_vocabulary" and "training_config" (null if unknown)
    DIR/model.safetensors  the weights; a tied weight is stored once, under its first name
    DIR/spm.model          the joint SentencePiece model, or spm.src.model + spm.tgt.model
    DIR/README.md          the model card (seq2seq/model_card.py)

Loading reads JSON, SentencePiece bytes and safetensors: nothing is unpickled. Every check of a
checkpoint is reused (checkpoint.py), each naming the file of the folder it is about; the
safetensors header is checked against the model, built on the meta device, before any tensor
data is read.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from seq2seq.checkpoint import (
    PREFIX,
    CheckpointError,
    LoadedModel,
    empty_model,
    error_reason,
    load_weights,
    make_payload,
    read_model_config,
    read_tokenizer,
    readable_by_all,
)
from seq2seq.errors import first_line
from seq2seq.hub_ids import looks_like_path
from seq2seq.model import Seq2Seq

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, "spm*.model", CARD_FILE]  # what a download fetches
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")  # a name ending so is a file, never a hub id
# The keys of config.json read here, and their JSON types; checkpoint.py checks the rest.
_FOLDER_KEYS = {"joint_vocabulary": bool, "src_lang": str, "tgt_lang": str}
# safetensors' dtype names of the tensors a model can hold.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def spm_files(joint: bool) -> dict[str, str]:
    """side -> file name of its SentencePiece model in a folder."""
    return {"src": "spm.model", "tgt": "spm.model"} if joint else {
        "src": "spm.src.model", "tgt": "spm.tgt.model"
    }


def check_repo_id(repo_id: str) -> None:
    """Raise ValueError (one line) unless `repo_id` is a valid hub repo id: huggingface_hub's
    own rule, which needs no network (so export checks it before writing anything)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{repo_id!r} is not a hub repo id ({first_line(e)})") from None


def is_hub_id(name: str | os.PathLike) -> bool:
    """A name that is not on disk and has the shape of a hub id ("owner/name" or "name")."""
    if not isinstance(name, str) or Path(name).exists():
        return False
    if looks_like_path(name, CHECKPOINT_SUFFIXES + (".safetensors", ".json")):
        return False
    try:
        check_repo_id(name)
    except ValueError:
        return False
    return True


def is_pretrained(name: str | os.PathLike) -> bool:
    """Whether `load_pretrained` rather than a checkpoint reader should load `name`."""
    return Path(name).is_dir() or is_hub_id(str(name))


def _aliases(model: Seq2Seq) -> dict[str, str]:
    """state_dict key -> the earlier key holding the same tensor (tied weights)."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
    return aliases


def save_pretrained(
    folder: str | os.PathLike, loaded: LoadedModel, training_config: dict | None = None
) -> dict:
    """Write config.json, model.safetensors and the SentencePiece model(s) into `folder`;
    -> what config.json holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = make_payload(*loaded)
    spm = {side: config.pop(f"{side}_spm") for side in ("src", "tgt")}
    joint = spm["src"] == spm["tgt"]
    config.update(joint_vocabulary=joint, training_config=training_config)
    for name in set(spm_files(not joint).values()) - set(spm_files(joint).values()):
        (folder / name).unlink(missing_ok=True)  # from an earlier export into this folder
    for side, name in spm_files(joint).items():
        (folder / name).write_bytes(spm[side])
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    aliases = _aliases(loaded.model)
    weights = {
        k: v.detach().contiguous().cpu()
        for k, v in loaded.model.state_dict().items()
        if k not in aliases
    }
    save_file(weights, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    readable_by_all(folder / WEIGHTS_FILE)
    return config


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the model folder")
    try:
        # utf-8-sig: an editor's byte order mark is skipped, as in every text file we read.
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: JSONDecodeError, or an integer of more digits than Python converts;
        # RecursionError: arrays nested deeper than the parser goes (a hostile download).
        raise CheckpointError(f"{path}: not valid JSON ({error_reason(e)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    for key, kind in _FOLDER_KEYS.items():
        if not isinstance(config.get(key), kind):
            found = type(config[key]).__name__ if key in config else "nothing"
            raise CheckpointError(f"{path}: '{key}' must be a {kind.__name__}, got {found}")
    return config


def _read_header(path: Path) -> dict[str, torch.Tensor]:
    """name -> a meta tensor of the stored shape and dtype: the header only, no data."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the model folder")
    try:
        with safe_open(path, framework="pt") as f:
            header = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as e:  # truncated, not safetensors, unreadable
        raise CheckpointError(
            f"{path}: not a readable safetensors file, truncated or corrupted ({error_reason(e)})"
        ) from None
    unknown = sorted(k for k, (_, dtype) in header.items() if dtype not in _DTYPES)
    if unknown:
        raise CheckpointError(f"{path}: tensor {unknown[0]} has unsupported dtype")
    return {
        k: torch.empty(shape, dtype=_DTYPES[dtype], device="meta")
        for k, (shape, dtype) in header.items()
    }


def _load_folder(folder: Path, map_location) -> LoadedModel:
    config_path = folder / CONFIG_FILE
    meta = _read_config(config_path)
    config, src_vocab_size, tgt_vocab_size = read_model_config(config_path, meta)
    tokenizers = {}
    for side, name in spm_files(meta["joint_vocabulary"]).items():
        spm_path = folder / name
        if not spm_path.is_file():
            raise CheckpointError(f"{spm_path}: missing from the model folder")
        size = src_vocab_size if side == "src" else tgt_vocab_size
        spm = {f"{side}_spm": spm_path.read_bytes()}
        tokenizers[side] = read_tokenizer(spm_path, spm, side, size)
    model = empty_model(config_path, config, src_vocab_size, tgt_vocab_size)
    weights_path = folder / WEIGHTS_FILE
    aliases = _aliases(model)

    def with_aliases(tensors: dict) -> dict:
        full = {**tensors, **{a: tensors[k] for a, k in aliases.items() if k in tensors}}
        return {PREFIX + k: v for k, v in full.items()}

    # The header's shapes and dtypes first, as meta tensors: the data is read only once it is
    # known to fit. A tied weight is stored once, so its other names are unexpected in the file.
    stored = _read_header(weights_path)
    extra = sorted(stored.keys() & aliases.keys())
    if extra:
        raise CheckpointError(f"{weights_path}: unexpected {extra[0]} (a tied weight, stored once)")
    load_weights(weights_path, model, with_aliases(stored))  # still on the meta device
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        reason = error_reason(e)
        raise CheckpointError(f"{weights_path}: cannot read the tensors ({reason})") from None
    load_weights(weights_path, model, with_aliases(tensors))
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return LoadedModel(
        model.eval(), tokenizers["src"], tokenizers["tgt"], meta["src_lang"], meta["tgt_lang"]
    )


def _download(repo_id: str, revision: str | None) -> Path:
    """The folder of `repo_id` in the user's Hugging Face cache, downloaded there if missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:  # offline or unreachable, and not (wholly) cached
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: no such model on the Hugging Face hub (or it is private)"
        ) from None
    except Exception as e:  # HTTP status, proxy, TLS: the transport's errors share no base
        raise CheckpointError(
            f"{repo_id}: cannot download it from the hub ({error_reason(e)})"
        ) from None


def _folder(name: str | os.PathLike, revision: str | None) -> Path:
    """The local folder of a model folder or a hub id (downloaded once into the Hugging Face
    cache, then read from there)."""
    if Path(name).is_dir():
        if revision is not None:
            raise CheckpointError(f"{name}: a revision applies to hub ids, not to local folders")
        return Path(name)
    if Path(name).is_file():
        raise CheckpointError(
            f"{name}: a checkpoint file, not a model folder (Translator.from_checkpoint reads it)"
        )
    if not is_hub_id(str(name)):
        raise CheckpointError(f"{name}: no such model folder")
    folder = _download(str(name), revision)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():  # is_file follows the cache's link to its blob
            raise CheckpointError(
                f"{name}: no {file} in its copy in the Hugging Face cache ({folder}): a download "
                "that was cut short, or not a seq2seq model folder"
            )
    return folder


def load_pretrained(
    name: str | os.PathLike, revision: str | None = None, map_location="cpu"
) -> LoadedModel:
    """A model folder, or a hub id (downloaded once into the Hugging Face cache, then read from
    there); `revision` (a branch, tag or commit of a hub repo) only for a hub id.

    Raises CheckpointError, one line naming the file or the repo, for anything unusable.
    """
    return _load_folder(_folder(name, revision), map_location)


def read_training_config(name: str | os.PathLike, revision: str | None = None) -> dict | None:
    """The training configuration a model folder (or hub id) keeps in its config.json: what a
    new export of it must keep (the card's data and its terms come from it)."""
    path = _folder(name, revision) / CONFIG_FILE
    training_config = _read_config(path).get("training_config")
    if training_config is not None and not isinstance(training_config, dict):
        kind = type(training_config).__name__
        raise CheckpointError(f"{path}: 'training_config' must be an object or null, got {kind}")
    return training_config


def push_to_hub(folder: str | os.PathLike, repo_id: str) -> str:
    """Upload a model folder to the hub repo `repo_id` (created if missing; needs the network
    and a token with write access, e.g. from `hf auth login`); -> the repo's URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, allow_patterns=HUB_FILES,
            commit_message="Upload a seq2seq model folder",
        )
    except Exception as e:  # offline, no token, no write access: all one line
        raise ConnectionError(
            f"{repo_id}: cannot upload to the Hugging Face hub ({error_reason(e)})"
        ) from None
    return str(url)
