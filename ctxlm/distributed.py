"""Several processes, on one machine or several, launched by torchrun (ctxlm.launch).

torchrun starts one process per device and tells each its place through the environment (RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous address). `start` joins them into one process group with
gloo for CPU tensors and NCCL for CUDA tensors; every helper here is a no-op in a lone process, so
the single-process path runs the same code. Rank 0 writes every output, checkpoint and metric;
the other ranks compute their share and join the collectives.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> None:
    """Join the other processes (once); CUDA tensors go through NCCL, CPU tensors through gloo."""
    if launched() and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)


def finish() -> None:
    """Leave the group together: a process that left while another was still finishing its part
    was seen to abort ("terminate called without an active exception") as the group came down."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def stop() -> None:
    """Leave the group at once (after an error: the others may never reach a barrier)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the processes, in place; returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def share(n: int, part: int | None = None, parts: int | None = None) -> slice:
    """The contiguous part of range(n) that process `part` of `parts` takes (default: this one);
    the parts differ in size by at most one and are in rank order."""
    part, parts = rank() if part is None else part, world() if parts is None else parts
    return slice(n * part // parts, n * (part + 1) // parts)


def share_of_batches(order: np.ndarray, batch_size: int, part: int | None = None, parts: int | None = None) -> tuple[np.ndarray, list[int]]:
    """This process's examples of every global batch of `order` (consecutive `batch_size` items),
    and its number of examples in each batch: together the processes take each batch whole."""
    if (world() if parts is None else parts) == 1:  # all of it, without a copy of the epoch's order
        return order, [batch_size] * (len(order) // batch_size) + ([len(order) % batch_size] if len(order) % batch_size else [])
    mine, sizes = [], []
    for a in range(0, len(order), batch_size):
        batch = order[a : a + batch_size]
        taken = batch[share(len(batch), part, parts)]
        mine.append(taken)
        sizes.append(len(taken))
    return (np.concatenate(mine) if mine else order[:0]), sizes


def previous_row(row: torch.Tensor) -> torch.Tensor:
    """The `row` of the process before this one (the last process's for the first): with one
    process, its own row (a circular shift, as torch.roll)."""
    if not dist.is_initialized():
        return row
    rows = [torch.empty_like(row) for _ in range(world())]
    dist.all_gather(rows, row.contiguous())
    return rows[rank() - 1]


def agree(flag: bool) -> bool:
    """The first process's `flag`, in every process (for decisions that need all of them, such as a
    checkpoint that each writes part of)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, 0)
    return bool(value.item())


def write_rows(path, rows: np.ndarray, where: slice, total: int) -> None:
    """Write this process's `rows` at `where` of a (total, ...) .npy file that all processes share;
    returns when every process's rows are on disk."""
    if is_main():
        np.lib.format.open_memmap(path, mode="w+", dtype=rows.dtype, shape=(total, *rows.shape[1:])).flush()
    barrier()
    out = np.load(path, mmap_mode="r+")
    out[where] = rows
    out.flush()
    del out
    barrier()
