import math

import pytest
import torch
from torch import nn

from seq2seq.data.batching import source_tensors
from seq2seq.search import (
    MAX_OUTPUT_LEN,
    Hypothesis,
    SearchOptionError,
    beam_search,
    check_search_options,
    greedy_search,
    output_limit,
    ranking_score,
    top_candidates,
)
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

A, B, C = 4, 5, 6  # the table model's ordinary tokens


class TableModel(nn.Module):
    """The search interface over a fixed bigram table: P(next | previous token) only.

    The state is each row's previous token; the memory is the source mask, one row per sentence;
    attention is uniform over the real source tokens. It records the batch size of every step.
    """

    def __init__(self, probs: dict[int, dict[int, float]], vocab: int = 7):
        super().__init__()
        table = torch.full((vocab, vocab), 1e-4)  # (V, V): row = previous token
        for prev, row in probs.items():
            for token, p in row.items():
                table[prev, token] = p
        self.log_table = (table / table.sum(1, keepdim=True)).log()
        self.step_sizes: list[int] = []

    def encode(self, src, src_lengths):
        return src != PAD_ID, torch.full((src.size(0),), BOS_ID)

    def decode_step(self, prev_tokens, state, memory):
        self.step_sizes.append(prev_tokens.numel())
        alphas = memory.float() / memory.sum(1, keepdim=True)  # (N, S): one per sentence
        beams = prev_tokens.numel() // memory.size(0)  # its rows read it (decode_step's contract)
        return self.log_table[prev_tokens].clone(), prev_tokens, alphas.repeat_interleave(beams, 0)

    @staticmethod
    def reorder_state(state, index):
        return state.index_select(0, index)

    @staticmethod
    def reorder_memory(memory, index):
        return memory.index_select(0, index)


# Greedy takes A (0.5), then nothing after A is likely; B (0.4) then EOS (0.9) is the best path.
TRAP = {
    BOS_ID: {A: 0.5, B: 0.4, C: 0.1},
    A: {A: 0.3, B: 0.3, C: 0.3, EOS_ID: 0.1},
    B: {EOS_ID: 0.9},
}
# EOS is never likely: outputs run until the length limit forces it.
ENDLESS = {BOS_ID: {A: 1.0}, A: {A: 0.5, B: 0.5}, B: {A: 0.5, C: 0.5}, C: {A: 0.5, B: 0.5}}


def _sources(n: int = 1, length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return source_tensors([[A] * length for _ in range(n)])


def _beam(model, ids, **kwargs) -> list[list[Hypothesis]]:
    return beam_search(model, *source_tensors(ids), **kwargs)


def _greedy(model, ids, **kwargs) -> list[Hypothesis]:
    return greedy_search(model, *source_tensors(ids), **kwargs)


def _in_batches(search, model, ids, size, **kwargs) -> list:
    out = []
    for start in range(0, len(ids), size):
        out += search(model, ids[start : start + size], **kwargs)
    return out


def _assert_same(a: Hypothesis, b: Hypothesis) -> None:
    assert a.tokens == b.tokens
    assert a.score == pytest.approx(b.score, abs=1e-5)
    assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_batch_invariance(decoding_model, decoding_tokenizer, decoding_val_sources, beam_size):
    ids = decoding_tokenizer.encode(decoding_val_sources)
    assert len(ids) == 50 and min(map(len, ids)) < max(map(len, ids)) / 2
    if beam_size == 1:
        runs = [_in_batches(_greedy, decoding_model, ids, size) for size in (1, 7, 50)]
        runs = [[[h] for h in run] for run in runs]
    else:
        runs = [
            _in_batches(_beam, decoding_model, ids, size, beam_size=beam_size, nbest=beam_size)
            for size in (1, 7, 50)
        ]
    alone = runs[0]
    for other in runs[1:]:
        for mine, theirs in zip(alone, other, strict=True):
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs, strict=True):
                _assert_same(a, b)
                torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


def test_beam_of_one_is_greedy(decoding_model, decoding_tokenizer, decoding_val_sources):
    ids = decoding_tokenizer.encode(decoding_val_sources)
    greedy = _greedy(decoding_model, ids)
    beam = _beam(decoding_model, ids, beam_size=1)
    for g, (b,) in zip(greedy, beam, strict=True):
        _assert_same(g, b)
        assert g.token_log_probs == pytest.approx(b.token_log_probs, abs=1e-6)


def test_beam_scores_at_least_greedy(decoding_model, decoding_tokenizer, decoding_val_sources):
    ids = decoding_tokenizer.encode(decoding_val_sources[:20])
    greedy = _greedy(decoding_model, ids, length_penalty=0.0)
    beam = _beam(decoding_model, ids, beam_size=5, length_penalty=0.0)
    for g, (b,) in zip(greedy, beam, strict=True):
        assert b.score >= g.score - 1e-5


def test_beam_finds_what_greedy_misses():
    model = TableModel(TRAP)
    (greedy,) = greedy_search(model, *_sources())
    ((best, *_),) = beam_search(model, *_sources(), beam_size=3, nbest=2, length_penalty=0.0)
    assert greedy.tokens[0] == A
    assert best.tokens == [B]
    expected = model.log_table[BOS_ID, B] + model.log_table[B, EOS_ID]
    assert best.log_prob == pytest.approx(float(expected), abs=1e-6)
    assert expected > math.log(0.4 * 0.9) - 1e-3
    assert best.score > greedy.score


def test_a_length_penalty_past_any_float_ranks_without_failing():
    # ((5 + 20) / 6) ** 1000 overflows a float (OverflowError, once a 500 from the service):
    # the score is 0, and the search still returns its hypotheses with their log-probabilities.
    assert ranking_score(-3.0, 20, 1000.0) == 0.0
    assert ranking_score(-3.0, 20, 1.0) == -3.0 / (25 / 6)
    model = TableModel(TRAP)
    (greedy,) = greedy_search(model, *_sources(), length_penalty=5000.0)
    ((best, *_),) = beam_search(model, *_sources(), beam_size=3, nbest=2, length_penalty=5000.0)
    for hyp in (greedy, best):
        assert hyp.score == 0.0 and hyp.log_prob < 0


def test_hypothesis_fields(decoding_model, decoding_tokenizer, decoding_val_sources):
    ids = decoding_tokenizer.encode(decoding_val_sources[:8])
    for search in (_greedy, lambda m, x: [h for n in _beam(m, x, nbest=3) for h in n]):
        for hyp in search(decoding_model, ids):
            steps = len(hyp.tokens) + 1
            assert len(hyp.token_log_probs) == steps
            assert hyp.log_prob == pytest.approx(sum(hyp.token_log_probs), rel=1e-5)
            assert hyp.score == ranking_score(hyp.log_prob, steps, 1.0)
            assert hyp.score == pytest.approx(hyp.log_prob / ((5 + steps) / 6))
            assert hyp.attention.dtype == torch.float32 and hyp.attention.device.type == "cpu"
            assert hyp.attention.shape[0] == steps
            torch.testing.assert_close(hyp.attention.sum(1), torch.ones(steps))
            assert not {PAD_ID, BOS_ID, EOS_ID} & set(hyp.tokens)
    src_lengths = [len(x) + 1 for x in ids]
    assert [h.attention.shape[1] for h in _greedy(decoding_model, ids)] == src_lengths


def test_min_len_blocks_eos():
    model = TableModel(TRAP)
    for min_len in (2, 4):
        (greedy,) = greedy_search(model, *_sources(), min_len=min_len)
        ((beam, *_),) = beam_search(model, *_sources(), beam_size=3, nbest=3, min_len=min_len)
        assert len(greedy.tokens) >= min_len and len(beam.tokens) >= min_len


def test_max_len_forces_eos(decoding_model, decoding_tokenizer, decoding_val_sources):
    # Never EOS unless forced: every output is exactly as long as allowed.
    model = TableModel(ENDLESS)
    src, src_lengths = source_tensors([[A] * 3, [A] * 7])  # real lengths 4 and 8
    limits = [int(1.5 * 4 + 2), int(1.5 * 8 + 2)]
    greedy = greedy_search(model, src, src_lengths, max_len_a=1.5, max_len_b=2)
    beams = beam_search(model, src, src_lengths, beam_size=4, nbest=4, max_len_a=1.5, max_len_b=2)
    for limit, g, nbest in zip(limits, greedy, beams, strict=True):
        assert [len(h.tokens) for h in [g, *nbest]] == [limit] * 5
    ids = decoding_tokenizer.encode(decoding_val_sources[:10])
    for g, b in zip(
        _greedy(decoding_model, ids, max_len_a=0.0, max_len_b=3),
        _beam(decoding_model, ids, max_len_a=0.0, max_len_b=3),
        strict=True,
    ):
        assert len(g.tokens) <= 3 and len(b[0].tokens) <= 3


def test_a_huge_length_limit_is_capped():
    # a * length + b past any tensor size (1e300 failed every sentence inside torch): capped at
    # MAX_OUTPUT_LEN, which an endless model then reaches.
    assert output_limit(8, 1e300, 0) == output_limit(8, 0, 1e300) == MAX_OUTPUT_LEN
    assert output_limit(8, 1.5, 1e300, min_len=MAX_OUTPUT_LEN + 5) == MAX_OUTPUT_LEN + 5
    model = TableModel(ENDLESS)
    src, src_lengths = source_tensors([[A] * 3])
    (greedy,) = greedy_search(model, src, src_lengths, max_len_b=1e300)
    ((beam, *_),) = beam_search(model, src, src_lengths, beam_size=2, nbest=2, max_len_a=1e300)
    assert len(greedy.tokens) == len(beam.tokens) == MAX_OUTPUT_LEN


def test_pad_and_bos_never_generated():
    favourites = {PAD_ID: 0.4, BOS_ID: 0.4, A: 0.1, EOS_ID: 0.1}
    model = TableModel({token: favourites for token in range(7)})
    (greedy,) = greedy_search(model, *_sources())
    (nbest,) = beam_search(model, *_sources(), beam_size=3, nbest=3)
    for hyp in [greedy, *nbest]:
        assert not {PAD_ID, BOS_ID} & set(hyp.tokens)


def test_nbest_distinct_and_sorted(decoding_model, decoding_tokenizer, decoding_val_sources):
    ids = decoding_tokenizer.encode(decoding_val_sources[:10])
    for nbest in _beam(decoding_model, ids, beam_size=5, nbest=5):
        assert len(nbest) == 5
        assert len({tuple(h.tokens) for h in nbest}) == 5
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)


def test_finished_sentences_leave_the_batch():
    # Neither sentence wants EOS, so each runs to its limit: 2 and 9 tokens.
    model = TableModel(ENDLESS)
    src, src_lengths = source_tensors([[A], [A] * 8])  # real lengths 2 and 9
    limits = dict(max_len_a=1.0, max_len_b=0)
    beam_search(model, src, src_lengths, beam_size=2, **limits)
    assert model.step_sizes == [4] * 3 + [2] * 7
    model.step_sizes.clear()
    greedy_search(model, src, src_lengths, **limits)
    assert model.step_sizes == [2] * 3 + [1] * 7


def test_nbest_larger_than_beam_is_refused():
    with pytest.raises(ValueError, match="nbest"):
        beam_search(TableModel(TRAP), *_sources(), beam_size=2, nbest=3)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2, "nbest": 3}, "nbest"),
        ({"length_penalty": math.nan}, "length_penalty"),
        ({"length_penalty": -1.0}, "length_penalty"),
        ({"max_len_a": math.inf}, "max_len_a"),
        ({"max_len_a": -0.5}, "max_len_a"),
        ({"max_len_b": -math.inf}, "max_len_b"),
        ({"min_len": -1}, "min_len"),
        # Wrong types failed deep inside torch (2.0 beams), or passed (True beams).
        ({"beam_size": 2.0}, "beam_size"),
        ({"beam_size": True}, "beam_size"),
        ({"beam_size": 2, "nbest": 1.5}, "nbest"),
        ({"length_penalty": "1"}, "length_penalty"),
        ({"max_len_b": False}, "max_len_b"),
    ],
)
def test_options_out_of_range_are_refused_before_searching(options, option):
    with pytest.raises(SearchOptionError) as error:
        check_search_options(**options)
    assert error.value.option == option and str(error.value).startswith(f"{option}: ")
    model = TableModel(TRAP)
    search = beam_search if "beam_size" in options or "nbest" in options else greedy_search
    with pytest.raises(SearchOptionError):
        search(model, *_sources(), **options)
    assert model.step_sizes == []  # not one step was searched


def test_a_negative_max_len_b_is_floored_by_min_len():
    check_search_options(max_len_a=0.0, max_len_b=-5.0)
    (hyp,) = greedy_search(TableModel(ENDLESS), *_sources(), max_len_a=0.0, max_len_b=-5.0)
    assert len(hyp.tokens) == 1  # min_len 1: one token, then EOS is forced


@pytest.mark.parametrize("width", [40_000, 11_300, 4_099])  # chunks of 64, of 50, plain topk
def test_top_candidates_are_topk(width):
    generator = torch.Generator().manual_seed(0)
    candidates = torch.randn(7, width, generator=generator)
    candidates[0] = -math.inf  # a sentence with no live beam
    candidates[1, 5:] = -math.inf  # a forced prefix: fewer finite candidates than m
    candidates[2] = candidates[2].round(decimals=1)  # many ties
    candidates[3, -10:] = 9.0  # the best in the last chunk
    values, columns = top_candidates(candidates, 10)
    expected, _ = candidates.topk(10, dim=1)
    assert torch.equal(values, expected)
    assert torch.equal(candidates.gather(1, columns), values)
    assert all(len(set(row)) == 10 for row in columns.tolist())
