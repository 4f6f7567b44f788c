"""Teachers: a frozen live model, and a dense ensemble of guides. The contract (`Teacher`: any `Batch -> logits`
callable, so the student's loop cannot tell a live teacher from a cached one) is `leankd.core.teacher`,
re-exported here."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..core.task import Batch, Task
from ..core.teacher import Teacher
from ..errors import RecipeError
from .taps import FeatureTaps, tree_map

__all__ = ["DTYPES", "Teacher", "LiveTeacher", "GuideEnsemble"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LiveTeacher:
    """Runs a frozen model in eval mode under no_grad, optionally held in half precision to save memory/time.

    Frozen here, in one place (the mdistiller lesson): eval mode so BatchNorm/dropout never change, and
    requires_grad off so no autograd graph is built for it."""

    def __init__(self, model: nn.Module, task: Task, precision: str = "fp32", channels_last: bool = False,
                 device: Optional[torch.device] = None):
        """`device`: where the teacher lives (default: the task's device). `cpu` keeps it off a small GPU while the
        student trains there (memory-aware mode): inputs go to the CPU, logits come back to the student's device."""
        if precision not in DTYPES:
            raise RecipeError(f"teacher precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.dtype = DTYPES[precision]
        self.device = torch.device(device) if device is not None else task.device
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if channels_last:  # match the student's input layout so no conversion happens every step
            self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.task = task
        self.taps = None

    @property
    def speedups(self) -> list[str]:
        """How the teacher side of a KD step is cheapened, for the report's list of applied switches."""
        name = {v: k for k, v in DTYPES.items()}[self.dtype]
        out = [f"teacher held in {name}"] if name != "fp32" else []
        return out + ([f"teacher on {self.device.type}"] if self.device != self.task.device else [])

    def _cast(self, x):
        if isinstance(x, Tensor):
            x = x.to(self.device, dtype=self.dtype) if x.is_floating_point() else x.to(self.device)
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
        if isinstance(x, dict):
            return {k: self._cast(v) for k, v in x.items()}
        return x

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Tensor:
        self.model.eval()  # guard against anyone having flipped it back to train mode
        return self.task.forward(self.model, self._cast(batch.inputs)).float().to(self.task.device)

    def shard(self) -> None:
        """FSDP (`train.fsdp` under torchrun): cut the frozen model into one share per process, each transformer block
        gathered just before it runs and freed right after (`reshard_after_forward=True`; no backward needs it), so
        no rank holds the whole teacher while the student trains. Every rank then calls the teacher on its own share
        of each batch, the same number of times (the gathers are collectives). `unshard` gives the full weights back
        (the pipeline measures the teacher on rank 0 alone afterwards). A no-op in one process."""
        from ..core import dist
        from ..train import fsdp

        if dist.world_size() > 1 and not fsdp.is_sharded(self.model):
            fsdp.shard(self.model, self.device, frozen=True)

    def unshard(self) -> None:
        """The full weights back in every rank's `model` (a collective when sharded), FSDP taken off."""
        from ..train import fsdp

        fsdp.unshard(self.model)

    @property
    def sharded(self) -> bool:
        from ..train import fsdp

        return fsdp.is_sharded(self.model)

    def tap(self, names: list[str]) -> None:
        """Hook these teacher modules so `outputs` also returns their (detached) outputs (layer distillation)."""
        if self.taps is not None:
            self.taps.close()
        self.taps = FeatureTaps(self.model, names, detach=True, who="teacher") if names else None

    def outputs(self, batch: Batch) -> tuple[Tensor, dict]:
        """Logits and the tapped features of one batch, on the student's device (kept in the teacher's dtype)."""
        logits = self(batch)
        if self.taps is None:
            return logits, {}
        device = self.task.device
        return logits, {name: tree_map(lambda t: t.to(device), out) for name, out in self.taps.take().items()}


class GuideEnsemble:
    """Densely guided distillation (DGKD, Son et al. 2021): the student learns from the teacher and every
    assistant at once. The guides' distributions softened at `temperature` are averaged and returned as logits
    (T * log of the mean), so a KD / soft-CE loss at that temperature gets the gradient of the mean of one such
    loss per guide (the KL terms differ only by the guides' constant entropies)."""

    def __init__(self, guides: list[LiveTeacher], temperature: float):
        if not guides:
            raise ValueError("a guide ensemble needs at least one guide")
        self.guides, self.temperature = guides, temperature
        self.task = guides[0].task

    @property
    def speedups(self) -> list[str]:
        return self.guides[0].speedups

    def shard(self) -> None:
        for g in self.guides:
            g.shard()

    def unshard(self) -> None:
        for g in self.guides:
            g.unshard()

    @property
    def sharded(self) -> bool:
        return all(g.sharded for g in self.guides)

    @property
    def model(self) -> nn.Module:  # what the pipeline moves off the device afterwards
        return nn.ModuleList([g.model for g in self.guides])

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Tensor:
        t = self.temperature
        probs = torch.stack([torch.softmax(g(batch).float() / t, dim=-1) for g in self.guides]).mean(0)
        return t * probs.clamp_min(1e-30).log()
