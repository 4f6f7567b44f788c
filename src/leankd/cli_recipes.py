"""`leankd recipes list | show | copy`: the example recipes shipped inside the package (`recipe_catalogue`), so a
user who installed leankd with pip can see them, read one and copy it to edit. Its own module: the CLI's other
commands are about runs."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from . import recipe_catalogue as cat
from .errors import LeanKDError, RecipeError

recipes_app = typer.Typer(no_args_is_help=True, help="The example recipes shipped with leankd: list, show, copy.")


def _out(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)  # full width when piped, as the CLI's console (cli.py)
    return console if console.is_terminal else Console(stderr=stderr, width=100_000)


def _fail(e: LeanKDError) -> None:
    _out(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _shipped(name: str) -> Path:
    path = cat.find(name)
    if path is None:
        _fail(RecipeError(f"no shipped recipe is called {name!r}: choose one of {', '.join(cat.names())}"))
    return path


@recipes_app.command("list")
def recipes_list():
    """The shipped recipes, each with its first sentence and where its data comes from."""
    out = _out()
    for name in cat.names():
        data = "data: in the package" if name not in cat.DATA else "data: fetch it first (`leankd recipes show`)"
        out.print(f"{name}  —  {cat.summary(cat.find(name))}  [{data}]", highlight=False, markup=False,
                  soft_wrap=True)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="a shipped recipe's name")):
    """Print a shipped recipe (YAML, with its comments) and where to get its data."""
    path, out = _shipped(name), _out()
    out.print(path.read_text(encoding="utf-8"), highlight=False, markup=False, end="")
    if path.stem in cat.DATA:
        out.print(f"# data: {cat.DATA[path.stem]}", highlight=False, markup=False, soft_wrap=True)


@recipes_app.command("copy")
def recipes_copy(name: str = typer.Argument(..., help="a shipped recipe's name"),
                 dest: Path = typer.Argument(Path("."), help="a folder or a .yaml path (default: this folder)"),
                 force: bool = typer.Option(False, "--force", help="replace an existing file")):
    """Copy a shipped recipe here, to edit it (e.g. its data.source)."""
    from .io import write_text_atomic

    path = _shipped(name)
    target = dest / path.name if dest.is_dir() else dest
    if target.exists() and not force:
        _fail(RecipeError(f"{target} exists: choose another destination, or --force to replace it"))
    try:
        write_text_atomic(target, path.read_text(encoding="utf-8"))
    except LeanKDError as e:
        _fail(e)
    _out().print(f"wrote {target}", highlight=False, markup=False)
