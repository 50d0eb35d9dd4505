"""Dataset mixing: ratio, determinism, exact resume and disjoint DDP slices."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DataLoader

from videollama.train.mixing import MixedDataset, MultiDatasetSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_ratio_100_to_24():
    sampler = MultiDatasetSampler([50, 50], [100, 24], batch_size=2, seed=42)
    choices = sampler.choices(0, 20000)
    share = (choices == 0).mean()
    assert abs(share - 100 / 124) < 0.01  # 80.6 %
    uniform = MultiDatasetSampler([5, 5, 5], None, batch_size=1, seed=1).choices(0, 30000)
    assert all(abs((uniform == d).mean() - 1 / 3) < 0.01 for d in range(3))


def test_seeded_and_each_dataset_is_a_permutation_stream():
    a = take(MultiDatasetSampler([7, 11], [1, 1], batch_size=3, seed=5), 40)
    b = take(MultiDatasetSampler([7, 11], [1, 1], batch_size=3, seed=5), 40)
    c = take(MultiDatasetSampler([7, 11], [1, 1], batch_size=3, seed=6), 40)
    assert a == b and a != c
    assert all(len({k.dataset for k in batch}) == 1 for batch in a)  # one dataset per batch
    # Records of one dataset, in order of use, are consecutive permutations of its indices.
    drawn = [k.index for batch in a for k in batch if k.dataset == 0]
    for start in range(0, len(drawn) - 7, 7):
        assert sorted(drawn[start : start + 7]) == list(range(7))
    seeds = [k.seed for batch in a for k in batch]
    assert len(set(seeds)) == len(seeds)  # every draw gets its own augmentation seed


def test_exact_resume_from_state_dict():
    full = take(MultiDatasetSampler([13, 5], [100, 24], batch_size=4, seed=42), 60)
    first = MultiDatasetSampler([13, 5], [100, 24], batch_size=4, seed=42)
    state = first.state_dict(next_step=25)
    assert sum(state["cursors"]) == 25 * 4
    resumed = MultiDatasetSampler([13, 5], [100, 24], batch_size=4, seed=42)
    resumed.load_state_dict(state)
    assert take(resumed, 35) == full[25:]
    with pytest.raises(ValueError, match="sample ratios changed"):
        MultiDatasetSampler([13, 5], [1, 1], batch_size=4, seed=42).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch"):
        MultiDatasetSampler([13, 5], [100, 24], batch_size=2, seed=42).load_state_dict(state)


def test_ddp_slices_are_disjoint_and_union_is_the_global_batch():
    single = take(MultiDatasetSampler([9, 20], [3, 1], batch_size=6, seed=3), 30)
    ranks = [take(MultiDatasetSampler([9, 20], [3, 1], batch_size=3, seed=3, rank=r, world_size=2), 30)
             for r in range(2)]
    for step, (whole, r0, r1) in enumerate(zip(single, *ranks)):
        assert {k.dataset for k in r0} == {k.dataset for k in r1} == {whole[0].dataset}
        assert r0 + r1 == whole  # same keys, same seeds, rank 0 takes the first half
        if whole[0].dataset == 1:  # 20 records > global batch: no overlap inside a step
            assert not {k.index for k in r0} & {k.index for k in r1}
    # Resume on a different world size with the same global batch continues the same order.
    state = MultiDatasetSampler([9, 20], [3, 1], batch_size=6, seed=3).state_dict(next_step=10)
    rank1 = MultiDatasetSampler([9, 20], [3, 1], batch_size=3, seed=3, rank=1, world_size=2)
    rank1.load_state_dict(state)
    assert [b for b in take(rank1, 5)] == [whole[3:] for whole in single[10:15]]


class Numbers:
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def get(self, index, seed):
        return {"dataset": self.name, "index": index, "seed": seed}


def test_mixed_dataset_with_dataloader():
    sampler = MultiDatasetSampler([4, 6], [1, 1], batch_size=2, seed=0, num_steps=6)
    loader = DataLoader(MixedDataset([Numbers("a", 4), Numbers("b", 6)]), batch_sampler=sampler,
                        collate_fn=lambda samples: samples)
    batches = list(loader)
    assert len(batches) == 6 == len(sampler)
    assert [b[0]["step"] for b in batches] == list(range(6))
    keys = take(MultiDatasetSampler([4, 6], [1, 1], batch_size=2, seed=0), 6)
    assert [[(s["dataset"], s["index"]) for s in b] for b in batches] == [
        [("ab"[k.dataset], k.index) for k in batch] for batch in keys]
