"""Reading user inputs: text files split on line breaks only (U+0085 is text), encodings, seq2seq split folders and
headerless files, numbers YAML reads where text is meant, brackets in console messages, and `leankd validate`
agreeing with `leankd run` on every shipped recipe."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from leankd.cli import app
from leankd.data.lines import split_lines
from leankd.data.seq2seq import read_pairs
from leankd.data.tables import find_split_files
from leankd.data.text import read_table
from leankd.errors import DataError, RecipeError
from leankd.markup import safe
from leankd.recipe import DataConfig, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

MODELS = {"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"}}


# ------------------------------------------------------------------------------------------------ line breaks
def test_split_lines_breaks_on_newlines_only():
    text = "a\x85b\u2028c\x0cd\r\ne\rf\ng"
    assert list(split_lines(text)) == ["a\x85b\u2028c\x0cd", "e", "f", "g"]
    assert len(text.splitlines()) == 7  # what the readers did before: three rows too many


def test_csv_with_nel_in_a_text_is_one_row(tmp_path):
    """The movie-review polarity set's case: a cp1252 ellipsis (byte 0x85) read as latin-1 is U+0085."""
    rows = ["label,text", "1,fine", "0,so... \x85 dull", "1,good"]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    table = read_table(path, text_column=["text"])
    assert table.texts == ["fine", "so... \x85 dull", "good"] and table.labels == ["1", "0", "1"]
    raw = tmp_path / "latin.tsv"  # the same byte in a latin-1 file, read with data.text.encoding
    raw.write_bytes(b"label\tsentence\n0\tso\x85 dull\n1\tgood\n")
    table = read_table(raw, text_column=["sentence"], encoding="latin-1")
    assert table.texts == ["so\x85 dull", "good"]


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("label,text\n1,a\n0,b\n".encode("utf-8-sig"))
    assert read_table(path, text_column=["text"]).labels == ["1", "0"]


def test_csv_quoted_newline_and_row_numbers(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('label,text\n1,"two\nlines"\n0,x,extra\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.csv, row 4: 3 fields but the header has 2"):
        read_table(path, text_column=["text"])


def test_non_utf8_text_names_file_line_and_setting(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"label\tsentence\n1\tfine\n0\tcaf\xe9\n")
    with pytest.raises(DataError, match=r"train.tsv, line 3: byte 'e9' .* not valid utf-8; set data.text.encoding"):
        read_table(path)
    assert read_table(path, encoding="cp1252").texts == ["fine", "café"]
    with pytest.raises(DataError, match="'klingon' is not a known text encoding"):
        read_table(path, encoding="klingon")


# ------------------------------------------------------------------------------------------------ seq2seq files
def _g2p_folder(folder: Path, prefix: str = "eng_", sizes=(12, 4, 5)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = iter(f"{a}{b}{c}" for a in "abcd" for b in "efgh" for c in "ijkl")
    for split, n in zip(("train", "dev", "test"), sizes):
        rows = [f"{w}\t{' '.join(ch.upper() for ch in w)}" for w in (next(words) for _ in range(n))]
        (folder / f"{prefix}{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_headerless_pairs_by_position(tmp_path):
    folder = _g2p_folder(tmp_path / "g2p")
    pairs = read_pairs(folder / "eng_train.tsv", 0, 1, "chars", "whitespace", header=False)
    assert len(pairs) == 12 and pairs.sources[0] == ["a", "e", "i"] and pairs.targets[0] == ["A", "E", "I"]
    with pytest.raises(DataError, match=r"column 'source' \(data.seq.source_column\) is not in its header "
                                         r"\['aei', 'A E I'\].*set data.seq.header: false"):
        read_pairs(folder / "eng_train.tsv", "source", "target")


def test_seq2seq_folder_uses_official_splits(tmp_path):
    from leankd.tasks import build_task

    folder = _g2p_folder(tmp_path / "g2p")
    assert {s: p.name for s, p in find_split_files(folder).items()} == {
        "train": "eng_train.tsv", "val": "eng_dev.tsv", "test": "eng_test.tsv"}
    cfg = DataConfig(task="seq2seq", source=str(folder), seq={"header": False, "target_tokenization": "whitespace"})
    assert (cfg.seq.source_column, cfg.seq.target_column) == (0, 1)
    task = build_task(cfg, torch.device("cpu"), seed=0)
    assert [task.split_size(s) for s in ("train", "val", "test")] == [12, 4, 5]
    assert task.splits["test"].pairs.keys == [w for w in
                                              (line.split("\t")[0] for line in
                                               (folder / "eng_test.tsv").read_text().splitlines())]
    assert any("official splits" in n for n in task.notes)
    (folder / "eng_dev.tsv").unlink()  # no dev file: val is held out of train, test stays the file's
    task = build_task(cfg, torch.device("cpu"), seed=0)
    assert task.split_size("test") == 5 and task.split_size("train") + task.split_size("val") == 12
    assert task.split_size("val") >= 1


def test_seq_settings_left_at_default_keep_fingerprints():
    from leankd.stages import _data_settings

    before = {"format": "auto", "source_column": "source", "target_column": "target", "tokenization": "chars",
              "target_tokenization": None, "test_fraction": 0.1, "beam": 5, "length_penalty": 1.0,
              "max_decode_len": None, "bucket": True}  # data.seq before header/encoding existed
    assert _data_settings(DataConfig(task="seq2seq").model_dump(), 0)["seq"] == before
    headerless = _data_settings(DataConfig(task="seq2seq", seq={"header": False}).model_dump(), 0)["seq"]
    assert headerless["header"] is False and (headerless["source_column"], headerless["target_column"]) == (0, 1)
    text = DataConfig(task="text_classification").model_dump()
    assert "encoding" not in _data_settings(text, 0)["text"]
    assert _data_settings(DataConfig(task="text_classification", text={"encoding": "latin-1"}).model_dump(),
                          0)["text"]["encoding"] == "latin-1"


# ------------------------------------------------------------------------------------------------ recipe values
def test_numbers_where_text_is_meant():
    r = parse_recipe({**MODELS, "name": 2024, "data": {"task": "keyword_spotting", "audio": {"keyword": 3}}})
    assert r.name == "2024" and r.data.audio.keyword == "3"
    with pytest.raises(RecipeError, match=r"name = 1.5: YAML reads the unquoted 1.5 as a number.*quote it"):
        parse_recipe({**MODELS, "name": 1.5})
    with pytest.raises(RecipeError, match="YAML reads yes/no/on/off as true/false, so quote the word"):
        parse_recipe({**MODELS, "data": {"task": "keyword_spotting", "audio": {"keyword": True}}})
    with pytest.raises(RecipeError, match=r"output_dir = False: .*quote the text"):
        parse_recipe({**MODELS, "output_dir": False})


def test_override_digit_keyword(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MODELS, "data": {"task": "keyword_spotting"}}))
    assert load_recipe(path, ["data.audio.keyword=3"]).data.audio.keyword == "3"


# ------------------------------------------------------------------------------------------------ console text
def test_safe_keeps_brackets_and_own_styles():
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(safe("[bold]teacher:[/] pip install 'leankd[text]' or [MASK] [x] \\[ok] [/etc]"))
    assert console.file.getvalue().strip() == "teacher: pip install 'leankd[text]' or [MASK] [x] \\[ok] [/etc]"


# ------------------------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_validate_passes_every_shipped_recipe(recipe, monkeypatch):
    """validate agrees with run: the recipes' data paths are relative to the repository root, as in the README."""
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["validate", f"recipes/{recipe}"])
    assert result.exit_code == 0, result.output
    assert f"recipes/{recipe}: valid" in result.output


def test_validate_builds_word_students_with_a_stand_in_vocabulary(tmp_path, monkeypatch):
    """sst2_bilstm's shape: text_bilstm takes vocab_size from the data, so validate must not ask for it."""
    from test_text import tiny_bert, write_sst2_like

    bert = tiny_bert(tmp_path / "bert", layers=2)
    data = write_sst2_like(tmp_path / "sst", n_train=8, n_dev=4, n_test=4)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"task": "text_classification", "source": str(data)},
                                    "teacher": {"model": f"hf:{bert}"}, "student": {"model": "text_bilstm"}}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "not checked" not in result.output


def test_plain_split_files_win_over_prefixed_extras(tmp_path):
    """train.tsv beside augmented_train.tsv (a user's extra file) is the dataset, as it was before dataset prefixes
    were recognised; two prefixed datasets and no plain one are still refused."""
    for name in ("train.tsv", "dev.tsv", "augmented_train.tsv", "old-train.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\nok\t1\n")
    assert {s: p.name for s, p in find_split_files(tmp_path).items()} == {"train": "train.tsv", "val": "dev.tsv"}
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match="split files of 2 datasets"):
        find_split_files(tmp_path)
