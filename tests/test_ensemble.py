"""Ensembles: the averaged-probability model, its loading, and the CLI with several -m."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import CheckpointError, save_model
from seq2seq.commands import decode
from seq2seq.data.batching import source_tensors
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.ensemble import Ensemble, load_ensemble
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.search import beam_search, greedy_search
from seq2seq.translator import Translator

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


def _tiny_model(vocab: int, seed: int) -> Seq2Seq:
    """Untrained and unlike the decoding model: one decoder layer, other sizes."""
    torch.manual_seed(seed)
    config = ModelConfig(
        embedding_size=16,
        encoder_hidden_size=8,
        decoder_hidden_size=16,
        attention_size=8,
        dropout=0.0,
        embedding_dropout=0.0,
    )
    return Seq2Seq(config, vocab, vocab).eval()


@pytest.fixture(scope="module")
def other_model(decoding_tokenizer) -> Seq2Seq:
    return _tiny_model(decoding_tokenizer.vocab_size, seed=1)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory, other_model, decoding_tokenizer):
    path = tmp_path_factory.mktemp("ensemble") / "other.ckpt"
    save_model(path, other_model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    return path


@pytest.fixture(scope="module")
def batch(decoding_tokenizer, decoding_val_sources):
    return source_tensors(decoding_tokenizer.encode(decoding_val_sources[:8]))


def _same(a, b, tolerance: float = 0.0) -> None:
    assert a.tokens == b.tokens
    assert a.score == pytest.approx(b.score, abs=tolerance)
    assert a.log_prob == pytest.approx(b.log_prob, abs=tolerance)
    assert a.token_log_probs == pytest.approx(b.token_log_probs, abs=tolerance)


def test_one_model_is_that_model(decoding_model, batch):
    ensemble = Ensemble([decoding_model])
    for ours, theirs in zip(
        greedy_search(ensemble, *batch), greedy_search(decoding_model, *batch), strict=True
    ):
        _same(ours, theirs)
        assert torch.equal(ours.attention, theirs.attention)
    for ours, theirs in zip(
        beam_search(ensemble, *batch, nbest=2), beam_search(decoding_model, *batch, nbest=2),
        strict=True,
    ):
        for a, b in zip(ours, theirs, strict=True):
            _same(a, b)


def test_a_model_with_itself_is_that_model(decoding_model, batch):
    ensemble = Ensemble([decoding_model, decoding_model])
    for ours, theirs in zip(
        beam_search(ensemble, *batch, beam_size=4),
        beam_search(decoding_model, *batch, beam_size=4),
        strict=True,
    ):
        _same(ours[0], theirs[0], tolerance=1e-5)


# What each combination must equal, from the members' own log-probabilities (M, N, V).
COMBINED = {
    "log_prob": lambda lp: torch.log_softmax(lp.mean(dim=0), dim=-1),
    "prob": lambda lp: lp.exp().mean(dim=0).log(),
}


@pytest.mark.parametrize("combine", COMBINED)
def test_decode_step_combines_the_members(decoding_model, other_model, batch, combine):
    models = [decoding_model, other_model]
    ensemble = Ensemble(models, combine)
    src, src_lengths = batch
    rows = torch.tensor([5, 0, 0, 3])  # (N,) as beam search reorders: rows repeat and move
    memories, states = ensemble.encode(src, src_lengths)
    memories = ensemble.reorder_memory(memories, rows)
    states = ensemble.reorder_state(states, rows)
    alone = []  # each member's own (memory, state), decoded on its own
    for model in models:
        memory, state = model.encode(src, src_lengths)
        alone.append((model.reorder_memory(memory, rows), model.reorder_state(state, rows)))
    prev = torch.tensor([2, 40, 41, 42])  # (N,) BOS, then arbitrary pieces
    with torch.inference_mode():
        for _ in range(3):
            log_probs, states, alphas = ensemble.decode_step(prev, states, memories)  # (N, V)
            steps = [m.decode_step(prev, s, mem) for m, (mem, s) in zip(models, alone, strict=True)]
            expected = COMBINED[combine](torch.stack([lp for lp, _, _ in steps]))  # (N, V)
            torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(len(rows)))
            assert log_probs.dtype == torch.float32
            assert torch.equal(alphas, steps[0][2])  # the first member's attention
            alone = [(mem, s) for (mem, _), (_, s, _) in zip(alone, steps, strict=True)]
            prev = log_probs.argmax(dim=1)
    # The two combinations are different rules, not two spellings of one.
    members = torch.stack([lp for lp, _, _ in steps])  # (M, N, V)
    assert not torch.allclose(COMBINED["log_prob"](members), COMBINED["prob"](members), atol=1e-3)


def test_unknown_combine_is_refused(decoding_model):
    with pytest.raises(ValueError, match="combine"):
        Ensemble([decoding_model], "max")


def test_two_models_run_through_search(decoding_model, other_model, batch):
    ensemble = Ensemble([decoding_model, other_model])
    greedy = greedy_search(ensemble, *batch)
    beams = beam_search(ensemble, *batch, beam_size=3, nbest=3)
    assert len(greedy) == len(beams) == batch[0].size(0)
    for hyp, nbest in zip(greedy, beams, strict=True):
        assert hyp.tokens and math.isfinite(hyp.log_prob)
        assert hyp.log_prob == pytest.approx(sum(hyp.token_log_probs), abs=1e-4)
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    # A beam of one is greedy search, ensemble or not.
    for hyp, (one,) in zip(greedy, beam_search(ensemble, *batch, beam_size=1), strict=True):
        _same(hyp, one)


def test_members_must_share_tokenizers_and_languages(
    tmp_path, decoding_checkpoint, decoding_model, decoding_tokenizer, decoding_pairs
):
    other_tokenizer = Tokenizer.train(decoding_pairs[1][:300], vocab_size=400)
    foreign = tmp_path / "foreign.ckpt"
    model = _tiny_model(other_tokenizer.vocab_size, seed=2)
    save_model(foreign, model, other_tokenizer, other_tokenizer, "de", "en")
    reversed_ = tmp_path / "en-de.ckpt"
    save_model(reversed_, decoding_model, decoding_tokenizer, decoding_tokenizer, "en", "de")
    for path, reason in ((foreign, "src SentencePiece model differs"), (reversed_, "en->de")):
        with pytest.raises(CheckpointError, match=reason) as error:
            load_ensemble([decoding_checkpoint, path])
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_model_given_twice_is_refused(tmp_path, decoding_checkpoint, other_checkpoint):
    # An overlapping glob (-m 'runs/*/best.ckpt' -m runs/a/best.ckpt) would weigh it double.
    folder = decoding_checkpoint.parent
    again = folder / ".." / folder.name / decoding_checkpoint.name  # another name, the same file
    with pytest.raises(CheckpointError) as error:
        load_ensemble([decoding_checkpoint, other_checkpoint, again])
    assert str(error.value) == (
        f"{again}: given twice (as {decoding_checkpoint}); each model counts once"
    )


def test_translator_from_checkpoints(decoding_checkpoint, other_checkpoint, decoding_val_sources):
    texts = decoding_val_sources[:3]
    single = Translator.from_checkpoints([decoding_checkpoint])
    assert isinstance(single.model, Seq2Seq)
    expected = Translator.from_checkpoint(decoding_checkpoint).translate(texts)
    assert [r[0].text for r in single.translate(texts)] == [r[0].text for r in expected]
    pair = Translator.from_checkpoints([decoding_checkpoint, other_checkpoint])
    assert isinstance(pair.model, Ensemble) and not pair.model.training
    assert all(len(nbest) == 1 for nbest in pair.translate(texts, beam_size=2))


def test_cli_with_two_models(decoding_checkpoint, other_checkpoint):
    lines = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee."]
    run = subprocess.run(
        [sys.executable, "-m", "seq2seq.cli", "-m", str(decoding_checkpoint)]
        + ["-m", str(other_checkpoint), "--beam-size", "2"],
        input="".join(line + "\n" for line in lines).encode(),
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    first, empty, last = run.stdout.decode().split("\n")[:-1]
    assert first and empty == "" and last
    assert run.stderr == b""


def test_decode_script_with_two_checkpoints(
    tmp_path, decoding_checkpoint, other_checkpoint, decoding_pairs, capsys
):
    for side, lines in zip(("de", "en"), decoding_pairs, strict=True):
        (tmp_path / f"test.{side}").write_text("".join(x + "\n" for x in lines[:10]))
    models = ["--checkpoint", str(decoding_checkpoint), "--checkpoint", str(other_checkpoint)]
    files = ["--src", str(tmp_path / "test.de"), "--ref", str(tmp_path / "test.en")]
    assert decode.main([*models, *files, "--beam-size", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["sentences"] == 10
