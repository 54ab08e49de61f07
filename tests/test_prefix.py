"""Prefix-constrained decoding: each output begins with given tokens, and the search (greedy,
beam or sampling) completes it; `Translator.translate(..., prefixes=[...])`."""

import json
import subprocess
import sys

import pytest
import torch

from seq2seq import cli
from seq2seq.cli import output_text
from seq2seq.commands import decode
from seq2seq.completion import MAX_TAIL_BYTES, Spelling, Tails
from seq2seq.data.batching import pad, source_tensors, target_tensor
from seq2seq.search import beam_search, force_decode, greedy_search, sample
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq.translator import Translator
from tests.test_score import _assert_same

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


@pytest.fixture(scope="module")
def sources(decoding_tokenizer, decoding_val_sources) -> list[list[int]]:
    return decoding_tokenizer.encode(decoding_val_sources[:16])


@pytest.fixture(scope="module")
def other_prefixes(decoding_tokenizer, sources) -> list[list[int]]:
    """Prefixes the model would not have chosen, of different lengths (some none)."""
    starts = ["Zwei Hunde", "", "A", "Two dogs play in the", "", "The man"]
    return [decoding_tokenizer.encode([starts[i % len(starts)]])[0] for i in range(len(sources))]


def _prefixes(rows: list[list[int]]) -> torch.Tensor:
    return pad(rows)


def test_forcing_greedy_search_its_own_start_changes_nothing(decoding_model, sources):
    free = greedy_search(decoding_model, *source_tensors(sources))
    for m in (1, 3, 100):  # 100: the whole output, then EOS
        forced = greedy_search(
            decoding_model, *source_tensors(sources),
            prefixes=_prefixes([h.tokens[:m] for h in free]),
        )
        for a, b in zip(forced, free, strict=True):
            _assert_same(a, b)


def test_outputs_begin_with_the_prefix_and_are_scored_as_the_model_scores_them(
    decoding_model, sources, other_prefixes
):
    prefixes = _prefixes(other_prefixes)
    greedy = greedy_search(decoding_model, *source_tensors(sources), prefixes=prefixes)
    beams = beam_search(
        decoding_model, *source_tensors(sources), beam_size=4, nbest=4, prefixes=prefixes
    )
    drawn = sample(decoding_model, *source_tensors(sources), seed=3, prefixes=prefixes)
    outputs = [[h] for h in greedy] + beams + [[h] for h in drawn]
    for prefix, nbest in zip(other_prefixes * 6, outputs, strict=False):
        for hyp in nbest:
            assert hyp.tokens[: len(prefix)] == prefix
    # The scores are the model's own (the prefix's tokens included): forced decoding agrees.
    for found in (greedy, [n[3] for n in beams], drawn):
        forced = force_decode(
            decoding_model, *source_tensors(sources),
            target_tensor([h.tokens for h in found]),
        )
        for a, b in zip(found, forced, strict=True):
            _assert_same(a, b)
    # A beam of one is greedy search, with a prefix too.
    one = beam_search(decoding_model, *source_tensors(sources), beam_size=1, prefixes=prefixes)
    for a, b in zip([n[0] for n in one], greedy, strict=True):
        _assert_same(a, b)


def test_a_prefix_changes_the_rest(decoding_model, sources, decoding_tokenizer):
    """The search goes on from the prefix: it does not put the prefix before the output it
    would have given without one."""
    free = beam_search(decoding_model, *source_tensors(sources), beam_size=4)
    prefix = decoding_tokenizer.encode(["Two dogs"])[0]
    forced = beam_search(
        decoding_model, *source_tensors(sources), beam_size=4,
        prefixes=_prefixes([prefix] * len(sources)),
    )
    assert all(n[0].tokens[: len(prefix)] == prefix for n in forced)
    pasted = sum(n[0].tokens == prefix + f[0].tokens for n, f in zip(forced, free, strict=True))
    assert pasted <= len(sources) // 2


@pytest.mark.parametrize("search", ["greedy", "beam", "sample"])
def test_each_sentence_as_alone(decoding_model, sources, other_prefixes, search):
    def run(rows, prefix_rows):
        src = source_tensors(rows)
        prefixes = _prefixes(prefix_rows)
        if search == "greedy":
            return greedy_search(decoding_model, *src, prefixes=prefixes)
        if search == "beam":
            return [n[0] for n in beam_search(decoding_model, *src, prefixes=prefixes)]
        return sample(decoding_model, *src, seed=5, prefixes=prefixes)

    together = run(sources, other_prefixes)
    for i in (0, 1, 3, 7):
        (alone,) = run([sources[i]], [other_prefixes[i]])
        assert alone.tokens == together[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-5)


def test_the_length_limit_never_cuts_a_prefix(decoding_model, sources, other_prefixes):
    long = [p for p in other_prefixes if len(p) > 2][0]
    for hyps in (
        greedy_search(
            decoding_model, *source_tensors(sources[:2]), max_len_a=0, max_len_b=2,
            prefixes=_prefixes([long, long]),
        ),
        [n[0] for n in beam_search(
            decoding_model, *source_tensors(sources[:2]), max_len_a=0, max_len_b=2,
            prefixes=_prefixes([long, long]),
        )],
    ):
        assert [h.tokens for h in hyps] == [long, long]  # then EOS at once


@pytest.mark.parametrize(
    "prefixes, message",
    [
        (torch.tensor([[5, PAD_ID, 6]] * 2), "a prefix has PAD before its end"),
        (torch.tensor([[5, EOS_ID]] * 2), "a prefix cannot hold BOS or EOS"),
        (torch.tensor([[BOS_ID, 5]] * 2), "a prefix cannot hold BOS or EOS"),
        (torch.tensor([[5]] * 3), r"for a batch of 2, got shape \(3, 1\)"),
        (torch.tensor([5, 6]), r"for a batch of 2, got shape \(2,\)"),
    ],
)
def test_bad_prefix_tensors(decoding_model, sources, prefixes, message):
    for search in (greedy_search, beam_search, sample):
        with pytest.raises(ValueError, match=message):
            search(decoding_model, *source_tensors(sources[:2]), prefixes=prefixes)


def test_translator_prefixes(decoding_model, decoding_tokenizer, decoding_val_sources):
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    texts = decoding_val_sources[:6]
    free = translator.translate(texts, beam_size=3)
    starts = ["Two dogs", "", "A woman is", "", "Zwei", "A"]
    found = translator.translate(texts, beam_size=3, prefixes=starts, batch_size=4)
    for start, nbest, alone in zip(starts, found, free, strict=True):
        assert nbest[0].text.startswith(start)
        if not start:  # no prefix: as without
            assert nbest[0].text == alone[0].text
    # Sampled and greedy, with prefixes that are the model's own start, as without any.
    own = [nbest[0].text.split(" ")[0] for nbest in translator.translate(texts, beam_size=1)]
    again = translator.translate(texts, beam_size=1, prefixes=own)
    assert [n[0].text for n in again] == [
        n[0].text for n in translator.translate(texts, beam_size=1)
    ]
    for nbest, start in zip(translator.translate(texts, sampling=True, prefixes=own), own,
                            strict=True):
        assert nbest[0].text.startswith(start)
    # A space typed then a control character (dropped as in any text) still ends the word.
    for ended in ("Two dogs ", "Two dogs \x00", "Two dogs\t\x7f\x1b"):
        assert translator.prefix_steps([ended]) == translator.prefix_steps(["Two dogs "])
        assert [r.text for r in translator.translate(texts[:1], beam_size=3, nbest=3,
                                                     prefixes=[ended])[0]] == [
            r.text for r in translator.translate(texts[:1], beam_size=3, nbest=3,
                                                 prefixes=["Two dogs "])[0]
        ]
    assert translator.prefix_steps(["Two dogs\x00"]) != translator.prefix_steps(["Two dogs "])
    # Any iterable, as translate takes: a generator is read once.
    assert translator.prefix_steps(p for p in ["Two dogs", "A"]) == translator.prefix_steps(
        ["Two dogs", "A"]
    )
    # An empty source gets the empty result, prefix or not.
    assert translator.translate([""], prefixes=["A"])[0][0].text == ""


@pytest.mark.parametrize(
    "prefixes, error, message",
    [
        (["A"], ValueError, "1 prefixes for 2 texts"),
        ("AB", TypeError, "prefixes: a list of sentences, got one str"),
        (["A", 3], TypeError, r"prefixes\[1\]: a str, got int"),
        (["A", "a " * 30], ValueError, r"prefixes\[1\]: 30 pieces; at most 20"),
    ],
)
def test_translator_bad_prefixes(decoding_model, decoding_tokenizer, prefixes, error, message):
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    with pytest.raises(error, match=message):
        translator.translate(["Ein Hund.", "Zwei Katzen."], prefixes=prefixes, max_src_len=20)


# --- the last word of a prefix, completed ---

WORD = b" "  # what "▁", a word's start, spells


def test_spelling_allows_the_pieces_that_agree_with_what_is_left():
    pieces = [b"", WORD + b"r", WORD + b"ri", WORD + b"riding", b"i", WORD, b" ", WORD + b"x",
              b"ri", b"", WORD + b"ri"]
    spelling = Spelling(pieces)
    # Those that begin with all of " ri", and those that are a beginning of it; never one that
    # spells nothing, nor "ri" without the word's start, nor a blocked one.
    assert spelling.allowed(WORD + b"ri").tolist() == [1, 2, 3, 5, 6, 10]
    assert spelling.allowed(b"i").tolist() == [4]
    assert spelling.allowed(b"q").tolist() == []
    assert spelling.lengths.tolist() == [len(p) for p in pieces]
    assert Spelling(pieces, blocked=[6]).allowed(WORD + b"ri").tolist() == [1, 2, 3, 5, 10]


def test_split_prefix(decoding_tokenizer):
    tok = decoding_tokenizer
    two_dogs = tok.encode(["Two dogs"])[0]
    assert tok.split_prefix(tok.encode(["Two dogs pl"])[0], ends_word=False) == (
        two_dogs, b" pl"
    )
    assert tok.split_prefix(two_dogs, ends_word=True) == (two_dogs, WORD)
    assert tok.split_prefix(two_dogs, ends_word=False) == (tok.encode(["Two"])[0], b" dogs")
    assert tok.split_prefix([], ends_word=True) == ([], b"")
    # A character outside the vocabulary is spelled by byte-fallback pieces, its bytes in the tail.
    assert tok.split_prefix(tok.encode(["A 日"])[0], ends_word=False) == (
        tok.encode(["A"])[0], " 日".encode()
    )
    assert tok.spelling.pieces[EOS_ID] == b""
    # Of a last word longer than MAX_TAIL_BYTES only the end is completed, the rest forced: the
    # output limit, a step for each byte of the tail, stays near the prefix's pieces.
    ids = tok.encode(["A " + "Hundeschlitten" * 10])[0]
    forced, tail = tok.split_prefix(ids, ends_word=False)
    assert MAX_TAIL_BYTES - 16 < len(tail) <= MAX_TAIL_BYTES
    assert forced == ids[: len(forced)]
    assert b"".join(tok.spelling.pieces[i] for i in forced) + tail == (
        " A " + "Hundeschlitten" * 10
    ).encode()


def test_pieces_spell_what_they_decode_to(decoding_tokenizer):
    """Completion compares a tail with the bytes pieces spell, so they must be the bytes the
    output text gets. Spelled as "▁", a word's start matched the byte pieces of "▁" (E2 96 81),
    which decode to that character: a prefix "A Zürich" came out as "A▁Zürich"."""
    tok = decoding_tokenizer
    byte = {b: tok._sp.piece_to_id(f"<0x{b:02X}>") for b in b"\xe2\x96\x81 "}
    assert UNK_ID not in byte.values()
    a, dog = tok.encode(["A"])[0] + tok.encode(["dog"])[0]
    for ids in (
        [a, dog], [a, *tok.encode(["日"])[0], dog], [a, byte[0xE2], byte[0x96], byte[0x81], dog],
        [a, byte[0x20], dog], [a, *tok.encode(["Ein Hund läuft."])[0]],
    ):
        spelled = b"".join(tok.spelling.pieces[i] for i in ids).decode()
        assert spelled.lstrip(" ") == tok.decode([ids])[0]
    # Nor is any of these bytes a word start: <0x20> spells " ", but it decodes as a space of
    # its own, not as a word's start (the tail " á" came out as " á bike.").
    for tail in (" Zürich", " á", " "):
        assert not set(tok.spelling.allowed(tail.encode()).tolist()) & set(byte.values())


def test_greedy_search_completes_any_beginning_of_its_own_first_word_as_it_would(
    decoding_model, decoding_tokenizer, decoding_val_sources
):
    """Its own output spells any of its beginnings, so greedy search finds it again. Forcing the
    pieces the tokenizer makes of "Tw" ("▁T", "w") would lead it elsewhere."""
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    texts = decoding_val_sources[:16]
    free = [n[0] for n in translator.translate(texts, beam_size=1)]
    words = [r.text.split(" ")[0] for r in free]
    for cut in (1, 2, 3, None):
        # None: the whole first word and a space after it (the next piece begins a word)
        starts = [w + " " if cut is None else w[:cut] for w in words]
        found = [n[0] for n in translator.translate(texts, beam_size=1, prefixes=starts)]
        assert [r.tokens for r in found] == [r.tokens for r in free]
        assert [r.score for r in found] == pytest.approx([r.score for r in free], abs=1e-5)


def test_one_tail_a_sentence(decoding_model, decoding_tokenizer, sources):
    tails = Tails(decoding_tokenizer.spelling, [WORD])
    for search in (greedy_search, beam_search, sample):
        with pytest.raises(ValueError, match="tails: 1 for a batch of 2"):
            search(decoding_model, *source_tensors(sources[:2]), tails=tails)


PARTIAL = ["Two do", "", "A m", "The ", "Zwei Hun", "A 日", "A man in a bl", "Tw"]


@pytest.mark.parametrize("options", [{"beam_size": 1}, {"beam_size": 3, "nbest": 3},
                                     {"sampling": True, "seed": 4}])
def test_every_search_completes_the_last_word(
    decoding_model, decoding_tokenizer, decoding_val_sources, options
):
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    texts = decoding_val_sources[: len(PARTIAL)]
    together = translator.translate(texts, prefixes=PARTIAL, **options)
    for start, nbest in zip(PARTIAL, together, strict=True):
        for result in nbest:
            assert result.text.startswith(start.strip())
            if start.endswith(" "):  # a complete word: the next begins after a space
                assert result.text[len(start) - 1] == " "
    # The scores are the model's own: forced decoding of each output's pieces agrees (not of
    # its text, which the tokenizer may split otherwise than the search spelled it).
    best = [n[0] for n in together]
    forced = force_decode(
        decoding_model, *source_tensors(decoding_tokenizer.encode(texts)),
        target_tensor([r.tokens for r in best]),
    )
    assert [h.log_prob for h in forced] == pytest.approx([r.log_prob for r in best], abs=1e-5)
    # Each sentence as alone.
    for i in (0, 2, 5, 6):
        (alone,) = translator.translate([texts[i]], prefixes=[PARTIAL[i]], **options)
        assert [r.tokens for r in alone] == [r.tokens for r in together[i]]


def test_the_length_limit_never_cuts_a_tail(
    decoding_model, decoding_tokenizer, decoding_val_sources
):
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    for start in ("Zwei Hundeschlittenfahr", "A " + "Hundeschlitten" * 10):  # a long tail too
        for beam in (1, 3):
            (found,) = translator.translate(
                decoding_val_sources[:1], beam_size=beam, prefixes=[start], max_len_a=0,
                max_len_b=1,
            )
            assert found[0].text.startswith(start)


# --- translate --prefix FILE ---


@pytest.fixture
def prefix_files(tmp_path, decoding_val_sources):
    lines = decoding_val_sources[:9]
    prefixes = ["Two dogs", "", "A man", "", "The", "", "A woman is", "Zwei", "A"]
    source, prefix = tmp_path / "in.de", tmp_path / "prefix.en"
    source.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    prefix.write_text("".join(f"{x}\n" for x in prefixes), encoding="utf-8")
    return lines, prefixes, source, prefix


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "seq2seq.cli", *map(str, args)]


def test_translate_prefix_file(decoding_checkpoint, decoding_model, decoding_tokenizer,
                               prefix_files, tmp_path, capsys):
    lines, prefixes, source, prefix = prefix_files
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    expected = [
        output_text(n[0]) for n in translator.translate(lines, beam_size=3, prefixes=prefixes)
    ]
    args = ["-m", decoding_checkpoint, "-i", source, "--beam-size", 3, "--prefix", prefix]
    assert cli.main([*map(str, args)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    # stdin redirected from the file, and 2 worker processes: the same lines.
    with open(source, "rb") as stdin:
        redirected = subprocess.run(
            _command("-m", decoding_checkpoint, "--beam-size", 3, "--prefix", prefix),
            stdin=stdin, capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    assert redirected == expected
    two = tmp_path / "two.en"
    assert cli.main([*map(str, args), "--workers", "2", "-o", str(two)]) == 0
    assert two.read_text(encoding="utf-8").splitlines() == expected


def test_translate_prefix_errors(decoding_checkpoint, prefix_files, tmp_path, capsys):
    lines, prefixes, source, prefix = prefix_files
    short = tmp_path / "short.en"
    short.write_text("A\nB\n", encoding="utf-8")
    model = ["-m", str(tmp_path / "never-read.ckpt")]  # every error comes before loading
    for args, message in (
        (["--prefix", str(short)], f"--prefix {short}: 2 lines for 9 input lines"),
        (["--prefix", str(tmp_path / "no.en")], f"--prefix {tmp_path / 'no.en'}: no such file"),
    ):
        assert cli.main([*model, "-i", str(source), *args]) == 2
        assert capsys.readouterr().err == f"translate: error: {message}\n"
    piped = subprocess.run(
        _command(*model, "--prefix", prefix), input="Ein Hund.\n", capture_output=True, text=True,
    )
    assert (piped.returncode, piped.stderr) == (
        2, "translate: error: --prefix: needs a whole input file (-i, or < FILE), not a pipe\n"
    )
    # A prefix the model cannot take (longer than --max-src-len) fails its line alone.
    long = tmp_path / "long.en"
    long.write_text("A\n" * 8 + "a " * 30 + "\n", encoding="utf-8")
    out = tmp_path / "out.en"
    for workers in ("1", "2"):  # the error comes back from a worker process as it was raised
        code = cli.main([
            "-m", str(decoding_checkpoint), "-i", str(source), "--prefix", str(long),
            "--max-src-len", "20", "-o", str(out), "--workers", workers,
        ])
        assert code == 1
        written = out.read_text(encoding="utf-8").splitlines()
        assert len(written) == 9 and written[8] == ""
        assert all(w.startswith("A") for w in written[:8])
        assert (
            f"translate: warning: line 9: --prefix {long}: 30 pieces; at most 20; empty line\n"
        ) in capsys.readouterr().err


def test_decode_prefix_file(decoding_checkpoint, decoding_val_sources, tmp_path, capsys):
    """seq2seq-decode --prefix FILE: the lines translate --prefix gives; errors in one line."""
    sources = decoding_val_sources[:12]
    given = ["Two do", "", "A m", "The ", "", "Zwei Hun"] * 2
    translator = Translator.from_checkpoint(decoding_checkpoint)
    expected = [output_text(n[0]) for n in translator.translate(sources, beam_size=2,
                                                                prefixes=given)]
    src, ref, prefix = tmp_path / "src.de", tmp_path / "ref.en", tmp_path / "prefix.en"
    src.write_text("".join(f"{s}\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(f"{r}\n" for r in expected), encoding="utf-8")
    prefix.write_text("".join(f"{p}\n" for p in given), encoding="utf-8")
    out = tmp_path / "hyps.en"
    args = ["-m", str(decoding_checkpoint), "--src", str(src), "--ref", str(ref),
            "--beam-size", "2"]
    assert decode.main([*args, "--prefix", str(prefix), "--output", str(out), "--json"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == expected
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["bleu"] == pytest.approx(100)
    short, long = tmp_path / "short.en", tmp_path / "long.en"
    short.write_text("A\n", encoding="utf-8")
    long.write_text("".join("a " * 30 + "\n" if i in (3, 5) else "A\n" for i in range(12)),
                    encoding="utf-8")
    for more, message in (
        (["--prefix", str(short)], f"--prefix {short}: 1 lines for 12 input lines"),
        # The first line that fails, also when it is the second of a worker's share.
        *(
            (["--prefix", str(long), "--max-src-len", "20", "--workers", workers],
             f"--prefix {long}: line 4: 30 pieces; at most 20")
            for workers in ("1", "2")
        ),
    ):
        assert decode.main([*args, *more]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"seq2seq-decode: error: {message}"
    with pytest.raises(SystemExit):
        decode.main([*args, "--prefix", str(prefix), "--prefix-words", "1"])
    assert "--prefix: the prefixes come from a file or from the references, not both" in (
        capsys.readouterr().err
    )


def test_decode_prefix_words(decoding_checkpoint, decoding_val_sources, tmp_path, capsys):
    """seq2seq-decode --prefix-words K: each output begins with the reference's first K words;
    next_word is how often the word after them is the reference's too."""
    sources = decoding_val_sources[:30]
    translator = Translator.from_checkpoint(decoding_checkpoint)
    references = [n[0].text for n in translator.translate(sources, beam_size=2)]
    # References the model would not all give: every third one is another sentence's.
    references = [references[(i + 1) % 30] if i % 3 == 0 else r for i, r in enumerate(references)]
    src, ref = tmp_path / "src.de", tmp_path / "ref.en"
    src.write_text("".join(f"{s}\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(f"{r}\n" for r in references), encoding="utf-8")
    args = ["-m", str(decoding_checkpoint), "--src", str(src), "--ref", str(ref),
            "--beam-size", "2", "--json"]
    reports = {}
    for k, c in ((0, 0), (2, 0), (1, 2)):
        out = tmp_path / f"hyps{k}.en"
        assert decode.main(
            [*args, "--prefix-words", str(k), "--prefix-chars", str(c), "--output", str(out)]
        ) == 0
        reports[k, c] = json.loads(capsys.readouterr().out.splitlines()[-1])
        hyps = out.read_text(encoding="utf-8").splitlines()
        # The first k words, and the first c characters of the next (a word begun).
        prefixes = [" ".join(r.split()[:k] + [r.split()[k][:c]]) for r in references]
        assert all(h.startswith(p.strip()) for h, p in zip(hyps, prefixes, strict=True))
        same = sum(h.split()[k:k + 1] == r.split()[k:k + 1]
                   for h, r in zip(hyps, references, strict=True))
        assert (reports[k, c]["prefix_words"], reports[k, c]["prefix_chars"]) == (k, c)
        assert reports[k, c]["next_word"] == round(same / 30, 4)
    # Without a prefix the outputs are the references two times in three.
    assert reports[0, 0]["next_word"] >= 0.66
    assert decode.main([*args]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["bleu"] == reports[0, 0]["bleu"]
    with pytest.raises(SystemExit):
        decode.main([*args, "--prefix-words", "-1"])
    assert "argument --prefix-words: must be at least 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        decode.main([*args, "--prefix-chars", "2"])
    assert "--prefix-chars: applies with --prefix-words only" in capsys.readouterr().err
