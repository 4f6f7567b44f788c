"""No module names a plug-in except the plug-in itself (issue 24): a loss kind, feature kind, logit transform,
compression target or task kind spelled as a string outside its home is a site a new plug-in would have to edit,
and a place where a forgotten kind silently falls back. Today's remaining sites are listed with their counts (a
ratchet: a new site fails; a removed one must leave the list), each with the issue step that removes it."""
import ast
import collections
from pathlib import Path

from leankd.compress.registry import TARGETS
from leankd.kd.registry import FEATURE_LOSSES, LOGIT_LOSSES, TRANSFORMS
from leankd.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src" / "leankd"

# kind of plug-in -> (its names, the folders/files that may spell them)
HOMES = {
    "loss": (set(LOGIT_LOSSES.names()) | set(FEATURE_LOSSES.names()) | set(TRANSFORMS.names()),
             ("kd/methods/", "kd/losses.py", "kd/features.py")),
    "target": (set(TARGETS.names()), ("compress/",)),
    "task": (set(TASKS), ("tasks/", "seq2seq/", "data/")),
}
# names that are also ordinary words of another vocabulary, not plug-in references: precisions and file formats
# (fp16, bf16, onnx), a metric key (mse)
ALSO_MEANS = {"fp16", "bf16", "onnx", "mse"}

# file -> {name: count} of today's sites outside the homes; shrink this, never grow it
ALLOWED: dict[str, dict[str, int]] = {
    # the classic alpha-mix is defined as alpha x kd + (1 - alpha) x ce (and mse / the label's error for regression)
    "kd/registry.py": {"ce": 2, "kd": 2},
    "kd/build.py": {"ce": 2},
    "search/space.py": {"ce": 1},  # distill.family: alpha x family + (1 - alpha) x ce
    "search/report.py": {"kd": 1},  # the search report calls the alpha-mix "the kd family"
    "losses.py": {"standardize": 1},  # the public alias module's __all__
    "models/hf.py": {"minilm": 1},  # a model name (MiniLM checkpoints), not the loss
    "models/seq2seq.py": {"seq2seq": 1},  # a model family's registry tag, not the task kind
    # the recipe names the default task kind (data.task: image_classification)
    "recipe.py": {"image_classification": 1, "int8-static": 2, "qat": 2, "qat-control": 2},
    "cli.py": {"int8-static": 1},  # `leankd export --format int8` means the int8-static target
}


def _strings(path: Path):
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def sites() -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        counts = collections.Counter()
        for text in _strings(path):
            for names, homes in HOMES.values():
                if text in names and text not in ALSO_MEANS and not rel.startswith(homes):
                    counts[text] += 1
        if counts:
            found[rel] = dict(sorted(counts.items()))
    return found


def test_plugin_names_only_in_their_plugins():
    found = sites()
    new = {f: {n: c for n, c in names.items() if c > ALLOWED.get(f, {}).get(n, 0)} for f, names in found.items()}
    new = {f: n for f, n in new.items() if n}
    assert not new, ("plug-in names spelled outside their plug-in (ask the registry or the task instead): "
                     f"{new}")
    gone = {f: {n: c for n, c in names.items() if found.get(f, {}).get(n, 0) < c} for f, names in ALLOWED.items()}
    gone = {f: n for f, n in gone.items() if n}
    assert not gone, f"sites removed: lower or delete their entries in ALLOWED: {gone} (now: " \
                     f"{ {f: found.get(f, {}) for f in gone} })"
