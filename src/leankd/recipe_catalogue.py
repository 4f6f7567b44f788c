"""The example recipes shipped inside the package (`leankd/recipes/*.yaml`), found by name from any folder.

Why in the package: a user who installed leankd with pip has no `recipes/` folder, and `leankd run demo` must work
there as it does in the repository (where `recipes/` points at the same files). A path that exists always wins over
a shipped name, so a user's own `demo.yaml` is never shadowed.

Most examples read public datasets a user must fetch first. `DATA` says, for each recipe whose `data.source` is a
path, what the data is, where to get it and under what licence; when that path is missing, loading the recipe by
name stops with that text and the `--set data.source=...` that points it at the user's copy — before anything
trains, instead of a "not found" deep in a task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SUFFIXES = (".yaml", ".yml")

_CIFAR = ("CIFAR-10 as JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg), a folder or a .tar.gz of it: e.g. "
          "torchvision's CIFAR10 (https://www.cs.toronto.edu/~kriz/cifar.html, free for research) written out as "
          "images")
_SST2 = ("GLUE SST-2 (train.tsv / dev.tsv / test.tsv, label column first; https://gluebenchmark.com/tasks, for "
         "research): a folder holding those files")
DATA = {
    "cifar10_resnet56_resnet20": _CIFAR,
    "speech_commands_kws": ("Google Speech Commands v0.02 (CC-BY-4.0, http://download.tensorflow.org/data/"
                            "speech_commands_v0.02.tar.gz): a folder or tar of <label>/<clip>.wav|flac with the 12 "
                            "labels of the recipe (10 words, _silence_, _unknown_)"),
    "sst2_bilstm": _SST2,
    "sst2_bilstm_full": _SST2,
    "sst2_minilm": _SST2,
    "trec_minilm": ("TREC question classification (Li & Roth 2002, https://cogcomp.seas.upenn.edu/Data/QA/QC/, for "
                    "research): a folder holding train.label and test.label"),
    "tinyshakespeare_lm": ("Tiny Shakespeare, 1.1 MB of public-domain text (Karpathy's char-rnn: https://raw."
                           "githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt): the "
                           "input.txt file"),
}


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"


def names() -> list[str]:
    """Every shipped recipe's name (its file name without .yaml), sorted."""
    folder = shipped_dir()
    return sorted(p.stem for p in folder.iterdir() if p.suffix in SUFFIXES) if folder.is_dir() else []


def find(name: str) -> Optional[Path]:
    """The shipped recipe called `name` (`demo` or `demo.yaml`), or None. Only bare names: a path with a folder in
    it names the user's own file."""
    if not name or "/" in name or "\\" in name:
        return None
    stem = name[: -len(suffix)] if (suffix := next((s for s in SUFFIXES if name.endswith(s)), "")) else name
    path = shipped_dir() / f"{stem}.yaml"
    return path if path.is_file() else None


def summary(path: Path) -> str:
    """The first sentence of a recipe's leading comment block: what `leankd recipes list` shows."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def missing_data(name: str, source: str) -> Optional[str]:
    """The message for a shipped recipe whose `data.source` path is not here, or None when it is (or is not a
    path: `demo`, `cmudict`, a `name:` source)."""
    if name not in DATA or Path(source).exists():
        return None
    return (f"the shipped recipe '{name}' reads data.source {source!r}, which is not there from {Path.cwd()}. It "
            f"needs {DATA[name]}. Get it, then run `leankd run {name} --set data.source=/path/to/it` (or "
            f"`leankd recipes copy {name}` and edit data.source in the copy)")
