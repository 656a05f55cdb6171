"""Data-parallel fine-tuning: one erasure job on every process of ``accelerate launch``.

    accelerate launch --multi_gpu --num_processes 2 scripts/erase.py --concept square --method salun --out out/

Every process holds the same model and runs the same method with the same seeds, so whatever a
step draws (the batch's items, noise, timesteps) is drawn identically everywhere. Each process
then computes the loss on its contiguous share of the batch (``Shard.part``), weighted by that
share (``Shard.share``), so that the gradients summed over the processes are the gradient of
the whole batch; ``erase.training.Trainer`` sums them (and the loss) after every backward, and
every process takes the same optimiser step. The weights are broadcast from process 0 once
before training, as DistributedDataParallel does, so they start (and stay) equal.
Training data the model makes (forget and retain images, ESD's partial denoising runs) is split
by generation batch and gathered (``Shard.gather``); SalUn's saliency sums and advunlearn's
attack gradients are summed the same way, so the mask and the adversarial vectors are the
single-process ones.

What is not split: the closed-form methods (uce, rece) and the textual-inversion stages (fmn's
``use_ti``, rece's inversion adversary) run whole on every process, giving the same result
everywhere without a speed-up. Process 0 alone writes exports and summaries (erase.cli).

Equality with one process: the sums are taken in another order and a UNet batch split in two
is not computed bit for bit as the whole batch, so results agree to floating-point rounding,
not bit for bit (tests/test_data_parallel.py measures and bounds the difference).

``current()`` is the single shard (rank 0 of 1) outside a launch, inside ``single_process()``
(the jobs fan-out, where each process runs its own job) and where no process group is open; then
every helper here is the identity and the code path is the one-process one, bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from erase.errors import EraseError

__all__ = ["Shard", "current", "single_process"]

_single = contextvars.ContextVar("erase_single_process", default=False)


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes (rank 0 of 1 when not data-parallel)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this process's contiguous share of ``n`` items (shares differ by at most one)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def part(self, n: int) -> slice:
        lo, hi = self.bounds(n)
        return slice(lo, hi)

    def share(self, n: int) -> float:
        """This process's share of ``n`` items: the weight of its mean loss in the batch's mean."""
        lo, hi = self.bounds(n)
        return (hi - lo) / n

    def weighted(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """A mean loss over this process's share of ``n`` items, weighted as its part of the
        mean over all ``n`` (one process: ``loss`` itself)."""
        return loss * self.share(n) if self.active else loss

    def require(self, n: int, what: str) -> None:
        """EraseError unless ``n`` items (per step) give every process at least one."""
        if self.active and n < self.world:
            raise EraseError(f"{what} is {n}, fewer than the {self.world} launched processes: data-parallel training gives "
                             f"each process a share of every batch; set {what} to {self.world} or more, or launch fewer processes")

    # --- collectives (no-ops on one process) ---

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace every tensor by its sum over the processes (all-reduces of the tensors
        flattened together, in buckets of at most ``_BUCKET`` values)."""
        if self.active:
            self._collective(tensors, "sum")

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Give every process process 0's values of ``tensors``."""
        if self.active:
            self._collective(tensors, "broadcast")

    def _collective(self, tensors: Sequence[torch.Tensor], op: str) -> None:
        import torch.distributed as dist

        for bucket in _buckets(list(tensors)):
            flat = torch.cat([t.detach().reshape(-1).float().to(_comm_device()) for t in bucket])
            if op == "sum":
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            else:
                dist.broadcast(flat, src=0)
            start = 0
            with torch.no_grad():
                for t in bucket:
                    n = t.numel()
                    t.copy_(flat[start:start + n].reshape(t.shape).to(t.device, t.dtype))
                    start += n

    def sqrt_of_sum(self, local: torch.Tensor) -> torch.Tensor:
        """√(Σ over processes of ``local``) as this process's part of a loss: its value is the
        whole √S divided by the processes (so the summed loss is √S) and its gradient
        ∇local / (2√S) (so the summed gradient is ∇√S). One process: ``local.sqrt()``."""
        if not self.active:
            return local.sqrt()
        total = local.detach().clone().reshape(1)
        self.sum_([total])
        root = total[0].to(local.device).sqrt()
        surrogate = local / (2 * root)
        return surrogate + (root / self.world - surrogate).detach()

    def gather(self, count: int, make: Callable[[int], object]) -> list:
        """``[make(0), ..., make(count - 1)]`` on every process, each process making every
        ``world``-th item (process k: k, k + world, ...). Items are tensors or tuples of tensors,
        sent between this job's own processes as CPU tensors (``all_gather_object``)."""
        if not self.active:
            return [make(i) for i in range(count)]
        import torch.distributed as dist

        mine = {i: _to_cpu(make(i)) for i in range(self.rank, count, self.world)}
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        merged = {k: v for part in everyone for k, v in part.items()}
        return [merged[i] for i in range(count)]


_BUCKET = 1 << 24  # values per all-reduce: a whole SD UNet's gradient is not copied at once


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    out, size = [[]], 0
    for t in tensors:
        if out[-1] and size + t.numel() > _BUCKET:
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel()
    return [b for b in out if b]


def _to_cpu(item):
    if isinstance(item, torch.Tensor):
        return item.detach().cpu()
    if isinstance(item, (tuple, list)):
        return type(item)(_to_cpu(x) for x in item)
    return item


def _comm_device() -> torch.device:
    """Where the process group's collectives take tensors (NCCL: this process's GPU; gloo: CPU)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Shard:
    """This process's shard: from the open process group (``accelerate launch`` with N > 1,
    joined through accelerate's PartialState), else the single shard."""
    if _single.get():
        return Shard()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


@contextlib.contextmanager
def single_process():
    """Inside the block ``current()`` is the single shard: each process runs its own job (the
    jobs fan-out) even though a process group is open."""
    token = _single.set(True)
    try:
        yield
    finally:
        _single.reset(token)
