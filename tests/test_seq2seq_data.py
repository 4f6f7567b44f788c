"""Sequence-to-sequence data (issue 9, first step): CMUdict parsing, symbol vocabularies, grouped seeded splits."""
import pytest

from leankd.data.seq2seq import (EOS, SymbolVocab, cmudict_path, describe, grouped_split, read_cmudict, read_pairs,
                                 tokenize)
from leankd.errors import DataError

CMU_SAMPLE = """'bout B AW1 T
a AH0
a(2) EY1
read R EH1 D
read(2) R IY1 D
aalborg AO1 L B AO0 R G # place, danish
zoo Z UW1
"""


def test_cmudict_alternatives_share_their_word_and_comments_are_dropped(tmp_path):
    path = tmp_path / "cmudict.dict"
    path.write_text(CMU_SAMPLE)
    pairs = read_cmudict(str(path))
    assert len(pairs) == 7 and pairs.keys.count("read") == 2 and pairs.keys.count("a") == 2
    assert pairs.sources[0] == ["'", "b", "o", "u", "t"] and pairs.targets[0] == ["B", "AW1", "T"]
    assert pairs.targets[5] == ["AO1", "L", "B", "AO0", "R", "G"]  # the comment is gone
    assert describe(pairs)["groups"] == 5
    (tmp_path / "bad.dict").write_text("word\n")
    with pytest.raises(DataError, match="line 1: 'word' has no pronunciation"):
        read_cmudict(str(tmp_path / "bad.dict"))
    with pytest.raises(DataError, match="no such CMUdict file"):
        cmudict_path(str(tmp_path / "missing.dict"))


def test_grouped_split_is_seeded_complete_and_never_splits_a_word():
    keys = [f"w{i // 2}" for i in range(200)]  # every word twice (two pronunciations)
    split = grouped_split(keys, 0.1, 0.1, seed=3)
    assert split == grouped_split(keys, 0.1, 0.1, seed=3) and split != grouped_split(keys, 0.1, 0.1, seed=4)
    rows = sorted(split["train"] + split["val"] + split["test"])
    assert rows == list(range(200))
    words = {name: {keys[i] for i in idx} for name, idx in split.items()}
    assert not (words["train"] & words["val"] or words["train"] & words["test"] or words["val"] & words["test"])
    assert len(words["test"]) == len(words["val"]) == 10
    shuffled = list(reversed(keys))  # the file's order does not change which words land where
    other = grouped_split(shuffled, 0.1, 0.1, seed=3)
    assert {shuffled[i] for i in other["test"]} == words["test"]
    with pytest.raises(DataError, match="must be in"):
        grouped_split(keys, 0.6, 0.5, seed=0)


def test_symbol_vocabulary_handles_unknowns_and_round_trips(tmp_path):
    vocab = SymbolVocab.build([["B", "AW1", "T"], ["T", "IY1"]])
    assert vocab.symbols[:5] == ["<pad>", "<bos>", "<eos>", "<unk>", "T"]
    ids = vocab.encode(["T", "ZH"], bos=True)
    assert ids == [1, 4, 3, 2]  # <bos> T <unk> <eos>
    assert vocab.decode(ids + [0, 0]) == ["T", "<unk>"] and vocab.decode([4, 2, 5]) == ["T"]
    vocab.save(tmp_path / "v.txt")
    assert SymbolVocab.load(tmp_path / "v.txt").symbols == vocab.symbols
    assert EOS in vocab.symbols


def test_tables_of_pairs_tokenize_by_characters_or_words(tmp_path):
    (tmp_path / "p.tsv").write_text("src\ttgt\nhello\tHH AH0 L OW1\nhi there\tHH AY1\n")
    pairs = read_pairs(tmp_path / "p.tsv", "src", "tgt", tokenization="chars", target_tokenization="whitespace")
    assert pairs.sources[1] == list("hithere") and pairs.targets[0] == ["HH", "AH0", "L", "OW1"]
    (tmp_path / "p.jsonl").write_text('{"de": "ein Haus", "en": "a house"}\n')
    words = read_pairs(tmp_path / "p.jsonl", "de", "en", tokenization="whitespace")
    assert words.sources == [["ein", "Haus"]] and words.targets == [["a", "house"]]
    with pytest.raises(DataError, match="column 'target' \\(data.seq.target_column\\) is not in its header"):
        read_pairs(tmp_path / "p.tsv", "src", "target")
    with pytest.raises(DataError, match="tokenization 'bpe'"):
        tokenize("x", "bpe")
