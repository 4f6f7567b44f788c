"""`train.sync_bn`: BatchNorm over the global batch when several processes train one model.

Without it, each rank's BatchNorm normalizes with the statistics of its own share of the batch (what DDP does by
default), so N processes train a slightly different model than one process on the same global batch. PyTorch's
`nn.SyncBatchNorm` fixes that on GPUs only (it refuses CPU tensors), so on CPU (gloo) leankd swaps each BatchNorm
for `GlobalBatchNorm`: per-channel sums, sums of squares and counts are added over the ranks with a differentiable
all-reduce, so the forward pass and — through the all-reduce's backward — the gradients are those of BatchNorm on
the whole global batch. On CUDA, `nn.SyncBatchNorm` is used.

The swapped modules share their parameters and running buffers with the originals (nothing is copied), and
`restore()` puts the originals back after training: the saved weights and every later use of the model (measuring,
export) see plain BatchNorm.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch summed over every rank (CPU/gloo, any dims)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if not (self.training and dist.is_available() and dist.is_initialized()) or not self.track_running_stats:
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        c = x.shape[1]
        # sums of x - shift, not of x: E[d²] - E[d]² cancels badly when |mean| >> std; the running mean (the same on
        # every rank) is close to the batch mean, so the differences are small
        shift = self.running_mean.detach().float().view([1, c] + [1] * (input.dim() - 2))
        d = x - shift
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = torch.cat([d.sum(dims), (d * d).sum(dims), count])
        stats = all_reduce(stats, op=dist.ReduceOp.SUM)  # differentiable: its backward adds the gradients up too
        n = stats[-1]
        mean_d = stats[:c] / n
        var = (stats[c:2 * c] / n - mean_d * mean_d).clamp_min(0)
        mean = mean_d + shift.view(c)
        with torch.no_grad():  # running statistics as nn.BatchNorm keeps them: unbiased variance, momentum
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (n / (n - 1).clamp_min(1))
            self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        shape = [1, c] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def _swap(module: _BatchNorm, cls: type) -> _BatchNorm:
    """A `cls` module holding `module`'s own parameters and buffers (shared, not copied)."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        setattr(new, attr, getattr(module, attr))
    if cls is nn.SyncBatchNorm:
        new.process_group = None
    for name, p in module.named_parameters(recurse=False):
        new.register_parameter(name, p)
    for name, b in module.named_buffers(recurse=False):
        new.register_buffer(name, b)
    new.train(module.training)
    return new


def convert(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Swap every BatchNorm of `model` for its global-batch version (in place); returns `restore`, which puts the
    original modules back. A model without BatchNorm is left alone."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, (GlobalBatchNorm, nn.SyncBatchNorm)):
                setattr(parent, name, _swap(child, cls))
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)

    return restore
