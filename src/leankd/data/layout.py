"""Find the ImageFolder structure in a list of relative paths, so a directory and a tar of it are read by the same
rules: `<root>/<class>/<image>` or `<root>/{train,test|val}/<class>/<image>`, possibly under wrapping folders."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from leankd.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEST_SPLIT_NAMES = ("test", "val")  # first one present wins


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(relpath: str) -> bool:
    """Skip dotfiles (incl. macOS `._x.jpg` resource forks in tars) and `__MACOSX` folders: they are not images."""
    return relpath.startswith(".") or "/." in relpath or "__MACOSX" in relpath


@dataclass
class Layout:
    """Where the images are: `splits["train"]` (and maybe `splits["test"]`) map each class to its sorted files.

    Paths are relative posix paths as given to `find_layout`; `classes` is the sorted class list of every split."""

    classes: list[str]
    splits: dict[str, dict[str, list[str]]]
    split_dirs: dict[str, str]  # split -> folder it came from (relative), for messages

    def items(self, split: str) -> tuple[list[str], list[int]]:
        """Flatten one split to (paths, labels) in class order, then file order: stable across folder and tar."""
        paths, labels = [], []
        for label, cls in enumerate(self.classes):
            files = self.splits[split][cls]
            paths.extend(files)
            labels.extend([label] * len(files))
        return paths, labels


def scan_directory(root: Path) -> tuple[list[str], list[str], list[tuple[str, int, int]]]:
    """Walk `root` once: (image files, folders, (path, size, mtime_ns) of the images for cache keys), all relative."""
    files, dirs, stats = [], [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in dirnames:
            dirs.append(f"{rel_dir}/{d}" if rel_dir else d)
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_name(name):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.stat(os.path.join(dirpath, name))
            files.append(rel)
            stats.append((rel, st.st_size, st.st_mtime_ns))
    return files, dirs, stats


def find_layout(files: Iterable[str], dirs: Iterable[str], where: str) -> Layout:
    """Decide the layout from image file paths and folder paths (both relative, '/'-separated).

    `where` names the directory or archive in error messages."""
    files = sorted(f for f in files if is_image_name(f) and not is_hidden(f))
    tree = _Tree(files, dirs)
    prefix = ""
    while True:
        children = tree.children(prefix)
        by_lower = {c.lower(): c for c in children}
        if "train" in by_lower:
            return _split_layout(tree, prefix, by_lower, where)
        if len(children) == 1 and not tree.direct_files(prefix) and not tree.direct_files(_join(prefix, children[0])):
            prefix = _join(prefix, children[0])  # a wrapping folder, e.g. `cifar10/train/...` in a tar
            continue
        classes = _class_files(tree, prefix, where)
        _at_least_two(classes, prefix, where)
        return Layout(sorted(classes), {"train": classes}, {"train": prefix})


def _split_layout(tree: "_Tree", prefix: str, by_lower: dict[str, str], where: str) -> Layout:
    train_dir = _join(prefix, by_lower["train"])
    splits = {"train": _class_files(tree, train_dir, where)}
    _at_least_two(splits["train"], train_dir, where)
    split_dirs = {"train": train_dir}
    test_name = next((by_lower[n] for n in TEST_SPLIT_NAMES if n in by_lower), None)
    if test_name is not None:
        test_dir = _join(prefix, test_name)
        splits["test"] = _class_files(tree, test_dir, where)
        split_dirs["test"] = test_dir
        train_cls, test_cls = set(splits["train"]), set(splits["test"])
        if train_cls != test_cls:
            only_train = sorted(train_cls - test_cls)
            only_test = sorted(test_cls - train_cls)
            raise DataError(
                f"{where}: train and {test_name} have different class folders "
                f"(only in {_show(train_dir)}: {only_train or 'none'}; only in {_show(test_dir)}: {only_test or 'none'}). "
                f"Make both splits contain the same class folders (an empty class is not allowed either)."
            )
    return Layout(sorted(splits["train"]), splits, split_dirs)


def _class_files(tree: "_Tree", folder: str, where: str) -> dict[str, list[str]]:
    loose = tree.direct_files(folder)
    if loose:
        raise DataError(
            f"{where}: image files directly in {_show(folder)} (e.g. {loose[0]!r}); "
            f"put each image in a class folder: {_show(folder)}/<class>/<image>."
        )
    classes = tree.children(folder)
    if not classes:
        raise DataError(
            f"{where}: no class folders with images in {_show(folder)}. Expected <root>/<class>/<image> "
            f"or <root>/train/<class>/<image> (+ test/ or val/), images ending in {', '.join(IMAGE_EXTENSIONS)}."
        )
    out = {}
    for cls in classes:
        found = tree.files_under(_join(folder, cls))
        if not found:
            raise DataError(
                f"{where}: class folder {_show(_join(folder, cls))} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder."
            )
        out[cls] = found
    return out


def _at_least_two(classes: dict[str, list[str]], folder: str, where: str) -> None:
    """Classification needs two classes; one class folder fails here, before a teacher trains on it."""
    if len(classes) < 2:
        found = ", ".join(f"{c}/ ({len(f)} images)" for c, f in classes.items())
        raise DataError(
            f"{where}: only one class folder in {_show(folder)} ({found}); image classification needs at least two: "
            f"put each class's images in its own folder, <root>/<class>/<image> (e.g. cat/, dog/)."
        )


class _Tree:
    """Folder index over relative paths: direct children, direct files, and all files under a folder."""

    def __init__(self, files: list[str], dirs: Iterable[str]):
        self.files = files
        self.subdirs: dict[str, set[str]] = {}
        self.direct: dict[str, list[str]] = {}
        self.under: dict[str, list[str]] = {}
        for d in dirs:
            d = d.strip("/")
            if d and not is_hidden(d):
                self._add_dir(d)
        for f in files:
            parent = _parent(f)
            self.direct.setdefault(parent, []).append(f)
            if parent:
                self._add_dir(parent)
            parts = f.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                self.under.setdefault("/".join(parts[:i]), []).append(f)

    def _add_dir(self, d: str) -> None:
        while d:
            parent = _parent(d)
            self.subdirs.setdefault(parent, set()).add(d.rsplit("/", 1)[-1])
            d = parent

    def children(self, folder: str) -> list[str]:
        return sorted(self.subdirs.get(folder, ()))

    def direct_files(self, folder: str) -> list[str]:
        return self.direct.get(folder, [])

    def files_under(self, folder: str) -> list[str]:
        return self.under.get(folder, [])


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _show(folder: str) -> str:
    return f"'{folder}/'" if folder else "the top level"
