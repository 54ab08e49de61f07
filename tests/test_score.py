"""Forced decoding (`search.force_decode`), `Translator.score` and `seq2seq-score`."""

import math
import re

import pytest
import torch

from seq2seq import cli
from seq2seq.commands import score
from seq2seq.data.batching import source_tensors, target_tensor
from seq2seq.ensemble import Ensemble
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.search import (
    Hypothesis,
    SearchOptionError,
    beam_search,
    force_decode,
    greedy_search,
)
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


@pytest.fixture(scope="module")
def sources(decoding_tokenizer, decoding_val_sources) -> list[list[int]]:
    return decoding_tokenizer.encode(decoding_val_sources[:24])


def _forced(model, sources, targets, **kwargs) -> list[Hypothesis]:
    return force_decode(model, *source_tensors(sources), target_tensor(targets), **kwargs)


def _assert_same(found: Hypothesis, forced: Hypothesis) -> None:
    assert forced.tokens == found.tokens
    assert forced.log_prob == pytest.approx(found.log_prob, abs=1e-5)
    assert forced.score == pytest.approx(found.score, abs=1e-5)
    assert forced.token_log_probs == pytest.approx(found.token_log_probs, abs=1e-5)
    torch.testing.assert_close(forced.attention, found.attention, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_forcing_a_search_output_gives_its_scores(decoding_model, sources, length_penalty):
    """Whatever the search found, forced decoding of it reports the same numbers: the tokens'
    log-probabilities, the total, the length-penalised score and the attention."""
    greedy = greedy_search(decoding_model, *source_tensors(sources), length_penalty=length_penalty)
    for found, forced in zip(
        greedy,
        _forced(decoding_model, sources, [h.tokens for h in greedy], length_penalty=length_penalty),
        strict=True,
    ):
        _assert_same(found, forced)
    beams = beam_search(
        decoding_model, *source_tensors(sources), beam_size=4, nbest=4,
        length_penalty=length_penalty,
    )
    for rank in range(4):  # the 4th best is as much the model's as the best
        found = [nbest[rank] for nbest in beams]
        forced = _forced(
            decoding_model, sources, [h.tokens for h in found], length_penalty=length_penalty
        )
        for a, b in zip(found, forced, strict=True):
            _assert_same(a, b)


def test_forced_decoding_matches_teacher_forcing(decoding_model, decoding_tokenizer, sources):
    """An independent path: training's forward pass over the whole reference at once."""
    references = decoding_tokenizer.encode(
        ["A man is riding a bike.", "", "Two dogs play in the snow near a red house."] * 8
    )
    forced = _forced(decoding_model, sources, references)
    src, src_lengths = source_tensors(sources)
    tgt_out = target_tensor(references)  # (B, T)
    tgt_in = torch.cat([torch.full((len(sources), 1), BOS_ID), tgt_out[:, :-1]], dim=1)
    tgt_in = tgt_in.masked_fill(tgt_in == EOS_ID, PAD_ID)
    with torch.no_grad():
        log_probs = decoding_model(src, src_lengths, tgt_in).log_softmax(-1)  # (B, T, V)
    per_token = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2)  # (B, T)
    for hyp, reference, row in zip(forced, references, per_token, strict=True):
        assert hyp.tokens == reference
        assert len(hyp.token_log_probs) == len(reference) + 1  # EOS included
        assert hyp.token_log_probs == pytest.approx(row[: len(reference) + 1].tolist(), abs=1e-5)
        assert hyp.log_prob == pytest.approx(sum(hyp.token_log_probs), abs=1e-5)
        assert hyp.attention.shape == (len(reference) + 1, len(hyp.attention[0]))
        torch.testing.assert_close(hyp.attention.sum(1), torch.ones(len(reference) + 1))


def test_forced_decoding_is_batch_invariant(decoding_model, decoding_tokenizer, sources):
    references = decoding_tokenizer.encode(
        [f"{n} people are standing in front of a building." for n in range(len(sources))]
    )
    alone = [_forced(decoding_model, [s], [r])[0] for s, r in zip(sources, references, strict=True)]
    for a, b in zip(alone, _forced(decoding_model, sources, references), strict=True):
        _assert_same(a, b)


def test_forced_decoding_of_an_ensemble(decoding_model, decoding_tokenizer, sources):
    torch.manual_seed(3)
    vocab = decoding_tokenizer.vocab_size
    config = ModelConfig(embedding_size=16, encoder_hidden_size=8, decoder_hidden_size=16,
                         attention_size=8, dropout=0.0, embedding_dropout=0.0)
    ensemble = Ensemble([decoding_model, Seq2Seq(config, vocab, vocab).eval()], combine="prob")
    (found,) = beam_search(ensemble, *source_tensors(sources[:1]), beam_size=3)
    (forced,) = _forced(ensemble, sources[:1], [found[0].tokens])
    _assert_same(found[0], forced)


def test_force_decode_refuses_targets_that_would_not_end(decoding_model, sources):
    src, src_lengths = source_tensors(sources[:2])
    for bad in ([[7, 8, PAD_ID], [7, EOS_ID, PAD_ID]],  # no EOS: the row would never end
                [[7, EOS_ID, 9], [EOS_ID, PAD_ID, PAD_ID]],  # a token after EOS
                [[EOS_ID, EOS_ID], [EOS_ID, PAD_ID]]):  # two EOS
        with pytest.raises(ValueError, match="each target must end in its only EOS"):
            force_decode(decoding_model, src, src_lengths, torch.tensor(bad))
    with pytest.raises(ValueError, match="3 targets for 2 sources"):
        force_decode(decoding_model, src, src_lengths, target_tensor([[7], [8], [9]]))
    with pytest.raises(SearchOptionError, match="length_penalty"):
        force_decode(decoding_model, src, src_lengths, target_tensor([[7], [8]]), math.nan)


def test_translator_score(decoding_model, decoding_tokenizer, decoding_val_sources):
    translator = Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)
    texts = decoding_val_sources[:10]
    best = [nbest[0] for nbest in translator.translate(texts, beam_size=3)]
    # Its own output, as text: scored as the search scored it wherever the text's pieces are the
    # output's (SentencePiece may split a decoded text otherwise).
    scored = translator.score(texts, [r.text for r in best])
    same = [(r, s) for r, s in zip(best, scored, strict=True) if r.tokens == s.tokens]
    assert len(same) >= 8
    for result, forced in same:
        assert forced.score == pytest.approx(result.score, abs=1e-5)
        assert forced.log_prob == pytest.approx(result.log_prob, abs=1e-5)
        assert forced.tgt_pieces == result.tgt_pieces and forced.src_pieces == result.src_pieces

    long = " ".join(texts)
    results = translator.score([texts[0], long, texts[1], ""], ["A dog.", "A dog.", long, ""],
                               max_len=40)
    assert results[1] is None and results[2] is None  # either side too long
    assert results[0].tgt_pieces[-1] == "</s>" and results[3].tokens == []
    assert len(results[3].token_log_probs) == 1  # an empty reference: EOS alone

    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        translator.score(["a", "b"], ["a"])
    with pytest.raises(TypeError, match=r"targets: a list of sentences, got one str"):
        translator.score(["a"], "a")
    with pytest.raises(TypeError, match=r"sources\[1\]: a str, got int"):
        translator.score(["a", 1], ["a", "b"])
    with pytest.raises(ValueError, match="max_len: must be an integer >= 1, got 0"):
        translator.score(["a"], ["a"], max_len=0)


def _write(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_score_command(decoding_checkpoint, decoding_val_sources, tmp_path, capsys):
    """`translate --scores`, then seq2seq-score of its own output: the same scores, one line a
    pair, in order; the perplexity ends stderr."""
    src = _write(tmp_path / "src.de", decoding_val_sources[:20])
    translated = tmp_path / "out.tsv"
    assert cli.main(["-m", str(decoding_checkpoint), "-i", str(src), "-o", str(translated),
                     "--scores", "--length-penalty", "0.6"]) == 0
    printed, texts = zip(*(line.split("\t") for line in translated.read_text().splitlines()),
                         strict=True)
    ref = _write(tmp_path / "ref.en", list(texts))
    capsys.readouterr()
    assert score.main(["-m", str(decoding_checkpoint), "--src", str(src), "--ref", str(ref),
                       "--length-penalty", "0.6"]) == 0
    out, err = capsys.readouterr()
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 20 and all(len(row) == 3 for row in rows)
    same = sum(float(row[0]) == pytest.approx(float(p), abs=2e-4) for row, p in zip(
        rows, printed, strict=True))
    assert same >= 16  # the rest re-tokenize into other pieces
    log_prob, tokens = sum(float(r[1]) for r in rows), sum(int(r[2]) for r in rows)
    (summary,) = err.splitlines()
    assert summary.startswith(f"seq2seq-score: 20 pairs, {tokens} reference tokens")
    perplexity = float(re.search(r"perplexity ([0-9.]+);", summary).group(1))
    assert perplexity == pytest.approx(math.exp(-log_prob / tokens), rel=1e-3)


def test_score_command_limits_and_errors(decoding_checkpoint, tmp_path, capsys):
    src = _write(tmp_path / "src.de", ["Ein Hund.", "Ein Hund " * 40, "Zwei Katzen."])
    ref = _write(tmp_path / "ref.en", ["A dog.", "A dog.", "Two cats."])
    output = tmp_path / "new" / "scores.tsv"
    model = ["-m", str(decoding_checkpoint)]
    assert score.main([*model, "--src", str(src), "--ref", str(ref), "-o", str(output),
                       "--max-len", "30"]) == 1
    lines = output.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == "nan\tnan\tnan" and "nan" not in lines[0] + lines[2]
    err = capsys.readouterr().err
    assert "seq2seq-score: warning: line 2: longer than --max-len 30 pieces" in err
    assert err.endswith("seq2seq-score: 1 pairs not scored (--max-len 30)\n")

    short = _write(tmp_path / "short.en", ["A dog."])
    assert score.main([*model, "--src", str(src), "--ref", str(short)]) == 2
    assert capsys.readouterr().err == (
        f"seq2seq-score: error: {src} has 3 lines but {short} has 1\n"
    )
    assert score.main([*model, "--src", str(src), "--ref", str(ref), "-o", "/dev/full"]) == 2
    assert capsys.readouterr().err.endswith(
        "seq2seq-score: error: /dev/full: No space left on device\n"
    )
    for args, message in (
        (["--length-penalty", "nan"], "argument --length-penalty: must be a finite number"),
        (["-o", str(tmp_path)], f"--output {tmp_path}: a folder, not a file"),
        (["--max-len", "0"], "argument --max-len: must be at least 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_:
            score.main([*model, "--src", str(src), "--ref", str(ref), *args])
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("seq2seq-score: error: ") and message in error
