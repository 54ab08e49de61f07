"""Hostile input: what users and other programs really send to `translate`, damaged
checkpoints, and corpus files with faults that tests/data/test_corpus.py does not cover.

The hostile file is generated (seeded), so that it can hold every kind of bad line many times
over without a large file in the repository; the `translate` runs are real subprocesses.
"""

import os
import random
import re
import subprocess
import sys
import unicodedata
from io import BytesIO
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq import cli
from seq2seq.checkpoint import CheckpointError, load_model
from seq2seq.data.corpus import clean, load_corpus, read_lines, split_lines
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

TRANSLATE = [sys.executable, "-m", "seq2seq.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 180
OPTIONS = dict(beam_size=2, max_src_len=250)  # what the subprocesses run with, in-process
HOSTILE_LINES = 1200

# Lines that stress one thing each; {s} is a normal sentence. Bytes, because half of what is
# hostile about input is that it is not text at all.
TEMPLATES = [
    b"",
    b" \t  ",
    "\u00a0\u3000\u2003\t".encode(),
    b"\x0b\x0c \r",  # vertical tab, form feed, and a CR that is part of the CRLF ending
    b"\x00\x01\x02\x1b\x7f",  # only control characters: empty once cleaned
    b"{s}\r",  # CRLF
    b"{s}\r\r",  # a lone CR ends a line too, so this is two lines: {s} and an empty one
    b"{s}\x00{s}",  # NUL inside
    b"\x1b[31m{s}\x1b[0m\x07",  # terminal escapes, bell
    "{s}\u0085\u2028\u2029next".encode(),  # characters that str.splitlines() would split on
    b"{s} \xff\xfe",  # invalid UTF-8 of several kinds
    b"\xc3\x28 {s}",
    b"{s} \xe2\x82",  # truncated multi-byte sequence
    b"\xc0\xaf\xed\xa0\x80 {s}",  # overlong encoding, encoded surrogate
    b"\x80",
    "\ufeff{s}\ufeff".encode(),  # byte order marks inside a line
    "👩‍👩‍👧‍👦 🇩🇪 👍🏽 {s} 🐕".encode(),  # emoji: ZWJ sequences, flags, skin tones
    "一只狗在草地上奔跑。犬が走る。개가 달린다.".encode(),  # CJK
    "كلب يركض في الحديقة \u202e{s}\u202c עברית".encode(),  # right to left, bidi override
    "Z\u0334\u0321\u0322a\u0337l\u0338g\u0335o\u0336".encode(),  # stacked combining marks
    "\ue000\U0010ffff\ufffe\uffff\U000e0041\u200b".encode(),  # private use, noncharacters, tags
    b"</s> <s> <pad> <unk> {s} </s>",  # our special pieces, as text
    b"<script>alert(1)</script> %s %n {0} ${HOME} \\x00",
    b"\t{s}  \t {s}\t",
]
# Lines of 10,000+ characters: cut to --max-src-len pieces, with a warning naming the line.
LONG_TEMPLATES = [
    lambda s: (s + " ") * (10_000 // len(s) + 1),
    lambda s: "🐕" * 10_000,
    lambda s: "犬" * 12_000,
    lambda s: "a" * 20_000,  # one huge word
    lambda s: "\xff" * 12_000,  # 12,000 invalid bytes (latin-1 below): 36,000 byte pieces
    lambda s: " " * 10_000 + s,  # long, but only one sentence once cleaned: no warning
    lambda s: "\x00" * 10_000,  # long, but empty once cleaned
]


def _hostile_lines(sentences: list[str]) -> list[bytes]:
    rng = random.Random(0)
    lines = []
    while len(lines) < HOSTILE_LINES:
        s = rng.choice(sentences)
        kind = rng.random()
        if kind < 0.35:
            lines.append(s.encode())
        elif kind < 0.37:
            long = rng.choice(LONG_TEMPLATES)(s)
            lines.append(long.encode("latin-1" if long.startswith("\xff") else "utf-8"))
        elif kind < 0.40:
            lines.append(unicodedata.normalize("NFD", s).encode())
        else:
            lines.append(rng.choice(TEMPLATES).replace(b"{s}", s.encode()))
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # a byte order mark starts the file
    # The file ends without a newline; an empty last line would be no line at all.
    lines[-1] = sentences[0].encode()
    return lines


def _as_cli_reads(raw: bytes, lineno: int) -> tuple[str, bool]:
    """The text `translate` makes of a line, and whether its bytes were invalid UTF-8."""
    raw = raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, decoding_val_sources) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "hostile.de"
    lines = _hostile_lines(decoding_val_sources)
    path.write_bytes(b"\n".join(lines))  # and no newline after the last line
    return path


def _translate(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRANSLATE, *map(str, args)], input=stdin, capture_output=True, env=ENV, timeout=TIMEOUT
    )


def _warned_lines(stderr: str, kind: str) -> set[int]:
    return {int(n) for n in re.findall(rf"^translate: warning: line (\d+): .*{kind}", stderr, re.M)}


@pytest.mark.parametrize("via", ["file", "pipe"])
def test_hostile_file_keeps_every_line_in_order(
    tmp_path, hostile, decoding_checkpoint, decoding_val_sources, via
):
    lines = split_lines(hostile.read_bytes())  # the rule every reader follows
    beam = ["--beam-size", OPTIONS["beam_size"], "--max-src-len", OPTIONS["max_src_len"]]
    if via == "file":
        output = tmp_path / "out.en"
        run = _translate("-m", decoding_checkpoint, "-i", hostile, "-o", output, *beam)
        out = output.read_bytes()
    else:
        run = _translate("-m", decoding_checkpoint, *beam, stdin=hostile.read_bytes())
        out = run.stdout
    stderr = run.stderr.decode()
    assert run.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    translations = out.decode("utf-8").split("\n")
    assert translations.pop() == ""  # every output line ends with a newline
    assert len(translations) == len(lines) > HOSTILE_LINES  # lone CRs add lines

    translator = Translator.from_checkpoint(decoding_checkpoint)
    texts, invalid = zip(*(_as_cli_reads(raw, n) for n, raw in enumerate(lines, 1)), strict=True)
    pieces = translator.src_tokenizer.encode([clean(t) for t in texts])
    long = {n for n, ids in enumerate(pieces, 1) if len(ids) > OPTIONS["max_src_len"]}
    assert len(long) >= 10
    assert _warned_lines(stderr, "longer than") == long
    assert _warned_lines(stderr, "invalid UTF-8") == {n for n, bad in enumerate(invalid, 1) if bad}
    assert len(stderr.splitlines()) == len(long) + sum(invalid)  # no other complaint

    assert all(t == "" for ids, t in zip(pieces, translations, strict=True) if not ids)
    # A sentence in the middle of all this (maybe with CRLF, NFD or odd spaces) gets the
    # translation it gets alone.
    alone = {s: translator.translate([s], **OPTIONS)[0][0].text for s in decoding_val_sources}
    normal = [(n, clean(t)) for n, t in enumerate(texts, 1) if clean(t) in alone]
    assert len(normal) > 400
    for n, text in normal:
        assert translations[n - 1] == alone[text], f"line {n}"


def test_translate_does_not_import_datasets():
    # `translate` only needs corpus.clean(); importing `datasets` would slow every start.
    code = "import sys, seq2seq.cli; print(sorted(m for m in sys.modules if m == 'datasets'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# --- Translator.translate on arbitrary Unicode ---

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    # The fixture pins torch to one thread for the whole test; nothing to reset per example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) + "\x00\x1b\x7f\x9f"
# Any code point, surrogates included: a Python str can hold them though UTF-8 cannot (and
# st.text() never draws them).
ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))
ANY_TEXT = st.lists(ANY_CHAR, max_size=60).map("".join)


@pytest.fixture(scope="module")
def translator(decoding_model, decoding_tokenizer) -> Translator:
    return Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)


def _short(translator: Translator, texts: list[str], **options):
    # Short outputs keep a hundred examples fast; the input side is what is under test.
    return translator.translate(texts, max_len_a=0.5, max_len_b=3, max_src_len=40, **options)


@PROPERTY
@given(texts=st.lists(st.one_of(st.text(), ANY_TEXT), max_size=6), beam=st.sampled_from([1, 3]))
def test_translate_any_unicode(translator, texts, beam):
    nbest = min(beam, 2)
    results = _short(translator, texts, beam_size=beam, nbest=nbest)
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        assert 1 <= len(result) <= nbest
        assert all(isinstance(r.text, str) for r in result)
        if not clean(text):
            assert [r.text for r in result] == [""] * nbest


@PROPERTY
@given(texts=st.lists(st.text(WHITESPACE), min_size=1, max_size=6))
def test_translate_whitespace_is_empty(translator, texts):
    results = _short(translator, texts, beam_size=3, nbest=2)
    assert [[r.text for r in result] for result in results] == [["", ""]] * len(texts)


@PROPERTY
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8))
def test_any_bytes_give_one_output_line_each(translator, lines):
    args = cli.build_parser().parse_args(["-m", "unused.ckpt", "--nbest", "2", "--beam-size", "2"])
    args.max_len_a, args.max_len_b = 0.5, 3
    out = BytesIO()
    cli.LineTranslator(translator, args, out)(lines, 1)
    assert out.getvalue().decode("utf-8").count("\n") == 2 * len(lines)


# --- checkpoints: gaps that tests/test_checkpoint.py leaves ---


@pytest.mark.parametrize(
    "spm",
    [b"garbage bytes", b"\x0a\xff" * 100, None, "a string"],
    ids=["garbage", "protobuf-like", "None", "str"],
)
def test_garbage_sentencepiece_model_is_refused(tmp_path, decoding_checkpoint, spm):
    checkpoint = torch.load(decoding_checkpoint, weights_only=True)
    checkpoint["seq2seq"]["src_spm"] = spm
    path = tmp_path / "garbage.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="bad src SentencePiece model") as error:
        load_model(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# --- corpus faults that tests/data/test_corpus.py does not cover ---


def test_mixed_line_endings_in_one_file_keep_pairs_aligned(tmp_path):
    (tmp_path / "train.de").write_bytes(b"eins\r\nzwei\ndrei\rvier\r\n\r\nsechs")
    (tmp_path / "train.en").write_bytes(b"one\ntwo\r\nthree\nfour\rfive\nsix\n")
    assert read_lines(tmp_path / "train.de") == ["eins", "zwei", "drei", "vier", "", "sechs"]
    corpus = load_corpus(tmp_path, "train", "de", "en")
    assert list(zip(corpus["src"], corpus["tgt"], strict=True)) == [
        ("eins", "one"), ("zwei", "two"), ("drei", "three"), ("vier", "four"), ("sechs", "six")
    ]


def test_control_characters_and_odd_whitespace_do_not_split_or_shift_pairs(tmp_path):
    src = ["a\x00b", "c\u2028d", "\x1b[1me\x1b[0m", "\x00\x07", "f\x85g"]
    tgt = ["A", "B", "C", "D", "E"]
    (tmp_path / "train.de").write_text("\n".join(src), encoding="utf-8")
    (tmp_path / "train.en").write_text("\n".join(tgt), encoding="utf-8")
    corpus = load_corpus(tmp_path, "train", "de", "en")
    assert corpus["src"] == ["ab", "c d", "[1me[0m", "f g"]
    assert corpus["tgt"] == ["A", "B", "C", "E"]
