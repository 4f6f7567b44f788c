"""Decode the CIFAR-10 JPEG tarball once into a `.pt` file of uint8 tensors that every peer loads.

Why: the peers (plain PyTorch loop, torchdistill) must see byte-identical images, and JPEG decoding
should not be part of anything timed. Output keys: `train_x`/`test_x` uint8 [N,3,32,32], `train_y`/`test_y`
int64 [N], `classes` (sorted folder names, the ImageFolder order). `--limit-train/--limit-test N` keep a
seeded, class-stratified subset (class counts differ by at most one) for the small CPU mode.

    python benchmarks/peers/prepare_data.py ../shared/datasets/cifar10-jpeg.tar.gz --out cifar10.pt \
        [--limit-train 256 --limit-test 128 --seed 0]
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
from collections import defaultdict

import torch
from torchvision.io import ImageReadMode, decode_jpeg


def read_tarball(path: str) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """{split: {class: [(file name, jpeg bytes), ...]}} for members laid out as `split/class/NNNN.jpg`."""
    out: dict[str, dict[str, list[tuple[str, bytes]]]] = defaultdict(lambda: defaultdict(list))
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or not parts[2].lower().endswith((".jpg", ".jpeg")):
                continue
            split, cls, name = parts
            out[split][cls].append((name, tar.extractfile(member).read()))
    return out


def stratified(per_class: list[list], limit: int | None, gen: torch.Generator) -> list[tuple[int, int]]:
    """(class index, item index) pairs: all of them, or `limit` taken round-robin over shuffled classes."""
    if limit is None:
        return [(c, i) for c, items in enumerate(per_class) for i in range(len(items))]
    orders = [torch.randperm(len(items), generator=gen).tolist() for items in per_class]
    picked: list[tuple[int, int]] = []
    for rank in range(max(len(o) for o in orders)):
        for c, order in enumerate(orders):
            if rank < len(order) and len(picked) < limit:
                picked.append((c, order[rank]))
    return sorted(picked)


def build_split(files: dict[str, list[tuple[str, bytes]]], classes: list[str], limit: int | None,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    per_class = [sorted(files.get(c, [])) for c in classes]
    picked = stratified(per_class, limit, gen)
    data = [torch.frombuffer(bytearray(per_class[c][i][1]), dtype=torch.uint8) for c, i in picked]
    images = decode_jpeg(data, mode=ImageReadMode.RGB) if data else []
    x = torch.stack(images) if images else torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    y = torch.tensor([c for c, _ in picked], dtype=torch.int64)
    return x, y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tarball", help="cifar10-jpeg.tar.gz (train/<class>/*.jpg, test/<class>/*.jpg)")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--limit-train", type=int, default=None, help="stratified subset size of the train split")
    p.add_argument("--limit-test", type=int, default=None, help="stratified subset size of the test split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    files = read_tarball(args.tarball)
    if "train" not in files or "test" not in files:
        raise SystemExit(f"{args.tarball}: expected train/ and test/ folders, found {sorted(files)}")
    classes = sorted(files["train"])
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = build_split(files["train"], classes, args.limit_train, gen)
    test_x, test_y = build_split(files["test"], classes, args.limit_test, gen)
    payload = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes}

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".prepare_data.", suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.out}: train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, {len(classes)} classes")


if __name__ == "__main__":
    main()
