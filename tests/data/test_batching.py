import pytest
import torch
from torch.utils.data import DataLoader

from seq2seq.data.batching import Batch, TokenBatchSampler, collate
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID

N = 1000


@pytest.fixture(scope="module")
def lengths() -> tuple[list[int], list[int]]:
    """Sentence lengths shaped like a real corpus: mostly short, a few long, some empty."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 40, (N,), generator=g)
    tgt = (src.float() * (0.5 + torch.rand(N, generator=g))).long()
    return src.tolist(), tgt.tolist()


def sampler(lengths, **kwargs) -> TokenBatchSampler:
    return TokenBatchSampler(*lengths, **{"max_tokens": 400, "shuffle": True, **kwargs})


def cost(batch: list[int], lengths) -> int:
    src, tgt = lengths
    return len(batch) * max(max(src[i] + 1, tgt[i] + 1) for i in batch)


def epoch(s: TokenBatchSampler, number: int) -> list[list[int]]:
    s.set_epoch(number)
    return list(s)


# collate


def test_collate_pads_and_places_bos_eos():
    batch = collate([(5, [7, 8, 9], [10, 11]), (2, [7], []), (0, [], [12])])
    assert isinstance(batch, Batch)
    assert batch.src.tolist() == [[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID], [EOS_ID, 0, 0, 0]]
    assert batch.src_lengths.tolist() == [4, 2, 1]
    assert batch.tgt_in.tolist() == [[BOS_ID, 10, 11], [BOS_ID, 0, 0], [BOS_ID, 12, 0]]
    assert batch.tgt_out.tolist() == [[10, 11, EOS_ID], [EOS_ID, 0, 0], [12, EOS_ID, 0]]
    assert batch.index.tolist() == [5, 2, 0]
    for tensor in batch:
        assert tensor.dtype == torch.long
    assert PAD_ID == 0


def test_collate_every_source_row_has_a_real_token():
    batch = collate([(0, [], []), (1, [], [])])
    assert batch.src.shape == (2, 1) and batch.src_lengths.tolist() == [1, 1]
    assert (batch.src[:, 0] == EOS_ID).all()


# TokenBatchSampler


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_and_within_budget(lengths, shuffle):
    s = sampler(lengths, shuffle=shuffle)
    for number in range(3):
        batches = epoch(s, number)
        assert sorted(i for b in batches for i in b) == list(range(N))
        assert max(cost(b, lengths) for b in batches) <= 400
        assert len(s) == len(batches)


def test_batches_group_similar_lengths(lengths):
    batches = epoch(sampler(lengths), 0)
    real = sum(max(lengths[0][i], lengths[1][i]) + 1 for i in range(N))
    padded = sum(cost(b, lengths) for b in batches)
    assert padded < 1.1 * real


def test_shuffle_differs_per_epoch_and_repeats_per_seed(lengths):
    a, b = sampler(lengths, seed=1), sampler(lengths, seed=1)
    assert epoch(a, 0) == epoch(b, 0)
    assert epoch(a, 1) == epoch(b, 1)
    assert epoch(a, 0) != epoch(a, 1)
    assert epoch(a, 0) != epoch(sampler(lengths, seed=2), 0)


def test_every_epoch_runs_the_same_batches_in_another_order(lengths):
    # Lightning validates once an epoch after as many batches as the first epoch had: an epoch
    # packed into one batch fewer would never be validated.
    s = sampler(lengths, seed=1)
    first = epoch(s, 0)
    for number in range(1, 4):
        batches = epoch(s, number)
        assert sorted(batches) == sorted(first) and batches != first


def test_no_shuffle_is_sorted_and_fixed(lengths):
    s = sampler(lengths, shuffle=False)
    batches = epoch(s, 0)
    assert epoch(s, 5) == batches
    order = [i for b in batches for i in b]
    src, tgt = lengths
    assert order == sorted(range(N), key=lambda i: (src[i], tgt[i], i))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_partition_the_data(lengths, shuffle, replicas):
    ranks = [
        sampler(lengths, shuffle=shuffle, seed=3, num_replicas=replicas, rank=r)
        for r in range(replicas)
    ]
    for number in range(2):
        per_rank = [[i for b in epoch(s, number) for i in b] for s in ranks]
        assert sorted(i for indices in per_rank for i in indices) == list(range(N))
        assert len({len(s) for s in ranks}) == 1


def test_uneven_batch_count_is_evened_by_splitting():
    # Five batches of two examples on one rank -> three replicas need six batches.
    s = [TokenBatchSampler([4] * 10, [4] * 10, 10, False, num_replicas=3, rank=r) for r in range(3)]
    assert [len(r) for r in s] == [2, 2, 2]
    assert sorted(i for r in s for b in r for i in b) == list(range(10))


def test_replicas_cannot_split_single_examples():
    with pytest.raises(ValueError, match="replicas") as excinfo:
        len(TokenBatchSampler([9] * 3, [9] * 3, 10, False, num_replicas=2))
    assert "\n" not in str(excinfo.value)


def test_resume_skips_to_the_same_place(lengths):
    full = epoch(sampler(lengths, seed=7), 4)

    interrupted = sampler(lengths, seed=7)
    interrupted.set_epoch(4)
    it = iter(interrupted)
    seen = [next(it) for _ in range(5)]
    state = interrupted.state_dict()
    assert seen == full[:5] and state == {"epoch": 4, "start_batch": 5}

    resumed = sampler(lengths, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # what the trainer does at the start of the epoch
    # The length stays the whole epoch's: Lightning counts the restored batches itself.
    assert len(resumed) == len(full)
    assert list(resumed) == full[5:]
    assert resumed.state_dict() == {"epoch": 4, "start_batch": len(full)}
    # The skip applies once: the next epoch is whole again.
    assert epoch(resumed, 5) == epoch(sampler(lengths, seed=7), 5)


def test_saved_position_does_not_leak_into_the_next_epoch(lengths):
    s = sampler(lengths)
    s.load_state_dict({"epoch": 2, "start_batch": 3})
    s.set_epoch(3)
    assert s.state_dict() == {"epoch": 3, "start_batch": 0}
    assert list(s) == epoch(sampler(lengths), 3)


def test_example_longer_than_budget():
    with pytest.raises(ValueError, match="max_tokens=10") as excinfo:
        TokenBatchSampler([3, 12, 4], [5, 6, 20], max_tokens=10, shuffle=True)
    assert "21 tokens" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_evaluation_example_longer_than_budget_is_batched_alone():
    """Validation must decode every sentence: one over the budget is not an error mid-training
    but a batch of one; the others still share batches within the budget."""
    s = TokenBatchSampler([3, 2, 40, 4, 3], [3, 3, 60, 2, 4], max_tokens=10, shuffle=False)
    batches = list(s)
    assert [2] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) * max(s.sizes[i] for i in b) <= 10 for b in batches if b != [2])


def test_with_a_dataloader(lengths):
    examples = [(i, [5] * s, [6] * t) for i, (s, t) in enumerate(zip(*lengths, strict=True))]
    loader = DataLoader(examples, batch_sampler=sampler(lengths), collate_fn=collate)
    seen = []
    for batch in loader:
        assert batch.src.numel() <= 400 and batch.tgt_in.numel() <= 400
        assert (batch.src_lengths == (batch.src != PAD_ID).sum(1)).all()
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(N))
