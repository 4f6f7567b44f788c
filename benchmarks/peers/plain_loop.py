"""Peer (b): ResNet-56 -> ResNet-20 distillation as a plain PyTorch loop, in the style of the official tutorial.

Why: the baseline every KD toolkit is implicitly compared with is the loop people write themselves from
https://pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html — a DataLoader with per-sample
torchvision transforms, the teacher in eval mode under no_grad at every step, loss
alpha * KL(log_softmax(s/T) || softmax(t/T)) * T^2 + (1 - alpha) * CE, fp32. Optimiser and schedule as the
other contestants: SGD momentum 0.9 nesterov, lr 0.1, wd 5e-4, cosine stepped every iteration, full batches only
(drop_last, as leankd: the same images per epoch for every contestant).

The teacher comes from --teacher-weights, or is trained first by this same loop without the KD term
(--teacher-epochs) and can be saved with --save-teacher for the other peers. Writes one JSON result
(schema in peer_common.py), e.g.:

    python benchmarks/peers/plain_loop.py --data cifar10.pt --teacher-epochs 30 --save-teacher teacher.pt \
        --epochs 30 --batch-size 128 --target-accuracy 0.9 --out plain.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402
from cifar_resnet import resnet20, resnet56  # noqa: E402
from td_data import PreparedCifar10, test_transform, train_transform  # noqa: E402


def make_optimizer(model, args, steps):
    """SGD + cosine over `steps` optimizer steps, stepped every iteration (as leankd and our torchdistill config)."""
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def train_epoch(student, loader, opt, sched, device, teacher=None, T=4.0, alpha=0.9) -> None:
    """One epoch; with a teacher the tutorial's KD loss, without it plain cross-entropy."""
    student.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
        logits = student(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                            reduction="batchmean") * (T * T)
            loss = alpha * soft + (1 - alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def save_state_dict(model, path: str) -> None:
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".teacher.", suffix=".pt.tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pc.add_common_args(p)
    p.add_argument("--teacher-epochs", type=int, default=None, help="train the teacher first (CE only)")
    p.add_argument("--save-teacher", default=None, help="save the teacher's state_dict here (for torchdistill)")
    args = p.parse_args(argv)
    if (args.teacher_weights is None) == (args.teacher_epochs is None):
        p.error("give exactly one of --teacher-weights and --teacher-epochs")

    device = pc.pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    loader_kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=args.num_workers > 0)
    train_set = PreparedCifar10(args.data, "train", train_transform())
    test_set = PreparedCifar10(args.data, "test", test_transform())
    # full batches only, as leankd trains: every contestant sees the same number of images per epoch
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, **loader_kw)
    test_loader = DataLoader(test_set, batch_size=args.eval_batch_size, shuffle=False, **loader_kw)

    torch.manual_seed(args.seed)
    teacher = resnet56(len(train_set.classes)).to(device)
    teacher_seconds = None
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location=device, weights_only=True))
    else:
        opt, sched = make_optimizer(teacher, args, args.teacher_epochs * len(train_loader))
        t0 = time.perf_counter()
        for _ in range(args.teacher_epochs):
            train_epoch(teacher, train_loader, opt, sched, device)
        pc.sync(device)
        teacher_seconds = time.perf_counter() - t0
    if args.save_teacher:
        save_state_dict(teacher, args.save_teacher)
    teacher.eval()
    teacher_accuracy = pc.evaluate(teacher, test_loader, device)

    torch.manual_seed(args.seed + 1)
    student = resnet20(len(train_set.classes)).to(device)
    opt, sched = make_optimizer(student, args, args.epochs * len(train_loader))
    timer, accuracies = pc.EpochTimer(device), []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.epochs):
        with timer:
            train_epoch(student, train_loader, opt, sched, device, teacher, args.temperature, args.alpha)
        accuracies.append(pc.evaluate(student, test_loader, device))

    payload = pc.result(
        "plain_pytorch", device, timer, accuracies, args,
        teacher_accuracy=teacher_accuracy, teacher_train_seconds=teacher_seconds,
        temperature=args.temperature, alpha=args.alpha, num_train=len(train_set), num_test=len(test_set),
    )
    pc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
