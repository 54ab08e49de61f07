"""Sampling (`search.sample`, `translate --sampling`): drawn from the model's distribution, with
top-k and temperature, reproducible per sentence whatever the batch."""

import pytest
import torch

from seq2seq import cli
from seq2seq.data.batching import source_tensors, target_tensor
from seq2seq.search import SearchOptionError, force_decode, greedy_search, sample
from seq2seq.special_tokens import BOS_ID, EOS_ID
from tests.test_search import ENDLESS, TableModel

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

A, B, C = 4, 5, 6  # the table model's ordinary tokens
# The first token is A, B or C with these probabilities; EOS follows for certain.
FIRST = {BOS_ID: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS_ID: 1.0}, B: {EOS_ID: 1.0}, C: {EOS_ID: 1.0}}
DRAWS = 3000


def _distinct_sources(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n different sources (the table model ignores them, but each draws from its own
    generator): the base-3 digits of 0 .. n-1 written with A, B and C."""
    return source_tensors([[A + i // 3**d % 3 for d in range(8)] for i in range(n)])


def _first_tokens(**options) -> dict[int, float]:
    hyps = sample(TableModel(FIRST), *_distinct_sources(DRAWS), **options)
    firsts = [h.tokens[0] for h in hyps]
    return {token: firsts.count(token) / DRAWS for token in (A, B, C)}


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, {A: 0.5, B: 0.3, C: 0.2}),
        ({"sampling_topk": 2}, {A: 0.625, B: 0.375, C: 0.0}),  # C is not among the 2 best
        ({"temperature": 0.5}, {A: 0.658, B: 0.237, C: 0.105}),  # p ** 2, renormalised
        ({"temperature": 1e6}, {A: 1 / 3, B: 1 / 3, C: 1 / 3}),  # flat over the top 3
    ],
)
def test_draws_follow_the_distribution(options, expected):
    if options.get("temperature") == 1e6:
        options = {**options, "sampling_topk": 3}
    frequencies = _first_tokens(seed=11, **options)
    # 3000 draws: the standard error of a frequency is at most 0.009.
    for token, p in expected.items():
        assert frequencies[token] == pytest.approx(p, abs=0.035)


@pytest.mark.parametrize("options", [{"sampling_topk": 1}, {"temperature": 1e-300}])
def test_top_1_or_no_temperature_is_greedy(
    decoding_model, decoding_tokenizer, decoding_val_sources, options
):
    batch = source_tensors(decoding_tokenizer.encode(decoding_val_sources))
    drawn_ones = sample(decoding_model, *batch, seed=5, **options)
    for drawn, greedy in zip(drawn_ones, greedy_search(decoding_model, *batch), strict=True):
        assert drawn.tokens == greedy.tokens
        assert drawn.log_prob == pytest.approx(greedy.log_prob, abs=1e-6)


def test_same_seed_same_samples_in_any_batch(
    decoding_model, decoding_tokenizer, decoding_val_sources
):
    ids = decoding_tokenizer.encode(decoding_val_sources)
    whole = sample(decoding_model, *source_tensors(ids), seed=3)
    alone = [sample(decoding_model, *source_tensors([x]), seed=3)[0] for x in ids]
    reversed_ = sample(decoding_model, *source_tensors(ids[::-1]), seed=3)[::-1]
    for a, b, c in zip(whole, alone, reversed_, strict=True):
        assert a.tokens == b.tokens == c.tokens
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)
    other_seed = sample(decoding_model, *source_tensors(ids), seed=4)
    assert sum(a.tokens != b.tokens for a, b in zip(whole, other_seed, strict=True)) >= 10
    greedy = greedy_search(decoding_model, *source_tensors(ids))
    assert sum(a.tokens != g.tokens for a, g in zip(whole, greedy, strict=True)) >= 10
    for seed in (-1, 10**80):  # any int is a seed
        assert len(sample(decoding_model, *source_tensors(ids[:2]), seed=seed)) == 2


def test_reported_scores_are_the_models(decoding_model, decoding_tokenizer, decoding_val_sources):
    """Tempered or cut to the top k, a sample's log-probabilities are the model's own: forced
    decoding of the sample gives the same."""
    src, src_lengths = source_tensors(decoding_tokenizer.encode(decoding_val_sources[:20]))
    drawn = sample(decoding_model, src, src_lengths, sampling_topk=5, temperature=0.5, seed=1,
                   length_penalty=0.6)
    forced = force_decode(decoding_model, src, src_lengths,
                          target_tensor([h.tokens for h in drawn]), length_penalty=0.6)
    for d, f in zip(drawn, forced, strict=True):
        assert d.tokens == f.tokens
        assert d.token_log_probs == pytest.approx(f.token_log_probs, abs=1e-5)
        assert d.score == pytest.approx(f.score, abs=1e-5)


def test_length_limits_hold():
    src, src_lengths = _distinct_sources(200)
    hyps = sample(TableModel(ENDLESS), src, src_lengths, max_len_a=0.0, max_len_b=4.0, min_len=2)
    assert {len(h.tokens) for h in hyps} == {4}  # EOS is never likely: the limit forces it
    hyps = sample(TableModel(FIRST), src, src_lengths, min_len=2)
    assert all(len(h.tokens) >= 2 for h in hyps)  # EOS is blocked until 2 tokens exist


@pytest.mark.parametrize(
    "options, option",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"sampling_topk": -1}, "sampling_topk"),
        ({"sampling_topk": 2.0}, "sampling_topk"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_options_out_of_range_are_refused(options, option):
    with pytest.raises(SearchOptionError) as error:
        sample(TableModel(FIRST), *_distinct_sources(2), **options)
    assert error.value.option == option


def test_translate_sampling(decoding_checkpoint, decoding_val_sources, tmp_path, capsys):
    src = tmp_path / "src.de"
    src.write_text("".join(s + "\n" for s in decoding_val_sources[:20]), encoding="utf-8")
    outputs = []
    for seed, batch_size in ((9, 128), (9, 3), (10, 128)):
        out = tmp_path / f"{seed}-{batch_size}.en"
        args = ["-m", decoding_checkpoint, "-i", src, "-o", out, "--sampling", "--seed", seed]
        assert cli.main([*map(str, args), "--batch-size", str(batch_size)]) == 0
        outputs.append(out.read_text().splitlines())
    assert len(outputs[0]) == 20 and outputs[0] == outputs[1] != outputs[2]

    model = ["-m", str(decoding_checkpoint), "-i", str(src)]
    for args, message in (
        (["--sampling", "--beam-size", "5"], "argument --beam-size: does not apply with"),
        (["--temperature", "0.5"], "argument --temperature: applies with --sampling only"),
        (["--seed", "1"], "argument --seed: applies with --sampling only"),
        (["--sampling", "--nbest", "2"], "argument --nbest: sampling draws one translation"),
        (["--sampling", "--temperature", "0"], "argument --temperature: must be a finite number"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*model, *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
