"""Data parallelism with torch.distributed: one process per device under torchrun, or one process without it.

A launcher (``torchrun --nproc_per_node N [--nnodes M ...]``) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT for every process; that is all this module reads, so one node or many work the same way.
Without those variables the run is a single process and every collective below is a no-op, so the same
code runs on one CPU process and on N GPUs. Backends: NCCL for CUDA devices, gloo for the CPU.
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import SVGError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world_size``, its ``local_rank`` on the node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> Distributed:
    """Read the launcher's environment, pick this process's device and join the process group if there is one.

    ``device``: "auto" (this process's GPU when CUDA is available, else the CPU), "cpu" or "cuda".
    Safe to call again in the same process (an existing process group is reused).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise SVGError("device 'cuda' was asked for, but this PyTorch sees no CUDA GPU (use device: auto or cpu)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise SVGError(
                f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        here = torch.device("cuda", local_rank)
    else:
        here = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=here if use_cuda else None)
        atexit.register(_leave_process_group)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=here)


def _leave_process_group() -> None:
    # DDP wrappers sit in reference cycles that hold the process group and its last async works. Free them
    # while the interpreter is whole: left to shutdown, gloo's worker thread can release a work then, block
    # on the GIL of a finalizing interpreter and abort the process ("terminate called without an active
    # exception", in one CPU run of five to ten with torch 2.13).
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world_size) of this process in torch.distributed, or (0, 1) outside it."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over all processes ("sum", "max" or "mean"); a no-op in a single process."""
    if _active():
        if op == "mean":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= dist.get_world_size()
        else:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every process (e.g. which checkpoint to resume from)."""
    if not _active():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def barrier() -> None:
    """Wait until every process gets here."""
    if _active():
        dist.barrier()


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows [n_r, ...] concatenated in rank order, on every process.

    The row counts may differ between ranks (as ``shard_indices`` shares do): rows are padded to the
    largest count for the collective and trimmed after, so ``shard_indices`` + ``all_gather_rows`` returns
    results in dataset order.
    """
    if not _active():
        return tensor
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([rows[:n] for rows, n in zip(gathered, counts)])


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over processes, with gradients flowing back to every process (itself outside one)."""
    return _AllReduceSum.apply(tensor) if _active() else tensor


def all_gather_rows_with_grad(rows: torch.Tensor) -> torch.Tensor:
    """Every process's rows (equal counts on every rank) concatenated in rank order, with gradients flowing back
    to the process that holds each row (``rows`` itself outside a process group)."""
    return _AllGatherRows.apply(rows) if _active() else rows


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; every process's loss depends on y, so dx = sum over processes of dy."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class _AllGatherRows(torch.autograd.Function):
    """The gradient of a process's own rows is the sum of the gradients every process sends them (one
    all-reduce, then this rank's slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        ctx.rows = rows.shape[0]
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = dist.get_rank() * ctx.rows
        return total[start : start + ctx.rows]


def wrap_ddp(module: nn.Module, place: Distributed) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes, else ``module`` itself.

    Only parameters with ``requires_grad`` are synchronized, so frozen submodules (a frozen encoder) need no
    ``find_unused_parameters``. Buffers are not broadcast from rank 0 at each forward: a trainer that keeps
    statistics in buffers updates them identically on every rank (e.g. from ``all_reduce_`` means).
    """
    if not place.enabled:
        return module
    device_ids = [place.local_rank] if place.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``module`` itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module
