"""Parallel corpora in, clean (src, tgt) string pairs out, as a `datasets.Dataset`.

A source is a directory of aligned text files (`train.de` + `train.en`, optionally gzipped), a
single `.jsonl` or `.tsv` file, or a Hugging Face hub dataset name. Every problem with the data
is a `CorpusError` whose message is one line naming the file (and line), so that a bad corpus
stops a run before training starts instead of silently misaligning sentence pairs.
"""

import codecs
import gzip
import json
import logging
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from seq2seq.errors import first_line
from seq2seq.hub_ids import looks_like_path

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# Our split names (the Multi30k file names) -> the names hub datasets use.
HUB_SPLITS = {"val": "validation", "test_2016_flickr": "test"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
TSV_SUFFIXES = (".tsv", ".tsv.gz")

_WHITESPACE = re.compile(r"\s+")  # str patterns: every Unicode space, incl. U+00A0 and tabs
_CONTROL = re.compile(r"(?!\s)[\x00-\x1f\x7f-\x9f]")  # category Cc, minus whitespace controls
# Only these end a line. str.splitlines() also splits on U+2028, \x1c, \x85, ..., which can
# occur inside a sentence and would shift one side of a parallel corpus against the other.
# Bytes: neither byte occurs inside a multi-byte UTF-8 character, so splitting before decoding
# is safe, and a bad byte is then named by its line.
LINE_END = re.compile(rb"\r\n?|\n")


class CorpusError(ValueError):
    """A corpus that cannot be used; the message is one line naming the file (and line)."""


def clean(text: str) -> str:
    """NFC, every whitespace character a single plain space, control characters removed."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def ends_in_space(text: str) -> bool:
    """Whether `text` ends in whitespace once `clean` has dropped its control characters: a
    typed prefix that does has ended its last word, which is then not completed."""
    return _CONTROL.sub("", text)[-1:].isspace()


def split_lines(data: bytes) -> list[bytes]:
    """The one line rule of every reader (corpora, `seq2seq-decode`, `translate`): "\\n", "\\r\\n"
    and a lone "\\r" end a line, and the last line end closes the last line."""
    lines = LINE_END.split(data)
    if lines[-1] == b"":
        lines.pop()
    return lines


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if the name ends in .gz; CorpusError naming it if it cannot be
    read whole."""
    path = Path(path)
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:  # a directory, no permission, a broken gzip
        raise CorpusError(f"{path}: cannot read ({e})") from None


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (gzip if the name ends in .gz), without line ends."""
    path = Path(path)
    data = read_bytes(path).removeprefix(codecs.BOM_UTF8)  # Windows editors add one; it is not text
    lines = []
    for lineno, raw in enumerate(split_lines(data), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{path}:{lineno}: invalid UTF-8 ({e.reason}, byte 0x{raw[e.start]:02x}); "
                "convert the file to UTF-8"
            ) from None
    if not lines:
        raise CorpusError(f"{path}: empty file")
    return lines


def read_test_set(sources: Path, references: Path) -> tuple[list[str], list[str]]:
    """A test set's source and reference lines (`read_lines`); CorpusError unless they pair up."""
    src, ref = read_lines(sources), read_lines(references)
    if len(src) != len(ref):
        raise CorpusError(f"{sources} has {len(src)} lines but {references} has {len(ref)}")
    return src, ref


def find_split_file(data_dir: Path, split: str, lang: str) -> Path:
    """`<data_dir>/<split>.<lang>`, or the same name with `.gz`."""
    plain = Path(data_dir) / f"{split}.{lang}"
    gz = plain.with_name(plain.name + ".gz")
    for candidate in (plain, gz):
        if candidate.is_file():
            return candidate
    raise CorpusError(f"no '{split}' data for '{lang}': neither {plain} nor {gz} exists")


def load_corpus(
    source: str | Path,
    split: str,
    src_lang: str,
    tgt_lang: str,
    hub_config: str | None = None,
) -> "datasets.Dataset":
    """Cleaned sentence pairs (columns `src`, `tgt`) from a directory, .jsonl, .tsv or the hub.

    `split` picks the files in a directory and the split on the hub; a single file is the whole
    corpus. A local path always wins over a hub dataset of the same name.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        src_file = find_split_file(path, split, src_lang)
        tgt_file = find_split_file(path, split, tgt_lang)
        src, tgt = read_lines(src_file), read_lines(tgt_file)
        if len(src) != len(tgt):
            raise CorpusError(
                f"{src_file} has {len(src)} lines but {tgt_file} has {len(tgt)}: "
                "the files are not aligned line by line"
            )
        origin = f"{src_file} and {tgt_file}"
    elif path.is_file():
        if path.name.endswith(JSONL_SUFFIXES):
            src, tgt = _read_jsonl(path, src_lang, tgt_lang)
        elif path.name.endswith(TSV_SUFFIXES):
            src, tgt = _read_tsv(path)
        else:
            raise CorpusError(
                f"{path}: unsupported file type; expected a directory of <split>.<lang>[.gz] "
                "files, a .jsonl or a .tsv file"
            )
        origin = str(path)
    elif isinstance(source, Path) or looks_like_path(
        source, JSONL_SUFFIXES + TSV_SUFFIXES + (".gz",)
    ):
        raise CorpusError(f"no such file or directory: {source}")
    else:
        src, tgt = _load_hub(source, hub_config, split, src_lang, tgt_lang)
        origin = f"'{source}' ({HUB_SPLITS.get(split, split)} split)"
    return _to_dataset(src, tgt, origin)


def length_filter(
    src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_len: int, max_ratio: float
) -> list[int]:
    """Indices of the pairs whose sides are both at most max_len tokens and not too unequal."""
    keep = []
    for i, (s, t) in enumerate(zip(src_lengths, tgt_lengths, strict=True)):
        longest, shortest = max(s, t), min(s, t)
        if longest <= max_len and longest / max(1, shortest) <= max_ratio:
            keep.append(i)
    if len(keep) < len(src_lengths):
        log.warning(
            "dropped %d of %d pairs longer than %d tokens or with a length ratio above %g",
            len(src_lengths) - len(keep), len(src_lengths), max_len, max_ratio,
        )
    return keep


def _read_jsonl(path: Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            message = f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})"
            raise CorpusError(message) from None
        pair = record.get("translation", record) if isinstance(record, dict) else record
        for lang in (src_lang, tgt_lang):
            if not (isinstance(pair, dict) and isinstance(pair.get(lang), str)):
                raise CorpusError(
                    f"{path}:{lineno}: no string field '{lang}'; expected "
                    f'{{"{src_lang}": "...", "{tgt_lang}": "..."}}, optionally inside "translation"'
                )
        src.append(pair[src_lang])
        tgt.append(pair[tgt_lang])
    return src, tgt


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(
                f"{path}:{lineno}: expected 'source<TAB>target', found {len(fields) - 1} tabs"
            )
        src.append(fields[0])
        tgt.append(fields[1])
    return src, tgt


def _load_hub(
    name: str, config: str | None, split: str, src_lang: str, tgt_lang: str
) -> tuple[list[str], list[str]]:
    import datasets  # here, not at the top: `translate` only needs clean() and starts faster

    hub_split = HUB_SPLITS.get(split, split)
    try:
        ds = datasets.load_dataset(name, config, split=hub_split)
    except Exception as e:  # offline, unknown name, config or split: the user's fix is the same
        raise CorpusError(
            f"could not load '{name}' from the Hugging Face hub ({type(e).__name__}: "
            f"{first_line(e)}); "
            "pass a local directory with --data.data_dir"
        ) from e
    if "translation" in ds.column_names:  # e.g. wmt14: {"translation": {"de": ..., "en": ...}}
        pairs = list(ds["translation"])
        languages = set(pairs[0]) if pairs else set()
        missing = [lang for lang in (src_lang, tgt_lang) if lang not in languages]
        if missing:
            raise CorpusError(
                f"'{name}' ({hub_split}) has no '{missing[0]}' in its translation column "
                f"(languages: {', '.join(sorted(languages))})"
            )
        return [p[src_lang] for p in pairs], [p[tgt_lang] for p in pairs]
    if src_lang in ds.column_names and tgt_lang in ds.column_names:  # e.g. bentrevett/multi30k
        return list(ds[src_lang]), list(ds[tgt_lang])
    raise CorpusError(
        f"'{name}' ({hub_split}) has neither a 'translation' column nor columns '{src_lang}' and "
        f"'{tgt_lang}' (columns: {', '.join(ds.column_names)})"
    )


def _to_dataset(src: Sequence[str], tgt: Sequence[str], origin: str) -> "datasets.Dataset":
    import datasets

    # Drop whole pairs, never single lines, so that the two sides stay aligned.
    pairs = [(s, t) for s, t in zip(map(clean, src), map(clean, tgt), strict=True) if s and t]
    if len(pairs) < len(src):
        log.warning(
            "dropped %d of %d pairs with an empty side after cleaning in %s",
            len(src) - len(pairs), len(src), origin,
        )
    if not pairs:
        raise CorpusError(f"no non-empty sentence pairs in {origin}")
    return datasets.Dataset.from_dict({"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]})
