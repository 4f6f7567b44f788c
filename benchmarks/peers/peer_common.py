"""Measurement shared by the peer runners (plain_loop.py, torchdistill_run.py), so both time and report alike.

Why: the comparison is only fair if every peer measures the same thing the same way. Here:
- `seconds_per_epoch`: wall time of the KD training epoch only (data loading, forward/backward, optimiser
  step), with CUDA synchronised at both ends; the per-epoch test evaluation is excluded.
- `test_accuracy`: top-1 on the test split after each epoch, as a fraction in [0, 1].
- `time_to_target_s`: the summed `seconds_per_epoch` up to and including the first epoch whose test
  accuracy reaches `--target-accuracy`; null when none does (or no target was given).
- `peak_gpu_memory_mb`: torch.cuda.max_memory_allocated over the KD phase (stats reset after the teacher
  is ready), in MiB; null on CPU.
- `energy_j`: the GPU's NVML energy counter summed over the KD epochs (evaluation excluded) when `pynvml`
  is importable; else null with the reason in `energy_source` (never an estimate).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch
from torch import nn


def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return correct / max(total, 1)


class Energy:
    """Joules from NVML's total-energy counter, summed over start()/stop() spans; None where unavailable."""

    def __init__(self, device: torch.device) -> None:
        self.joules, self.source, self._handle, self._start = None, None, None, None
        if device.type != "cuda":
            self.source = "no counter read on CPU"
            return
        try:
            import pynvml  # optional: nvidia-ml-py

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
            self.source = "nvml total energy counter (whole GPU)"
        except Exception as exc:  # missing module, no driver, unsupported GPU
            self.source = f"unavailable: {type(exc).__name__}: {exc}"

    def start(self) -> None:
        if self._handle is not None:
            self._start = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def stop(self) -> None:
        if self._handle is not None and self._start is not None:
            used = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start) / 1000.0
            self.joules = (self.joules or 0.0) + used


class EpochTimer:
    """`with timer:` around each KD epoch; `timer.seconds` lists them, `timer.energy` sums their energy."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.energy = device, [], Energy(device)

    def __enter__(self) -> "EpochTimer":
        sync(self.device)
        self.energy.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._t0)
        self.energy.stop()


def time_to_target(seconds: list[float], accuracies: list[float], target: float | None) -> float | None:
    if target is None:
        return None
    elapsed = 0.0
    for s, acc in zip(seconds, accuracies):
        elapsed += s
        if acc >= target:
            return elapsed
    return None


def result(tool: str, device: torch.device, timer: EpochTimer, accuracies: list[float], args, **extra) -> dict:
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "tool": tool,
        "seconds_per_epoch": timer.seconds,
        "test_accuracy": accuracies,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "target_accuracy": args.target_accuracy,
        "time_to_target_s": time_to_target(timer.seconds, accuracies, args.target_accuracy),
        "peak_gpu_memory_mb": peak,
        "energy_j": timer.energy.joules,
        "energy_source": timer.energy.source,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "torch_version": torch.__version__,
        **extra,
    }


def write_json(path: str | None, payload: dict) -> None:
    """Print the result and, with a path, write it atomically (temp file + os.replace)."""
    text = json.dumps(payload, indent=2)
    print(text)
    if not path:
        return
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".peer.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def add_common_args(p) -> None:
    """The arguments both peers take, with the same defaults."""
    p.add_argument("--data", required=True, help=".pt file from prepare_data.py")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--epochs", type=int, default=200, help="KD epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the soft (KD) term; CE gets 1 - alpha")
    p.add_argument("--teacher-weights", default=None, help="state_dict .pt of a trained ResNet-56")
    p.add_argument("--target-accuracy", type=float, default=None, help="fraction in [0, 1]")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result JSON path (also printed to stdout)")
