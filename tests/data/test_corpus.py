import gzip
import json
import logging
import unicodedata
from pathlib import Path

import datasets
import pytest

from seq2seq.data.corpus import (
    CorpusError,
    clean,
    find_split_file,
    length_filter,
    load_corpus,
    read_lines,
)
from seq2seq.data.datamodule import TranslationDataModule

MULTI30K = Path(__file__).resolve().parents[2] / "data" / "multi30k"


@pytest.fixture(scope="module")
def sample() -> dict[str, list[str]]:
    """The first 300 raw lines of the bundled training data, per language."""
    return {lang: read_lines(MULTI30K / f"train.{lang}.gz")[:300] for lang in ("de", "en")}


def write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    data = "".join(line + newline for line in lines).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "errors must be one line"
    return message


# clean


def test_clean_turns_every_whitespace_into_one_space():
    assert clean("Nummer\u00a028") == "Nummer 28"  # as in train.de
    assert clean("  ein\t\tHund \u2003 läuft  \n") == "ein Hund läuft"


def test_clean_composes_to_nfc():
    decomposed = unicodedata.normalize("NFD", "Mädchen über")
    assert decomposed != "Mädchen über"
    assert clean(decomposed) == "Mädchen über"


def test_clean_removes_control_characters():
    assert clean("a\x00b\x07c \x7fd\x9f") == "abc d"
    assert clean("\x00 \x1b ") == ""


# read_lines


def test_gzip_and_plain_files_read_identically(tmp_path, sample):
    plain = write(tmp_path / "train.de", sample["de"])
    assert read_lines(plain) == read_lines(MULTI30K / "train.de.gz")[:300] == sample["de"]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends_read_like_lf(tmp_path, sample, newline):
    lf = write(tmp_path / "lf.de", sample["de"])
    other = write(tmp_path / "other.de", sample["de"], newline)
    assert read_lines(other) == read_lines(lf)


def test_only_real_line_ends_split_lines(tmp_path):
    # U+2028 and \x1c are line breaks to str.splitlines(), which would misalign a corpus.
    path = write(tmp_path / "x.en", ["a\u2028b", "c\x1cd", "last"])
    assert read_lines(path) == ["a\u2028b", "c\x1cd", "last"]


def test_missing_last_newline_and_byte_order_mark(tmp_path):
    path = tmp_path / "x.en"
    path.write_bytes(b"\xef\xbb\xbfone\ntwo")
    assert read_lines(path) == ["one", "two"]


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError) as excinfo:
        read_lines(tmp_path / "nope.de")
    assert str(tmp_path / "nope.de") in error(excinfo)


@pytest.mark.parametrize("name", ["empty.de", "empty.de.gz"])
def test_empty_file(tmp_path, name):
    path = write(tmp_path / name, [])
    with pytest.raises(CorpusError) as excinfo:
        read_lines(path)
    assert str(path) in error(excinfo) and "empty" in error(excinfo)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("name", ["bad.de", "bad.de.gz"])
def test_invalid_utf8_names_file_and_line(tmp_path, name, newline):
    data = newline.join(["gut", "auch gut", "schlecht \xe4 hier", "ok", ""]).encode("latin-1")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(CorpusError) as excinfo:
        read_lines(path)
    assert f"{path}:3: invalid UTF-8" in error(excinfo)


def test_broken_gzip(tmp_path):
    path = tmp_path / "train.de.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError) as excinfo:
        read_lines(path)
    assert str(path) in error(excinfo)


# directories


def test_find_split_file_prefers_plain_and_names_both_candidates(tmp_path):
    write(tmp_path / "train.de.gz", ["a"])
    assert find_split_file(tmp_path, "train", "de") == tmp_path / "train.de.gz"
    write(tmp_path / "train.de", ["a"])
    assert find_split_file(tmp_path, "train", "de") == tmp_path / "train.de"
    with pytest.raises(CorpusError) as excinfo:
        find_split_file(tmp_path, "val", "en")
    assert str(tmp_path / "val.en") in error(excinfo)
    assert str(tmp_path / "val.en.gz") in error(excinfo)


def test_bundled_multi30k_loads():
    corpus = load_corpus(MULTI30K, "test_2016_flickr", "de", "en")
    assert isinstance(corpus, datasets.Dataset)
    assert corpus.column_names == ["src", "tgt"] and len(corpus) == 1000
    assert corpus[0]["src"] == clean(read_lines(MULTI30K / "test_2016_flickr.de.gz")[0])


def test_gzip_and_plain_directories_load_identically(tmp_path, sample):
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    for lang in ("de", "en"):
        write(tmp_path / "gz" / f"train.{lang}.gz", sample[lang])
        write(tmp_path / "plain" / f"train.{lang}", sample[lang])
    gz = load_corpus(tmp_path / "gz", "train", "de", "en")
    plain = load_corpus(str(tmp_path / "plain"), "train", "de", "en")
    assert gz.to_dict() == plain.to_dict()
    assert gz["src"] == [clean(line) for line in sample["de"]]


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    src = write(tmp_path / "train.de", ["eins", "zwei", "drei"])
    tgt = write(tmp_path / "train.en.gz", ["one", "two"])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(tmp_path, "train", "de", "en")
    message = error(excinfo)
    assert str(src) in message and str(tgt) in message
    assert "3" in message and "2" in message


def test_missing_split_in_directory(tmp_path):
    write(tmp_path / "train.de", ["eins"])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(tmp_path, "train", "de", "en")
    assert str(tmp_path / "train.en") in error(excinfo)


def test_pairs_with_an_empty_side_are_dropped_without_misalignment(tmp_path, caplog):
    write(tmp_path / "train.de", ["eins", "", "drei", " \u00a0", "fünf", "sechs"])
    write(tmp_path / "train.en", ["one", "two", "\t", "four", "five", "six"])
    with caplog.at_level(logging.WARNING, logger="seq2seq.data.corpus"):
        corpus = load_corpus(tmp_path, "train", "de", "en")
    assert corpus["src"] == ["eins", "fünf", "sechs"]
    assert corpus["tgt"] == ["one", "five", "six"]
    assert "dropped 3 of 6" in caplog.text and str(tmp_path / "train.de") in caplog.text


def test_nothing_left_is_an_error(tmp_path):
    write(tmp_path / "train.de", [""])
    write(tmp_path / "train.en", ["one"])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(tmp_path, "train", "de", "en")
    assert str(tmp_path / "train.de") in error(excinfo)


# jsonl and tsv


def test_jsonl_in_both_shapes(tmp_path):
    records = [
        {"de": "ein\u00a0Hund", "en": "a dog", "id": 7},
        {"translation": {"en": "a cat", "de": "eine Katze"}},
    ]
    path = write(tmp_path / "pairs.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    corpus = load_corpus(path, "ignored", "de", "en")
    assert corpus.to_dict() == {"src": ["ein Hund", "eine Katze"], "tgt": ["a dog", "a cat"]}
    reverse = load_corpus(str(path), "train", "en", "de")
    assert reverse["src"] == ["a dog", "a cat"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"de": "eins", "en": ', "invalid JSON"),
        ('{"de": "eins"}', "'en'"),
        ('{"de": "eins", "en": null}', "'en'"),
        ('{"translation": {"en": "one"}}', "'de'"),
        ('["eins", "one"]', "'de'"),
        ("", "invalid JSON"),
    ],
)
def test_bad_jsonl_line(tmp_path, line, expected):
    path = write(tmp_path / "pairs.jsonl", ['{"de": "null", "en": "zero"}', line])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(path, "train", "de", "en")
    assert f"{path}:2:" in error(excinfo) and expected in error(excinfo)


def test_tsv(tmp_path):
    path = write(tmp_path / "pairs.tsv.gz", ["ein Hund\ta dog", "eine Katze \t a cat"])
    corpus = load_corpus(path, "train", "de", "en")
    assert corpus.to_dict() == {"src": ["ein Hund", "eine Katze"], "tgt": ["a dog", "a cat"]}


def test_a_single_file_holds_out_its_validation_pairs(tmp_path, sample):
    """Validating on the training file itself would score pairs the model learned."""
    lines = [f"{de}\t{en}" for de, en in zip(sample["de"], sample["en"], strict=True)]
    path = write(tmp_path / "pairs.tsv", lines)

    def split(seed: int) -> tuple[int, list[str]]:
        data = TranslationDataModule(data_dir=str(path), vocab_size=450, seed=seed)
        data.setup("fit")
        return len(data.train_examples), data.task.val_sources

    trained, held_out = split(7)
    # 5% of 300 held out, none trained on (a few long pairs are filtered out of training).
    assert len(held_out) == 15 and 280 <= trained <= 285
    assert set(held_out) <= {clean(line) for line in sample["de"]}
    assert split(7)[1] == held_out != split(8)[1]  # seeded
    one = write(tmp_path / "one.tsv", ["eins\tone"])
    with pytest.raises(CorpusError) as excinfo:
        TranslationDataModule(data_dir=str(one)).setup("fit")
    assert f"{one}: 1 sentence pair(s); a single file needs at least 2" in error(excinfo)


@pytest.mark.parametrize("line", ["no tab here", "one\ttwo\tthree"])
def test_bad_tsv_line(tmp_path, line):
    path = write(tmp_path / "pairs.tsv", ["eins\tone", "zwei\ttwo", line])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(path, "train", "de", "en")
    assert f"{path}:3:" in error(excinfo)


def test_unsupported_file_type(tmp_path):
    path = write(tmp_path / "pairs.csv", ["eins,one"])
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(path, "train", "de", "en")
    assert str(path) in error(excinfo)


# the hub


@pytest.fixture
def offline(monkeypatch):
    """No network: the environment for subprocesses, the module flags for this process
    (both libraries read the variables once, at import)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def test_hub_name_offline_is_a_one_line_error(offline):
    with pytest.raises(CorpusError) as excinfo:
        load_corpus("bentrevett/multi30k", "val", "de", "en")
    message = error(excinfo)
    assert message.startswith("could not load 'bentrevett/multi30k' from the Hugging Face hub (")
    assert message.endswith("pass a local directory with --data.data_dir")


def test_hub_error_keeps_type_and_first_line(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(CorpusError) as excinfo:
        load_corpus("someone/corpus", "train", "de", "en")
    assert "(RuntimeError: first line)" in error(excinfo)


@pytest.mark.parametrize(
    ("columns", "config"),
    [
        ({"translation": [{"de": "ein Hund", "en": "a dog"}, {"de": "", "en": "x"}]}, "de-en"),
        ({"en": ["a dog", "x"], "de": ["ein  Hund", ""]}, None),
    ],
)
def test_hub_columns_and_split_names(monkeypatch, columns, config):
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(columns)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_corpus("someone/corpus", "val", "de", "en", hub_config=config)
    assert corpus.to_dict() == {"src": ["ein Hund"], "tgt": ["a dog"]}
    load_corpus("someone/corpus", "test_2016_flickr", "de", "en", hub_config=config)
    load_corpus("someone/corpus", "train", "de", "en", hub_config=config)
    assert [split for _, _, split in calls] == ["validation", "test", "train"]
    assert calls[0][:2] == ("someone/corpus", config)


def test_hub_dataset_without_our_languages(monkeypatch):
    corpus = datasets.Dataset.from_dict({"translation": [{"fr": "un chien", "en": "a dog"}]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: corpus)
    with pytest.raises(CorpusError) as excinfo:
        load_corpus("someone/corpus", "train", "de", "en")
    assert "'de'" in error(excinfo) and "en, fr" in error(excinfo)


@pytest.mark.parametrize(
    "source", ["./no/such/dir", "/no/such/dir", "no/such/dir", "pairs.jsonl", "~/no-such-dir"]
)
def test_missing_local_path_is_not_a_hub_lookup(monkeypatch, source):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub was tried"))
    with pytest.raises(CorpusError) as excinfo:
        load_corpus(source, "train", "de", "en")
    assert error(excinfo) == f"no such file or directory: {source}"


# length_filter


def test_length_filter(caplog):
    src = [3, 11, 2, 0, 10, 4]
    tgt = [4, 3, 7, 2, 10, 12]
    with caplog.at_level(logging.WARNING, logger="seq2seq.data.corpus"):
        keep = length_filter(src, tgt, max_len=10, max_ratio=3.0)
    # dropped: 1 (11 > max_len), 2 (7/2 > 3), 5 (12 > max_len); 3 is 2 / max(1, 0) = 2
    assert keep == [0, 3, 4]
    assert "dropped 3 of 6" in caplog.text


def test_length_filter_keeps_everything_quietly(caplog):
    with caplog.at_level(logging.WARNING, logger="seq2seq.data.corpus"):
        assert length_filter([2], [1], max_len=5, max_ratio=2.0) == [0]
    assert caplog.text == ""
