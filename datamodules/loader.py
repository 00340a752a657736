"""The batch-at-a-time BatchLoader over in-memory tensors, and where those tensors live (data.on_device)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch


# ---- loader --------------------------------------------------------------------------------

def _world() -> tuple:
    """(rank, world_size) of the running torch.distributed group, (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's stride of `order`, wrapped around so every rank gets ceil(n / world_size) items."""
    n = len(order)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = order[torch.arange(total) % n]
    return order[rank::world_size]


class BatchLoader:
    """Serves in-memory tensors a whole batch per index op (no per-sample Python calls).

    The batch size is global: under torch.distributed each rank takes batch_size // world_size
    from its own share of one permutation that every rank draws identically.
    """

    def __init__(self, tensors: tuple, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 sample_weights: Optional[torch.Tensor] = None, pin: bool = False):
        self.tensors = tuple(tensors)   # on the host, or already on the training device (data.on_device)
        self.n = int(self.tensors[0].shape[0])
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform
        self.sample_weights = sample_weights
        self.pin = pin                  # host tensors for a CUDA device: batches in pinned memory (async copies)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _local(self) -> tuple:
        """(samples on this rank, per-rank batch size)."""
        _, world = _world()
        return math.ceil(self.n / world), max(1, self.batch_size // world)

    def __len__(self) -> int:
        n, bs = self._local()
        return n // bs if self.drop_last else math.ceil(n / bs)

    def __iter__(self):
        # the epoch advances when an iteration starts, not when it ends, so Lightning (which never
        # calls set_epoch on a non-DataLoader) and limit_train_batches both still get a new order
        epoch, self.epoch = self.epoch, self.epoch + 1
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        rank, world = _world()
        if world > 1:
            order = shard_indices(order, rank, world)
        return self._batches(order, len(self))

    def _batches(self, order: torch.Tensor, count: int):
        _, bs = self._local()
        # the order is drawn on the host (the same for every placement); one copy of it per epoch puts the
        # batch indexing where the tensors are
        placed = order.to(self.tensors[0].device)
        for i in range(count):
            yield self._take(order[i * bs:(i + 1) * bs], placed[i * bs:(i + 1) * bs])

    def _take(self, idx: torch.Tensor, placed: torch.Tensor) -> tuple:
        """The batch of rows `idx` (host) / `placed` (the same indices where the tensors live)."""
        x, *rest = (t[placed] for t in self.tensors)
        if self.transform is not None:
            x = self.transform(x)
        return tuple(t.pin_memory() for t in (x, *rest)) if self.pin else (x, *rest)


# ---- placement -----------------------------------------------------------------------------

ON_DEVICE_SHARE = 0.25   # data.on_device=auto: the split tensors may take at most this share of free device memory


def placement(on_device, device: torch.device, nbytes: int) -> torch.device:
    """Where in-memory split tensors of `nbytes` live when training on `device` (data.on_device: auto|true|false)."""
    if on_device is False or on_device == "false":
        return torch.device("cpu")
    if on_device is True or on_device == "true":
        return device
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes < ON_DEVICE_SHARE * free else torch.device("cpu")
