"""Data-parallel runs under torchrun: who this process is, and the few collectives a leankd run needs.

How a distributed run works (`torchrun --nproc-per-node N -m leankd run recipe.yaml`): every rank runs the same
pipeline in lockstep — the same recipe, the same stage decisions (read from the shared run directory), the same
global batches — and each trains on its share of every batch with DistributedDataParallel (train/loop.py). Rank 0
alone writes (checkpoints, metrics, stage records, the teacher cache, the report); the other ranks wait at barriers
where they must read what it wrote, and leave once the last stage and the compression targets' fine-tuning (QAT,
compress/run.py) have trained: measuring, building the artifacts and reporting run once, on rank 0, on a quiet
machine.

In one process (no torchrun, or `--nproc-per-node 1`) nothing is initialized: `world_size()` is 1, every helper
here is a no-op, and a run is exactly what it was before distributed training existed.

Why a module of its own, at the bottom: the loop, the stage runner, the teacher cache and the CLI all ask the same
three questions (am I rank 0, how many ranks, wait for the others); answering them in one place keeps the rank
logic out of every plug-in.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist

from ..errors import LeanKDError

T = TypeVar("T")

# how long a rank waits at a collective: long enough for rank 0 alone to decode a large seq-KD training set (minutes
# to tens of minutes) while the others wait, short enough that a hung rank does not hold the job for a day. A rank
# that dies is noticed at once anyway (torchrun stops the others; gloo sees the closed connection).
# LEANKD_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 7200


def launched_world_size() -> int:
    """The world size the launcher (torchrun) asked for, from its environment; 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


_alone = False  # rank 0 measuring and reporting after the other ranks left (`alone`)


def is_distributed() -> bool:
    return not _alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def backend() -> Optional[str]:
    """"nccl" (GPUs; gloo carries CPU tensors beside it) or "gloo"; None in one process."""
    if not is_distributed():
        return None
    name = str(dist.get_backend())
    return "nccl" if "nccl" in name else name


def init(device: str = "auto", timeout_s: Optional[float] = None) -> bool:
    """Join the process group torchrun set up (env:// rendezvous: MASTER_ADDR/PORT, RANK, WORLD_SIZE), once. Returns
    whether this is a distributed run. GPUs: NCCL, one GPU per local rank; CPU: gloo. A recipe asking for CUDA on a
    machine without enough GPUs is an error here, before anything is built."""
    if launched_world_size() <= 1:
        return False
    if is_distributed():
        return True
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        if not torch.cuda.is_available():
            raise LeanKDError(f"device {device!r} with {launched_world_size()} processes needs GPUs (NCCL), but CUDA "
                              "is not available here: set device: cpu (ranks then talk over gloo)")
        if local >= torch.cuda.device_count():
            raise LeanKDError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; start at "
                              f"most that many processes per node (--nproc-per-node {torch.cuda.device_count()})")
        torch.cuda.set_device(local)
    if timeout_s is None:
        timeout_s = float(os.environ.get("LEANKD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    # with GPUs, CPU tensors (the teacher cache's shares, small flags) still need a backend: gloo next to NCCL
    dist.init_process_group("cpu:gloo,cuda:nccl" if want_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Rank 0 on its own: inside, this process acts as a one-process run (no collectives, world size 1). The run's
    measuring, the building of its artifacts and its report happen here, once, after the other ranks have finished
    training (QAT's fine-tuning included) and left."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (small, picklable objects: decisions and messages, never data)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class PeerError(LeanKDError):
    """Rank 0 failed with a user-facing error that every rank shares; the CLI prints it once (on rank 0)."""


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 alone and hand its result to every rank. When it fails with a LeanKDError, every rank fails
    with the same message (rank 0 with the original error, the others with a `PeerError`), instead of the other ranks
    waiting at the next barrier until the timeout."""
    if not is_distributed():
        return fn()
    outcome: tuple = ("ok", None)
    error: Optional[BaseException] = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except LeanKDError as e:
            error, outcome = e, ("error", str(e))
        except BaseException as e:  # still tell the others, so they end too
            error, outcome = e, ("error", f"rank 0 failed: {type(e).__name__}: {e}")
    outcome = broadcast(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise PeerError(outcome[1])
    return outcome[1]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks, in place (a no-op in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `tensor` over the ranks, in place (a no-op in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks onto rank 0, in place (the other ranks' copies are left undefined)."""
    if is_distributed():
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
    return tensor


def main_first(fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn` (which builds and writes something, e.g. decoded teacher outputs), then the other ranks run
    it too and find the file made (accelerate's `main_process_first`). A failure on rank 0 ends every rank with its
    message. Only the outcome travels between ranks, never `fn`'s result."""
    if not is_distributed():
        return fn()
    box: dict = {}

    def first() -> None:
        box["result"] = fn()

    on_main(first)  # the others wait here until rank 0 is done
    return box["result"] if is_main() else fn()


def shard_bounds(n: int, part: int, parts: int) -> tuple[int, int]:
    """Rows [start, end) of part `part` of `n` rows cut into `parts` contiguous shares, equal when `parts` divides
    `n` (every full batch: the recipe's batch size must be divisible) and off by at most one row otherwise (a split
    smaller than one batch)."""
    return n * part // parts, n * (part + 1) // parts


def describe() -> Optional[str]:
    """How this run is spread, for the report ("2 processes (gloo)"); None in one process."""
    if not is_distributed():
        return None
    return f"{world_size()} processes ({backend()})"
