"""The package's shape, checked from the source text (no import runs): dependencies point one way, and no file grows
without bound (issue 24, plug-in core).

- No import cycle among the modules of `src/leankd`. Every import counts, also one inside a function or under
  `if TYPE_CHECKING:`: a lazy import only hides a cycle until someone moves it to the top of the file. `from X import
  Y` imports X, and also X.Y when X.Y is a module; `import X.Y` imports X.Y. The few cycles still there are listed
  exactly in `ALLOWED_CYCLES`, each with the issue that removes it: a new cycle, or a listed one that grows, fails.
- `leankd.core` is the bottom: it imports only itself and the modules named in `CORE_MAY_IMPORT`.
- No source file over `MAX_LINES` lines, except today's oversized files, each held to its current length (a
  ratchet: a listed file may shrink, never grow; one under the limit must leave the list).
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "leankd"

# Strongly connected groups of modules allowed to import each other, each exactly (a group that gains a module fails).
ALLOWED_CYCLES: set[frozenset[str]] = set()  # none left (issue 24 removed the last two); keep it that way

# what leankd.core may import besides itself: modules that import nothing of leankd but leankd.errors
CORE_MAY_IMPORT = {"leankd.errors", "leankd.measure.devices", "leankd.measure.quality"}

MAX_LINES = 500
# file -> its length when it was listed: the most it may have. Shrink these; never raise a ceiling to let a file grow.
OVERSIZED: dict[str, int] = {}  # none left (issue 24 split the last five); keep it that way


# ------------------------------------------------------------------------------------------------ the import graph
def _modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {imported leankd module: line of its first import}, from every import statement in the file."""
    modules = _modules(src)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start from
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of two or more modules that import each other, directly or through others (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def cycle_path(graph: dict[str, dict[str, int]], group: set[str]) -> str:
    """One shortest cycle through the group's first module not in an allowed cycle (the new one), each arrow with the
    line of the import: what to cut."""
    allowed = set().union(*(g for g in ALLOWED_CYCLES if g <= group))
    start = min(group - allowed or group)
    previous = {start: None}
    queue = [start]
    end = None
    while queue and end is None:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child == start:
                end = node
                break
            if child in group and child not in previous:
                previous[child] = node
                queue.append(child)
    path = [start]
    node = end
    while node != start:
        path.insert(1, node)
        node = previous[node]
    path.append(start)
    return path[0] + "".join(f" --line {graph[a][b]}--> {b}" for a, b in zip(path, path[1:]))


def describe_cycles(graph: dict[str, dict[str, int]], groups: list[set[str]]) -> str:
    lines = []
    for group in groups:
        lines.append(f"  {len(group)} modules: {', '.join(sorted(group))}")
        lines.append(f"    e.g. {cycle_path(graph, group)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- tests
def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: relative, absolute, function-level and `from package import module` imports all count."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("import leankd.c as c\n")
    (pkg / "c.py").write_text("from leankd import a\n")
    graph = import_graph(tmp_path)
    assert graph["leankd.a"] == {"leankd.sub.b": 2}
    assert graph["leankd.sub"] == {"leankd.sub.b": 1}
    assert graph["leankd.sub.b"] == {"leankd.c": 1}
    assert graph["leankd.c"] == {"leankd": 1, "leankd.a": 1}
    groups = strongly_connected(graph)
    assert groups == [{"leankd.a", "leankd.sub.b", "leankd.c"}]
    assert cycle_path(graph, groups[0]) == "leankd.a --line 2--> leankd.sub.b --line 1--> leankd.c --line 1--> leankd.a"


def test_no_import_cycles():
    graph = import_graph()
    groups = strongly_connected(graph)
    new = [g for g in groups if frozenset(g) not in ALLOWED_CYCLES]
    gone = [sorted(g) for g in ALLOWED_CYCLES if set(g) not in groups]
    assert not new, ("import cycles (every import counts, also inside a function): move what both sides need into a "
                     "lower module (leankd.core for shared contracts), never import upward\n"
                     + describe_cycles(graph, new))
    assert not gone, f"allowed cycles that are gone: remove them from ALLOWED_CYCLES: {gone}"


def test_core_is_the_bottom():
    graph = import_graph()
    upward = {f"{module} imports {target} (line {line})"
              for module, edges in graph.items() if module == "leankd.core" or module.startswith("leankd.core.")
              for target, line in edges.items()
              if not (target == "leankd.core" or target.startswith("leankd.core.")) and target not in CORE_MAY_IMPORT}
    assert not upward, "leankd.core imports only itself and " + ", ".join(sorted(CORE_MAY_IMPORT)) + ":\n  " + \
        "\n  ".join(sorted(upward))
    for low in CORE_MAY_IMPORT:  # and what core may import stays at the bottom too
        assert set(graph[low]) <= {"leankd.errors"}, f"{low} imports {sorted(graph[low])}: leankd.core reads it"


def _line_counts() -> dict[str, int]:
    return {str(path.relative_to(SRC)): len(path.read_text().splitlines())
            for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def test_no_source_file_over_the_line_limit():
    counts = _line_counts()
    problems = []
    for name, n in counts.items():
        ceiling = OVERSIZED.get(name)
        if ceiling is None and n > MAX_LINES:
            problems.append(f"{name}: {n} lines, over {MAX_LINES}: split it by job")
        elif ceiling is not None and n > ceiling:
            problems.append(f"{name}: {n} lines, grew past its ceiling of {ceiling}: move something out instead")
        elif ceiling is not None and n <= MAX_LINES:
            problems.append(f"{name}: {n} lines, under {MAX_LINES} now: remove it from OVERSIZED")
    problems += [f"{name}: listed in OVERSIZED but gone: remove it" for name in OVERSIZED if name not in counts]
    assert not problems, "\n".join(problems)
