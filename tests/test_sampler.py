import torch

from datasets.sampler import TrainSampler


def indices(sampler):
    return [index for index, _ in sampler]


def test_same_order_for_seed_and_epoch_and_resume_mid_epoch():
    labels = torch.arange(40) // 4
    sampler = TrainSampler(labels, global_batch_size=8, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for i, _ in full) == list(range(40))  # a permutation: nothing dropped or repeated
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[3 * 8:]  # resuming replays the rest of the epoch, seeds included
    sampler.set_epoch(3)
    assert indices(sampler) != [i for i, _ in full]


def test_ranks_split_each_global_batch():
    labels = torch.arange(48) // 4
    single = TrainSampler(labels, global_batch_size=12, seed=1)
    ranks = [TrainSampler(labels, global_batch_size=12, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in [single, *ranks]:
        s.set_epoch(5)
    whole, parts = list(single), [list(s) for s in ranks]
    for batch in range(len(whole) // 12):
        merged = sum((p[batch * 4:(batch + 1) * 4] for p in parts), [])
        assert merged == whole[batch * 12:(batch + 1) * 12]


def test_identity_balanced_batches():
    labels = torch.tensor([0] * 7 + [1] * 2 + [2] * 4 + [3] * 5 + [4] * 1 + [5] * 6)
    sampler = TrainSampler(labels, global_batch_size=6, instances_per_id=2, seed=0)
    order = indices(sampler)
    assert len(order) % 6 == 0
    for start in range(0, len(order), 6):
        batch_labels = labels[order[start:start + 6]].tolist()
        assert sorted(batch_labels.count(x) for x in set(batch_labels)) == [2, 2, 2]  # 3 people x 2


def test_identity_balanced_epochs_all_have_the_same_number_of_full_batches():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 30, (400,), generator=generator)  # uneven items per person
    sampler = TrainSampler(labels, global_batch_size=32, instances_per_id=2, seed=0)
    for epoch in range(8):
        sampler.set_epoch(epoch)
        order = indices(sampler)
        assert len(order) == sampler.batches_per_epoch * 32
        for start in range(0, len(order), 32):
            batch_labels = labels[order[start:start + 32]].tolist()
            assert len(set(batch_labels)) == 16  # 16 distinct people, 2 items each
