"""Peer (a): the same ResNet-56 -> ResNet-20 distillation through torchdistill 1.1.5 (PyPI), config-driven.

Why: torchdistill is the established configuration-driven KD framework; timing its DistillationBox on the
very run the other contestants do (same data file, models, teacher weights, optimiser, schedule, batch
size, augmentation, T, weights) shows what its generality costs. Run it with the Python of the
environment made by setup_torchdistill_env.sh; it needs no leankd.

    benchmarks/peers/.venv-torchdistill/bin/python benchmarks/peers/torchdistill_run.py \
        --data cifar10.pt --teacher-weights teacher.pt --epochs 30 --batch-size 128 --out torchdistill.json

The config is torchdistill_kd.yaml (1.x format), loaded with torchdistill's yaml_util; the values given
on the command line replace the YAML's. The epoch loop is the one of torchdistill's
examples/torchvision/image_classification.py (pre_epoch_process, forward_process, post_forward_process,
post_epoch_process) without its per-step logging (loss.item() syncs the GPU every step; the plain loop
does not do that either). Two things torchdistill 1.1.5 does not do for us:
- it never puts the teacher in eval mode (nothing in 1.1.5 calls teacher.eval()), so a BN teacher would
  distill with batch statistics and keep changing its running stats; we call teacher.eval() once,
  as the plain loop does;
- it evaluates nothing; test accuracy per epoch is measured with peer_common.evaluate, like the plain loop.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_common as pc  # noqa: E402
from td_data import PreparedCifar10  # noqa: E402

import torchdistill  # noqa: E402
from torchdistill.common import yaml_util  # noqa: E402
from torchdistill.common.main_util import import_call  # noqa: E402
from torchdistill.core.distillation import get_distillation_box  # noqa: E402
from torchdistill.misc.log import set_basic_log_config  # noqa: E402


def load_config(path: str, args, device: torch.device) -> dict:
    """torchdistill's YAML with the command line's values written over it."""
    os.environ["PEER_DATA"] = os.path.abspath(args.data)
    os.environ["PEER_TEACHER_WEIGHTS"] = os.path.abspath(args.teacher_weights)
    config = yaml_util.load_yaml_file(path)
    train = config["train"]
    train["num_epochs"] = args.epochs
    workers = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                   pin_memory=device.type == "cuda")
    # full batches only and a cosine stepped every iteration, as leankd and the plain loop
    train["train_data_loader"]["kwargs"].update(batch_size=args.batch_size, drop_last=True, **workers)
    train["val_data_loader"]["kwargs"].update(batch_size=args.eval_batch_size, **workers)
    train["optimizer"]["kwargs"].update(lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(PreparedCifar10(args.data, "train")) // args.batch_size
    train["scheduler"]["kwargs"]["T_max"] = args.epochs * max(steps_per_epoch, 1)
    train["scheduler"]["scheduling_step"] = 1  # torchdistill: > 0 steps the scheduler every that many iterations
    kd = train["criterion"]["kwargs"]["sub_terms"]["kd"]["criterion"]["kwargs"]
    kd.update(temperature=args.temperature, alpha=1 - args.alpha, beta=args.alpha)  # torchdistill: alpha = CE weight
    return config


def build_model(model_config: dict, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    return import_call(model_config["key"], init={"kwargs": model_config.get("kwargs") or {}}).to(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pc.add_common_args(p)
    p.add_argument("--config", default=os.path.join(HERE, "torchdistill_kd.yaml"))
    args = p.parse_args(argv)
    if not args.teacher_weights:
        p.error("--teacher-weights is required (a ResNet-56 state_dict, e.g. from plain_loop.py --save-teacher)")

    set_basic_log_config()  # torchdistill logs (to stderr); stdout stays the JSON
    device = pc.pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = load_config(args.config, args, device)
    dataset_dict = config["datasets"]
    teacher = build_model(config["models"]["teacher_model"], args.seed, device)
    student = build_model(config["models"]["student_model"], args.seed + 1, device)
    teacher.eval()  # see the module docstring: torchdistill 1.1.5 leaves the teacher in train mode

    box = get_distillation_box(teacher, student, dataset_dict, config["train"], device, None, False, 1)
    teacher_accuracy = pc.evaluate(box.teacher_model, box.val_data_loader, device)
    timer, accuracies = pc.EpochTimer(device), []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(box.num_epochs):
        with timer:
            box.pre_epoch_process(epoch=epoch)
            for sample_batch, targets, supp_dict in box.train_data_loader:
                sample_batch = sample_batch.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                loss = box.forward_process(sample_batch, targets, supp_dict)
                box.post_forward_process(loss=loss)
            box.post_epoch_process()
        accuracies.append(pc.evaluate(box.student_model, box.val_data_loader, device))
    if box.teacher_model.training:
        raise RuntimeError("the teacher left eval mode during distillation")
    box.clean_modules()

    train_set = dataset_dict[config["train"]["train_data_loader"]["dataset_id"]]
    payload = pc.result(
        f"torchdistill {torchdistill.__version__}", device, timer, accuracies, args,
        teacher_accuracy=teacher_accuracy, temperature=args.temperature, alpha=args.alpha,
        num_train=len(train_set), num_test=len(box.val_data_loader.dataset), config=os.path.abspath(args.config),
    )
    pc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
