"""Contestants (c) and (d): the same ResNet-56 -> ResNet-20 distillation through leankd — teacher online, or from
leankd's teacher-output cache — plus the student trained alone (the yardstick of the CPU target) and the teacher's
own training (so every contestant distills from a teacher trained with leankd).

Why through `leankd.train.loop.fit` on a TensorTask rather than `leankd run`: the peers read the prepared `.pt`
file, and this way leankd reads exactly the same uint8 tensors (no JPEG decoding, no other split). The augmentation
matches the peers' torchvision pipeline: 4-pixel zero-padded random crop, horizontal flip, CIFAR-10 mean/std —
done in batches on the training device (leankd's ImageAugment), which is one of the things being measured.

Timing as peer_common.py: `seconds_per_epoch` is the loop's own per-epoch training time (device synchronised at
both ends, validation excluded); `test_accuracy` per epoch comes from the loop's per-epoch evaluation on the test
split (passed as the task's "val" split). With `--cache-views K` the teacher first labels K augmentation views
(`cache_build_s`, counted in `time_to_target_s`: the cache is part of the cost) and is then moved off the device.
Energy: the loop's meter spans the whole fit, so leankd's energy includes its per-epoch evaluation (an
overestimate against the peers, never an underestimate).

    python benchmarks/peers/leankd_run.py --data cifar10.pt --teacher-weights teacher.pt --epochs 30 \
        [--cache-views 8] [--precision bf16 --channels-last --cuda-graphs] --out leankd.json
    python benchmarks/peers/leankd_run.py --data cifar10.pt --train-teacher 30 --save-teacher teacher.pt --out t.json
    python benchmarks/peers/leankd_run.py --data cifar10.pt --alone --epochs 30 --out alone.json
    torchrun --standalone --nproc-per-node 2 benchmarks/peers/leankd_run.py ...   # data-parallel (ddp_scaling.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

from leankd.data.augment import CIFAR10_MEAN, CIFAR10_STD, ImageAugment  # noqa: E402
from leankd.kd.cache import build_or_load  # noqa: E402
from leankd.kd.losses import CE, KD  # noqa: E402
from leankd.kd.teacher import LiveTeacher  # noqa: E402
from leankd.models import create_model  # noqa: E402
from leankd.recipe import TrainConfig  # noqa: E402
from leankd.tasks.base import TensorTask  # noqa: E402
from leankd.train.loop import evaluate, fit  # noqa: E402


def load_task(path: str, device: torch.device, channels_last: bool) -> TensorTask:
    data = torch.load(path, map_location="cpu", weights_only=True)
    augment = ImageAugment(crop_padding=4, hflip=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, pad_mode="constant",
                           channels_last=channels_last)
    # the test split doubles as "val": the loop evaluates it after every epoch, outside the timed part
    return TensorTask({"train": (data["train_x"], data["train_y"]), "val": (data["test_x"], data["test_y"])},
                      num_classes=len(data["classes"]), class_names=list(data["classes"]), transform=augment,
                      device=device)


def train_config(args, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       momentum=0.9, nesterov=True, schedule="cosine", precision=args.precision,
                       channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
                       lr_scaling=args.lr_scaling)


def save_state_dict(model: torch.nn.Module, path: str) -> None:
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".teacher.", suffix=".pt.tmp")
    os.close(fd)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def cache_key(teacher: torch.nn.Module, args) -> str:
    """What the cached logits depend on: the teacher's weights and precision, the data file, views, seed, layout."""
    import hashlib

    h = hashlib.sha256(f"{args.cache_views} {args.seed} {args.teacher_precision} {args.channels_last}".encode())
    stat = os.stat(args.data)
    h.update(f"{os.path.abspath(args.data)} {stat.st_size} {stat.st_mtime_ns}".encode())
    for tensor in teacher.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _Timer(pc.EpochTimer):
    """An EpochTimer filled from the loop's own per-epoch times (the loop syncs the device around each epoch)."""

    def __init__(self, device: torch.device, seconds: list[float], energy_j, energy_source: str) -> None:
        super().__init__(device)
        self.seconds = seconds
        self.energy.joules, self.energy.source = energy_j, energy_source


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pc.add_common_args(p)
    p.add_argument("--train-teacher", type=int, default=None, metavar="EPOCHS",
                   help="train the ResNet-56 teacher with leankd (CE) for EPOCHS instead of distilling")
    p.add_argument("--save-teacher", default=None, help="with --train-teacher: write its state_dict here")
    p.add_argument("--alone", action="store_true", help="train the ResNet-20 student alone (CE), no teacher")
    p.add_argument("--cache-views", type=int, default=None, help="distill from K cached augmentation views")
    p.add_argument("--cache-dir", default=None, help="where the teacher cache goes (default: a temporary folder)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--teacher-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--lr-scaling", default="none", choices=["none", "linear", "sqrt"])
    p.add_argument("--name", default=None, help="the tool name written into the JSON")
    args = p.parse_args(argv)
    modes = sum([args.train_teacher is not None, args.alone, args.teacher_weights is not None])
    if modes != 1:
        p.error("give exactly one of --train-teacher, --alone and --teacher-weights")

    from leankd.core import dist

    dist.init(args.device or "auto")  # under torchrun (benchmarks/ddp_scaling.py): data-parallel, rank 0 reports
    device = pc.pick_device(args.device)
    if device.type == "cuda" and dist.is_distributed():
        device = torch.device("cuda", dist.local_rank())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    task = load_task(args.data, device, args.channels_last)
    extra: dict = {}

    if args.train_teacher is not None:  # the teacher every contestant distills from
        torch.manual_seed(args.seed)
        model = create_model("resnet56", num_classes=task.num_classes)
        cfg = train_config(args, args.train_teacher)
        result = fit(model, task, cfg, loss=CE(), seed=args.seed)
        if args.save_teacher:
            save_state_dict(model, args.save_teacher)
        args.epochs = args.train_teacher
        name = args.name or "leankd teacher (CE)"
    else:
        torch.manual_seed(args.seed + 1)
        model = create_model("resnet20", num_classes=task.num_classes)
        cfg = train_config(args, args.epochs)
        teacher = None
        if args.alone:
            loss, name = CE(), args.name or "leankd student alone (CE)"
        else:
            torch.manual_seed(args.seed)
            t_model = create_model("resnet56", num_classes=task.num_classes)
            t_model.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
            # both from the fp32 weights, before LiveTeacher casts the model in place: a bf16/fp16-held teacher cannot
            # read the fp32 eval batches, and numpy (the cache key's hash) has no bfloat16
            key = cache_key(t_model, args) if args.cache_views else None
            extra["teacher_accuracy"] = evaluate(t_model.to(device), task, "val")["accuracy"]
            teacher = LiveTeacher(t_model, task, args.teacher_precision, channels_last=args.channels_last)
            loss = args.alpha * KD(args.temperature) + (1 - args.alpha) * CE()
            name = args.name or "leankd (teacher online)"
            if args.cache_views:
                cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="leankd-bench-cache-")
                pc.sync(device)
                t0 = time.perf_counter()
                teacher, info = build_or_load(Path(cache_dir), key, teacher, task,
                                              args.cache_views, args.seed, log=lambda m: print(m, file=sys.stderr))
                pc.sync(device)
                extra["cache_build_s"] = time.perf_counter() - t0
                extra["cache"] = info.as_dict()
                t_model.to("cpu")  # the student trains alone on the device
                views = f"{args.cache_views} view{'s' if args.cache_views != 1 else ''}"
                name = args.name or f"leankd (cached teacher, {views})"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result = fit(model, task, cfg, loss=loss, teacher=teacher, seed=args.seed)

    seconds = [row["epoch_time_s"] for row in result.history]
    accuracies = [row["val_accuracy"] for row in result.history]
    timer = _Timer(device, seconds, result.energy.get("joules"),
                   f"{result.energy.get('source')} (whole fit, per-epoch evaluation included)")
    payload = pc.result(name, device, timer, accuracies, args, temperature=args.temperature, alpha=args.alpha,
                        num_train=task.split_size("train"), num_test=task.split_size("val"),
                        speedups=result.speedups, speedup_notes=result.speedup_notes, **extra)
    payload["peak_gpu_memory_mb"] = result.peak_memory.get("peak_mb") if device.type == "cuda" else None
    if "cache_build_s" in extra and payload["time_to_target_s"] is not None:
        payload["time_to_target_s"] += extra["cache_build_s"]  # the teacher's pass over the views is part of the cost
    if dist.is_main():
        payload["processes"] = dist.world_size()
        payload["threads_per_process"] = torch.get_num_threads()
        pc.write_json(args.out, payload)
    dist.shutdown()
    return payload


if __name__ == "__main__":
    main()
