"""Tests for leankd.data: sources (folder, tar, demo, torchvision-local), cache, splits, stats, augmentation."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from leankd.data import (
    ImageAugment,
    ImageFolderStream,
    channel_stats,
    load_images,
    normalize,
    random_crop,
    random_hflip,
    stratified_split,
)
from leankd.data import tarstream
from leankd.data.decode import Decoder
from leankd.errors import DataError

CLASSES = ["cat", "dog", "emu"]

# the tests write images with torchvision's encoders, which warn on every call since torchvision 0.29
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def _image(seed: int, h: int = 8, w: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _write(path: Path, img: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_jpeg(img, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else encode_png(img)
    path.write_bytes(data.numpy().tobytes())


def _make_split(root: Path, n_per_class: int = 3, seed: int = 0, ext: str = ".png", classes=CLASSES) -> None:
    for c, cls in enumerate(classes):
        for i in range(n_per_class):
            _write(root / cls / f"{i:03d}{ext}", _image(seed + 100 * c + i))


def _make_dataset(root: Path, ext: str = ".png") -> Path:
    _make_split(root / "train", 4, seed=0, ext=ext)
    _make_split(root / "test", 2, seed=10_000, ext=ext)
    return root


def _tar(src: Path, dest: Path, wrap: str | None = None, mode: str | None = None, **kw) -> Path:
    mode = mode or ("w" if dest.suffix == ".tar" else "w:gz")
    with tarfile.open(dest, mode, **kw) as tf:
        for child in sorted(src.iterdir()):
            tf.add(child, arcname=f"{wrap}/{child.name}" if wrap else child.name)
    return dest


def _same(a, b) -> None:
    assert a.classes == b.classes
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert (a.test is None) == (b.test is None)
    if a.test is not None:
        assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.fingerprint == b.fingerprint


@pytest.fixture(scope="module")
def demo():
    return load_images("demo")


# ---------------------------------------------------------------- sources


def test_folder_loads_pixels_and_labels_exactly(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    src = load_images(str(root))
    assert src.classes == CLASSES
    assert src.train.images.shape == (12, 3, 8, 8) and src.train.images.dtype == torch.uint8
    assert src.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert src.test is not None and src.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(src.train.images[5], _image(100 + 1))  # PNG is lossless: dog/001.png
    assert src.origin.startswith("folder:") and len(src.fingerprint) == 64


def test_folder_and_tars_give_identical_tensors(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    (root / "train" / "cat" / "._000.png").write_bytes(b"macOS resource fork, not an image")
    (root / "train" / "notes.txt").write_text("ignored")
    ref = load_images(str(root))
    for tar in (
        _tar(root, tmp_path / "plain.tar.gz"),
        _tar(root, tmp_path / "wrapped.tgz", wrap="cifar-mini"),
        _tar(root, tmp_path / "gnu.tar", format=tarfile.GNU_FORMAT),
        _tar(root, tmp_path / "pax.tar.xz", wrap="x" * 120, mode="w:xz", format=tarfile.PAX_FORMAT),  # long names
    ):
        _same(load_images(str(tar)), ref)


def test_tar_fast_parser_matches_tarfile_fallback(tmp_path, monkeypatch):
    root = _make_dataset(tmp_path / "ds", ext=".jpg")
    tar = _tar(root, tmp_path / "ds.tar.gz", wrap="./top")
    fast = load_images(str(tar))

    def unsupported(*a, **k):
        raise tarstream._Unsupported
        yield  # pragma: no cover

    monkeypatch.setattr(tarstream, "_fast", unsupported)
    _same(load_images(str(tar)), fast)


def test_class_folders_without_split_have_no_test(tmp_path):
    _make_split(tmp_path / "flat", 2)
    src = load_images(str(tmp_path / "flat"))
    assert src.test is None and src.classes == CLASSES and len(src.train) == 6


def test_val_folder_is_the_test_split(tmp_path):
    _make_split(tmp_path / "ds" / "train", 2)
    _make_split(tmp_path / "ds" / "val", 1, seed=500)
    src = load_images(str(tmp_path / "ds"))
    assert src.test is not None and len(src.test) == 3


def test_jpeg_batch_decode_matches_single_decode(tmp_path):
    from torchvision.io import ImageReadMode, decode_image

    _make_split(tmp_path / "ds", 3, ext=".JPG")
    src = load_images(str(tmp_path / "ds"))
    one = decode_image(str(tmp_path / "ds" / "dog" / "002.JPG"), mode=ImageReadMode.RGB)
    assert torch.equal(src.train.images[5], one)


def test_demo_source(demo):
    assert demo.classes[:3] == ["airplane", "automobile", "bird"] and len(demo.classes) == 10
    assert demo.train.images.shape == (5000, 3, 32, 32) and demo.train.images.dtype == torch.uint8
    assert demo.test is not None and demo.test.images.shape == (2000, 3, 32, 32)
    assert torch.bincount(demo.train.labels).tolist() == [500] * 10
    assert torch.bincount(demo.test.labels).tolist() == [200] * 10
    assert demo.origin == "demo"


def test_train_test_class_mismatch(tmp_path):
    _make_split(tmp_path / "ds" / "train", 1)
    _make_split(tmp_path / "ds" / "test", 1, classes=["cat", "dog", "fox"])
    with pytest.raises(DataError, match=r"emu.*fox"):
        load_images(str(tmp_path / "ds"))


def test_empty_class_folder(tmp_path):
    _make_split(tmp_path / "ds", 1)
    (tmp_path / "ds" / "yak").mkdir()
    with pytest.raises(DataError, match="yak"):
        load_images(str(tmp_path / "ds"))


def test_no_images_and_loose_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_images(str(tmp_path / "empty"))
    _write(tmp_path / "loose" / "a.png", _image(0))
    with pytest.raises(DataError, match="class folder"):
        load_images(str(tmp_path / "loose"))


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "cifar"
    with pytest.raises(DataError, match="nope/cifar"):
        load_images(str(missing))


def test_not_a_tar(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a tar"):
        load_images(str(tmp_path / "x.zip"))
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="broken.tar.gz"):
        load_images(str(tmp_path / "broken.tar.gz"))
    whole = _tar(_make_dataset(tmp_path / "ds"), tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2 + 100])
    with pytest.raises(DataError, match="cut.tar"):
        load_images(str(tmp_path / "cut.tar"))


def test_corrupt_image_is_named(tmp_path):
    _make_split(tmp_path / "ds", 2, ext=".jpg")
    (tmp_path / "ds" / "dog" / "001.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="dog/001.jpg"):
        load_images(str(tmp_path / "ds"))


def test_mixed_sizes(tmp_path):
    _write(tmp_path / "ds" / "a" / "0.png", _image(0, 8, 8))
    _write(tmp_path / "ds" / "b" / "0.png", _image(1, 6, 10))
    with pytest.raises(DataError, match=r"a/0.png.*8x8.*b/0.png.*10x6.*image_size"):
        load_images(str(tmp_path / "ds"))
    src = load_images(str(tmp_path / "ds"), image_size=12)
    assert src.train.images.shape == (2, 3, 12, 12)


def test_grayscale_alpha_bmp_webp_become_rgb(tmp_path):
    from PIL import Image

    rgb = _image(3, 4, 4)
    hwc = rgb.permute(1, 2, 0).contiguous().numpy()
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "a" / "gray.png").write_bytes(encode_png(torch.full((1, 4, 4), 77, dtype=torch.uint8)).numpy().tobytes())
    Image.fromarray(hwc).convert("RGBA").save(tmp_path / "ds" / "a" / "rgba.png")
    (tmp_path / "ds" / "b").mkdir()
    Image.fromarray(hwc).save(tmp_path / "ds" / "b" / "x.BMP")
    Image.fromarray(hwc).save(tmp_path / "ds" / "b" / "y.webp", lossless=True)
    src = load_images(str(tmp_path / "ds"))
    assert src.train.images.shape == (4, 3, 4, 4) and src.train.labels.tolist() == [0, 0, 1, 1]
    assert (src.train.images[0] == 77).all()
    for i in (1, 2, 3):
        assert torch.equal(src.train.images[i], rgb)


def test_torchvision_source_never_downloads(tmp_path):
    with pytest.raises(DataError, match=r"(?s)cifar-10-batches-py.*never downloads"):
        load_images(f"torchvision:CIFAR10:{tmp_path}")
    with pytest.raises(DataError, match="MNIST/raw"):
        load_images(f"torchvision:mnist:{tmp_path}")
    with pytest.raises(DataError, match="supported"):
        load_images(f"torchvision:ImageNet:{tmp_path}")
    assert not any(tmp_path.iterdir())  # nothing was created or fetched


def test_torchvision_mnist_from_local_files(tmp_path):
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for prefix, n in (("train", 2), ("t10k", 2)):
        header = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + imgs[:n].tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x0801, n], dtype=">i4").tobytes() + bytes([3, 7]))
    src = load_images(f"torchvision:MNIST:{tmp_path}", image_size=32)
    assert src.train.images.shape == (2, 3, 32, 32) and src.train.labels.tolist() == [3, 7]
    assert len(src.classes) == 10
    gray = load_images(f"torchvision:MNIST:{tmp_path}").train.images
    assert torch.equal(gray[:, 0], torch.from_numpy(imgs)) and torch.equal(gray[:, 0], gray[:, 2])


# ---------------------------------------------------------------- cache


def test_cache_second_load_skips_decoding(tmp_path, monkeypatch):
    root = _make_dataset(tmp_path / "ds", ext=".jpg")
    tar = _tar(root, tmp_path / "ds.tar.gz")
    cache = tmp_path / "cache"
    first = load_images(str(tar), cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(Decoder, "decode", boom)
    _same(load_images(str(tar), cache_dir=cache), first)
    with pytest.raises(AssertionError, match="cache hit"):  # a different image_size is a different key
        load_images(str(tar), image_size=16, cache_dir=cache)


def test_damaged_cache_is_rebuilt(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    cache = tmp_path / "cache"
    first = load_images(str(root), cache_dir=cache)
    (cache_file,) = cache.glob("*.safetensors")
    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable image cache"):
        again = load_images(str(root), cache_dir=cache)
    _same(again, first)


def test_cache_invalidated_when_folder_changes(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    cache = tmp_path / "cache"
    load_images(str(root), cache_dir=cache)
    _write(root / "train" / "cat" / "999.png", _image(999))
    assert len(load_images(str(root), cache_dir=cache).train) == 13


# ---------------------------------------------------------------- streaming


def test_stream_matches_in_memory(tmp_path):
    root = _make_dataset(tmp_path / "ds")
    mem = load_images(str(root), image_size=16)
    for split, ref in (("train", mem.train), ("test", mem.test)):
        ds = ImageFolderStream(root, split=split, image_size=16)
        assert ds.classes == mem.classes and len(ds) == len(ref)
        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
        assert x.dtype == torch.uint8 and torch.equal(x, ref.images) and torch.equal(y, ref.labels)
    _make_split(tmp_path / "flat", 1)
    with pytest.raises(DataError, match="no 'test' split"):
        ImageFolderStream(tmp_path / "flat", split="test")


# ---------------------------------------------------------------- split and stats


def test_stratified_split():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 7 + [3] * 1)[torch.randperm(88, generator=torch.Generator().manual_seed(1))]
    tr, va = stratified_split(labels, 0.2, seed=3)
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, stratified_split(labels, 0.2, seed=4)[1])
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(88))
    assert torch.bincount(labels[va], minlength=4).tolist() == [10, 6, 1, 0]  # round(n_c * 0.2), >=1 if n_c > 1
    assert tr.dtype == va.dtype == torch.int64


def test_stratified_split_edges():
    labels = torch.tensor([0, 0, 1, 1, 1])
    tr, va = stratified_split(labels, 0.0, seed=0)
    assert tr.tolist() == [0, 1, 2, 3, 4] and va.numel() == 0
    tr, va = stratified_split(labels, 0.01, seed=0)
    assert torch.bincount(labels[va]).tolist() == [1, 1]  # at least one per class
    tr, va = stratified_split(labels, 0.99, seed=0)
    assert torch.bincount(labels[tr]).tolist() == [1, 1]  # never the whole class
    with pytest.raises(DataError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_channel_stats():
    x = torch.full((10, 3, 4, 4), 51, dtype=torch.uint8)
    x[:, 1] = 255
    mean, std = channel_stats(x, chunk=3)
    assert mean == pytest.approx((0.2, 1.0, 0.2)) and std == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    y = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(y, chunk=8)
    ref = y.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(ref.mean(1).tolist()) and std == pytest.approx(ref.std(1, unbiased=False).tolist())
    fmean, fstd = channel_stats(y.double() / 255, chunk=8)  # float input: already in 0..1
    assert fmean == pytest.approx(mean) and fstd == pytest.approx(std)


def test_channel_stats_demo(demo):
    mean, std = channel_stats(demo.train.images)
    assert all(0.4 < m < 0.55 for m in mean) and all(0.2 < s < 0.3 for s in std)


# ---------------------------------------------------------------- augmentation


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_identity_and_determinism():
    x = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, _seeded(0)), x)
    a = random_crop(x, 3, _seeded(7))
    assert torch.equal(a, random_crop(x, 3, _seeded(7)))
    assert not torch.equal(a, random_crop(x, 3, _seeded(8)))


@pytest.mark.parametrize("mode, torch_mode", [("reflect", "reflect"), ("constant", "constant"), ("zeros", "constant")])
def test_random_crop_is_a_window_of_the_padded_image(mode, torch_mode):
    p, h, w = 2, 6, 7
    x = torch.randint(1, 256, (32, 3, h, w), dtype=torch.uint8)
    out = random_crop(x, p, _seeded(0), mode=mode)
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode=torch_mode)
    offsets = set()
    for b in range(x.shape[0]):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[b], padded[b, :, dy:dy + h, dx:dx + w])]
        assert hits, f"sample {b} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets really vary per sample


def test_random_crop_reflect_by_hand():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).repeat(64, 1, 1, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    out = random_crop(x, 1, _seeded(0), mode="reflect")
    top_left = [o for o in out if o[0, 0, 0] == 5 and o[0, 1, 1] == 1]  # window at offset (0, 0) of the padded image
    assert top_left and torch.equal(top_left[0][0], torch.tensor([[5, 4, 5], [2, 1, 2], [5, 4, 5]], dtype=torch.uint8))
    assert sum(torch.equal(o, x[0]) for o in out) > 0  # the centre window is the image itself


def test_random_crop_zero_padding_by_hand():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).repeat(64, 1, 1, 1)
    out = random_crop(x, 1, _seeded(0), mode="constant")
    corner = [o for o in out if o[0, 0, 0] == 0 and o[0, 0, 1] == 0 and o[0, 1, 0] == 0]  # shifted down-right
    assert corner and torch.equal(corner[0][0], torch.tensor([[0, 0, 0], [0, 1, 2], [0, 4, 5]], dtype=torch.uint8))


def test_random_hflip():
    x = torch.randint(0, 256, (64, 3, 4, 5), dtype=torch.uint8)
    out = random_hflip(x, _seeded(0))
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, torch.flip(x, dims=[-1]))])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped ^ kept).all() and 10 < int(flipped.sum()) < 54
    chosen = torch.rand(64, generator=_seeded(0)) < 0.5  # the draw it makes: one uniform per sample
    assert torch.equal(flipped, chosen)
    assert torch.equal(random_hflip(x, _seeded(0), p=0.0), x)
    assert torch.equal(random_hflip(x, _seeded(0), p=1.0), torch.flip(x, dims=[-1]))


def test_normalize_by_hand():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(x, mean=(0.0, 0.1, 0.5), std=(1.0, 0.5, 0.25))
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, (0.2 - 0.1) / 0.5, (1.0 - 0.5) / 0.25], abs=1e-6)
    assert normalize(x, (0, 0, 0), (1, 1, 1), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_image_augment_modes():
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    aug = ImageAugment(crop_padding=2, hflip=True, mean=mean, std=std)
    assert torch.equal(aug(x, None, False), normalize(x, mean, std))
    a, b = aug(x, _seeded(5), True), aug(x, _seeded(5), True)
    assert a.shape == (8, 3, 8, 8) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, normalize(x, mean, std))
    cl = ImageAugment(mean=mean, std=std, channels_last=True)(x, _seeded(0), True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    plain = ImageAugment(crop_padding=0, hflip=False, mean=mean, std=std, pad_mode="constant")
    assert torch.equal(plain(x, _seeded(0), True), normalize(x, mean, std))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_image_augment_on_cuda():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, device="cuda")
    aug = ImageAugment(crop_padding=4, mean=(0.5,) * 3, std=(0.25,) * 3, channels_last=True)
    g1, g2 = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
    a, b = aug(x, g1, True), aug(x, g2, True)
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert torch.allclose(aug(x, None, False).cpu(), aug(x.cpu(), None, False), atol=1e-6)


def test_limit_test_keeps_a_stratified_subset_and_says_so(tmp_path):
    from leankd.recipe import DataConfig
    from leankd.tasks import build_task
    from test_pipeline import make_image_folder

    root = make_image_folder(tmp_path / "imgs")  # 8 test images per class, 4 classes
    cfg = DataConfig(source=str(root), limit_test=8, cache_dir=str(tmp_path / "cache"))
    task = build_task(cfg, torch.device("cpu"), 0)
    _, y = task.splits["test"]
    assert torch.bincount(y, minlength=4).tolist() == [2, 2, 2, 2]
    assert any("data.limit_test" in n for n in task.notes)
    full = build_task(DataConfig(source=str(root), cache_dir=str(tmp_path / "cache")), torch.device("cpu"), 0)
    assert len(full.splits["test"][1]) == 32
