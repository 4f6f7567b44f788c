"""What a user gets from `pip install`: licence and version metadata, `leankd --version`, `py.typed`, the example
recipes shipped in the package and found by name from any folder (with a clear error, naming where to get the data,
when a shipped recipe's data is not there), and output files that respect the umask."""
from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leankd
from leankd import io, recipe_catalogue
from leankd.cli import app
from leankd.errors import RecipeError
from leankd.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_version_and_licence_metadata_agree():
    assert PYPROJECT["project"]["version"] == leankd.__version__
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "LICENSE" in PYPROJECT["project"]["license-files"]
    assert f"## {leankd.__version__}" in (REPO / "CHANGELOG.md").read_text()
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"leankd {leankd.__version__}"


def test_package_data_ships_py_typed_and_every_recipe():
    package = Path(leankd.__file__).parent
    assert (package / "py.typed").is_file()
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["leankd"]
    assert "py.typed" in data and "recipes/*.yaml" in data
    shipped = sorted(p.name for p in (package / "recipes").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "recipes").glob("*.yaml")) and "demo.yaml" in shipped
    assert recipe_catalogue.names() == sorted(Path(n).stem for n in shipped)
    # every recipe whose data.source is a path says where to get the data; the others need nothing fetched
    for name in recipe_catalogue.names():
        source = str(load_recipe(REPO / "recipes" / f"{name}.yaml").data.source)
        assert (name in recipe_catalogue.DATA) == ("/" in source), name


def test_a_shipped_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("demo", "demo.yaml"):
        assert load_recipe(name).name == "demo"
    (tmp_path / "demo.yaml").write_text("name: mine\nteacher: {model: resnet8}\nstudent: {model: resnet8}\n")
    assert load_recipe("demo.yaml").name == "mine"  # a file here wins over the shipped name
    with pytest.raises(RecipeError, match=r"recipe file not found: nosuch \(and no shipped recipe has that name: "
                                          r".*demo.*`leankd recipes list`"):
        load_recipe("nosuch")
    with pytest.raises(RecipeError, match=r"recipe file not found: some/demo.yaml$"):
        load_recipe("some/demo.yaml")  # a path is the user's file, never a shipped one


def test_a_shipped_recipe_without_its_data_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "tinyshakespeare_lm"])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "the shipped recipe 'tinyshakespeare_lm' reads data.source" in out
    assert "karpathy/char-rnn" in out and "leankd run tinyshakespeare_lm --set data.source=/path/to/it" in out
    assert not (tmp_path / "runs").exists()  # refused before anything was made
    corpus = tmp_path / "input.txt"
    corpus.write_text("to be or not to be\n" * 50)
    recipe = load_recipe("tinyshakespeare_lm", [f"data.source={corpus}"])
    assert recipe.data.source == str(corpus)


def test_recipes_list_show_copy(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0
    for name in recipe_catalogue.names():
        assert name in listed.output
    shown = runner.invoke(app, ["recipes", "show", "tinyshakespeare_lm"])
    assert shown.exit_code == 0 and "task: causal_lm" in shown.output and "# data: Tiny Shakespeare" in shown.output
    copied = runner.invoke(app, ["recipes", "copy", "demo", str(tmp_path)])
    assert copied.exit_code == 0
    assert (tmp_path / "demo.yaml").read_bytes() == (REPO / "recipes" / "demo.yaml").read_bytes()
    again = runner.invoke(app, ["recipes", "copy", "demo", str(tmp_path)])
    assert again.exit_code == 2 and "exists" in again.output and "--force" in again.output
    assert runner.invoke(app, ["recipes", "copy", "demo", str(tmp_path), "--force"]).exit_code == 0
    unknown = runner.invoke(app, ["recipes", "show", "nosuch"])
    assert unknown.exit_code == 2 and "no shipped recipe is called 'nosuch'" in unknown.output


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_artifacts_respect_the_umask(tmp_path, monkeypatch, umask):
    old = os.umask(umask)
    monkeypatch.setattr(io, "_UMASK", None)  # read again under this umask
    try:
        io.write_text_atomic(tmp_path / "report.md", "hello")
        io.write_json_atomic(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("report.md", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
