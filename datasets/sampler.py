"""Training order: a seeded, rank-sharded, resumable sampler (shuffled or identity-balanced).

The order of an epoch is a pure function of (seed, epoch), so a resumed run replays it exactly and can
start at any batch. Each yielded item is ``(dataset_index, sample_seed)``: the dataset seeds its random
augmentation and masking with ``sample_seed``, making every sample independent of worker count or timing.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    """Yields this rank's share of each global batch, epoch by epoch.

    Args:
        labels: person label of every training item.
        global_batch_size: items of one forward pass over all ranks (one micro-batch each).
        instances_per_id: 0 for a plain shuffle; k > 0 for batches of ``global_batch_size / k`` distinct
            people with k items each (people with fewer than k items are sampled with repetition).
        seed: base seed; the epoch's order uses ``seed + epoch``.
        rank, world_size: this process's shard; each global batch is split into ``world_size`` equal parts.
        accumulate_steps: micro-batches per optimisation step; an epoch holds a whole number of steps, so
            no micro-batch gradient is left over to leak into the next epoch's first step.
    """

    def __init__(self, labels: Sequence[int], global_batch_size: int, instances_per_id: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, accumulate_steps: int = 1):
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by world size {world_size}")
        if instances_per_id and global_batch_size % instances_per_id:
            raise ValueError(f"batch {global_batch_size} is not divisible by instances_per_id {instances_per_id}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.global_batch_size = global_batch_size
        self.instances_per_id = instances_per_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        order = torch.argsort(self.labels, stable=True)
        counts = torch.unique_consecutive(self.labels[order], return_counts=True)[1]
        self.items_by_person = list(torch.split(order, counts.tolist()))
        full_batches = len(self._global_order(0)) // global_batch_size
        self.batches_per_epoch = full_batches - full_batches % accumulate_steps
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(self.labels)} training items make no full step of {accumulate_steps} x "
                             f"{global_batch_size} pairs")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch's order and the first batch to yield (for resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _global_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if not self.instances_per_id:
            return torch.randperm(len(self.labels), generator=generator)
        k = self.instances_per_id
        people_per_batch = self.global_batch_size // k
        queues = []  # per person: its items in k-chunks, shuffled
        for items in self.items_by_person:
            items = items[torch.randperm(len(items), generator=generator)]
            if len(items) < k:
                items = items[torch.randint(len(items), (k,), generator=generator)]
            queues.append([items[i:i + k] for i in range(0, len(items) - k + 1, k)])
        if people_per_batch > len(queues):
            raise ValueError(f"a batch of {people_per_batch} distinct people needs more than the "
                             f"{len(queues)} there are")
        order = []
        for _ in range(sum(map(len, queues)) // people_per_batch):  # the same number of batches every epoch
            available = [p for p, queue in enumerate(queues) if queue]
            picked = [available[i] for i in torch.randperm(len(available), generator=generator).tolist()]
            order.extend(queues[p].pop() for p in picked[:people_per_batch])
            if len(picked) < people_per_batch:  # few people left with unused items: top up with fresh draws
                taken = set(picked)
                others = [p for p in range(len(queues)) if p not in taken]
                for i in torch.randperm(len(others), generator=generator)[:people_per_batch - len(picked)].tolist():
                    items = self.items_by_person[others[i]]
                    order.append(items[torch.randint(len(items), (k,), generator=generator)])
        return torch.cat(order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._global_order(self.epoch)
        per_rank = self.global_batch_size // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.global_batch_size + self.rank * per_rank
            for position in range(start, start + per_rank):
                sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + position
                yield int(order[position]), sample_seed % (2 ** 63)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * (self.global_batch_size // self.world_size)
