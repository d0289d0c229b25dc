"""The training order: shuffled by (seed, epoch), split across ranks, resumable part-way through an epoch.

``ResumableSampler`` is a ``DistributedSampler``: epoch e's order is ``randperm(n)`` drawn from a
generator seeded ``seed + e`` and rank r takes every world-th index from r. Single-process runs are
world size 1, so a single run and a 2-rank run at the same global batch see the same samples per
step, and an epoch's order never depends on how the run got there. Lightning leaves a
``DistributedSampler`` in place under DDP/FSDP/DeepSpeed (``use_distributed_sampler`` only replaces
other samplers) and calls ``set_epoch`` at every epoch start.

``ResumableLoader`` is what makes a restart exact: Lightning saves the ``state_dict`` of a train
loader that has one in every checkpoint and hands it back to ``load_state_dict`` before it builds
the first iterator of the resumed run, so the loader starts at the epoch and batch the checkpoint
was taken at instead of replaying the epoch from its first batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

class ResumableSampler(DistributedSampler):
    """Seeded shuffling per epoch (as ``DistributedSampler``) that can start an epoch at a given sample."""

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # samples of this rank's share to skip on the next iteration only

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0
        return iter(indices)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position (epoch, batches trained) is saved in Lightning checkpoints.

    Its sampler must be a ``ResumableSampler``; with any other sampler (e.g. the sequential one
    Lightning swaps in for ``overfit_batches``) it has no state and behaves as a plain loader.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0  # batches of the current epoch handed out, counting those skipped on resume

    def __iter__(self) -> Iterator[Any]:
        # Lightning fetches a sized loader's batches one at a time (it prefetches only when it cannot
        # know the length), so when it saves a checkpoint, yielded == trained.
        # tests/test_resume.py pins this against an uninterrupted run.
        sampler = self.sampler if isinstance(self.sampler, ResumableSampler) else None
        self._yielded = sampler.start // self.batch_size if sampler is not None and self.batch_size else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        trained = self._yielded
        epoch = self.sampler.epoch
        if trained >= len(self):  # the epoch is done: resume at the start of the next one
            epoch, trained = epoch + 1, 0
        return {"epoch": epoch, "batches": trained}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, ResumableSampler):
            return
        if self.batch_size is None:
            raise ValueError("ResumableLoader: resuming part-way needs a fixed batch_size")
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.start = int(state["batches"]) * self.batch_size


def resumable(loader: DataLoader, seed: int) -> ResumableLoader:
    """``loader`` rebuilt with a ``ResumableSampler(seed)`` (same dataset, batch size, collate, workers).

    Its own generator seeds the worker base seed, so iterating it never draws from the global torch
    RNG (whose state the checkpoint restores for the model's own random draws)."""
    return ResumableLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=ResumableSampler(loader.dataset, seed=seed),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        generator=torch.Generator().manual_seed(seed),
    )
