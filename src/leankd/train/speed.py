"""The throughput switches of `train:` — which of them apply on this device, and the model the step calls.

Why one place: every switch is a recipe option (precision, channels_last, compile, cuda_graphs, lr_scaling; fused
optimizers on CUDA are automatic), and the report must say which ones a stage actually ran with, and why a
requested one did not apply (CUDA graphs on a CPU, say), instead of silently training slower than asked.

CUDA graphs come from `torch.compile(mode="reduce-overhead")` (cudagraph trees): forward and backward of a
fixed-shape step are recorded once and replayed. A replay overwrites the previous step's outputs, so the loop
marks each step's start (`torch.compiler.cudagraph_mark_step_begin`) and reads everything it keeps from the
logits (loss, hits) within the same step; a new batch shape (the last, smaller batch) records one more graph.
Feature losses read activations through forward hooks, which a replayed graph would not refresh: with them the
student is compiled without CUDA graphs, and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..recipe import TrainConfig


GRAPHS = "CUDA graphs (torch.compile mode='reduce-overhead')"


@dataclass
class StepPlan:
    model: nn.Module  # what the training step calls: the student itself or its compiled wrapper
    mark_steps: bool = False  # CUDA graphs: tell the graph trees where each step starts
    applied: list[str] = field(default_factory=list)  # switches this stage trains with, in words
    skipped: list[str] = field(default_factory=list)  # requested switches that did not apply, and why
    graph_skips_before: int = 0  # inductor's count of graphs it declined to record, when the plan was made

    def finish(self) -> None:
        """After training: report CUDA graphs inductor declined to record (it falls back to plain compiled code
        silently, e.g. for mutated inputs), and free the graph memory pools before the next stage trains."""
        if not self.mark_steps:
            return
        skips = _graph_skips() - self.graph_skips_before
        if skips:
            self.applied = [a for a in self.applied if a != GRAPHS] + ["torch.compile"]
            self.skipped.append(f"cuda_graphs: inductor declined to record {skips} graph(s) (see TORCH_LOGS="
                                "perf_hints): the student ran compiled without CUDA graphs")
        torch.compiler.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _graph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


def plan_step(model: nn.Module, cfg: TrainConfig, device: torch.device, *, reads_features: bool = False) -> StepPlan:
    """Decide, from the recipe and the device, how the training step runs the student."""
    plan = StepPlan(model=model)
    if device.type == "cuda" and not cfg.deterministic:  # fixed shapes: let cuDNN pick the fastest kernels once
        torch.backends.cudnn.benchmark = True
        plan.applied.append("cuDNN autotuning")
    if cfg.precision != "fp32":
        plan.applied.append(f"{cfg.precision} autocast (loss in fp32)")
    if cfg.channels_last:
        plan.applied.append("channels_last")
    elif any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # measured (README, "Side by side"): a ResNet-20 epoch on the 2-core CPU took 0.75x the time in channels_last,
        # with the teacher online 0.77x. Not the default, because the layout is part of a stage's recipe (switching it
        # would retrain existing runs); said here so a user of a conv model finds it
        plan.skipped.append("channels_last: off; 2-D convolutions ran ~1.3x faster in channels_last on a 2-core CPU "
                            "(set train.channels_last: true)")
    graphs = cfg.cuda_graphs
    if graphs and device.type != "cuda":
        plan.skipped.append(f"cuda_graphs: not applied, the run is on {device.type} (CUDA graphs need a CUDA device)")
        graphs = False
    if graphs and reads_features:
        plan.skipped.append("cuda_graphs: not applied, feature losses read hooked activations that a replayed graph "
                            "does not refresh; the student is compiled without CUDA graphs")
        graphs = False
    if graphs:
        plan.model = torch.compile(model, mode="reduce-overhead")
        plan.mark_steps = True
        plan.graph_skips_before = _graph_skips()
        plan.applied.append(GRAPHS)
    elif cfg.compile or (cfg.cuda_graphs and device.type == "cuda"):  # on CPU no graphs, so no implied compile
        plan.model = torch.compile(model)
        plan.applied.append("torch.compile")
    if cfg.lr_scaling != "none":
        plan.applied.append(f"lr x{cfg.effective_lr / cfg.lr:.3g} ({cfg.lr_scaling} scaling: batch {cfg.batch_size} "
                            f"/ {cfg.lr_base_batch_size}) = {cfg.effective_lr:.4g}")
    return plan


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """'fused SGD', 'foreach AdamW': the optimizer kernel path, for the list of applied switches."""
    group = optimizer.param_groups[0]  # not `defaults`: a resumed optimizer takes its flags from the checkpoint
    kind = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "per-tensor"
    return f"{kind} {type(optimizer).__name__}"


def mark_step_begin() -> None:
    torch.compiler.cudagraph_mark_step_begin()
