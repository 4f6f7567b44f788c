"""Extra sources for sequence-level KD (`seq+extra`): the n-gram sampler and the file reader, what the student's
training pairs become, decoding arbitrary sources, and the recipe's errors. The end-to-end run is in
test_seq2seq.py (`seq+extra` beside the other students)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_seq2seq import _model, _task, _train

from leankd.data.seq2seq import Pairs
from leankd.errors import DataError
from leankd.seq2seq.decode import greedy
from leankd.seq2seq.distill import TeacherOutputs, build_or_load_outputs, training_pairs
from leankd.data.seq2seq import SymbolVocab
from leankd.seq2seq.extra_sources import collect_extra_sources, file_sources, ngram_sources, source_key
from leankd.tasks.seq2seq import Seq2SeqTask

WORDS = [list(w) for w in ["banana", "bandana", "cabana", "canal", "anna", "nab", "cab", "banal"]]


def test_ngram_sources_are_seeded_new_and_made_of_training_symbols():
    exclude = {tuple(w) for w in WORDS}
    first = ngram_sources(WORDS, 30, 3, seed=7, exclude=exclude)
    assert first == ngram_sources(WORDS, 30, 3, seed=7, exclude=exclude)
    assert first != ngram_sources(WORDS, 30, 3, seed=8, exclude=exclude)
    assert 0 < len(first) <= 30 and len({tuple(s) for s in first}) == len(first)
    longest = max(len(w) for w in WORDS)
    symbols = {c for w in WORDS for c in w}
    for s in first:
        assert tuple(s) not in exclude and 1 <= len(s) <= longest and set(s) <= symbols
        # an order-3 model only makes trigrams seen in training (with the start/end context)
        padded = ["^", "^"] + s
        seen = {tuple(["^", "^"] + w)[i:i + 3] for w in WORDS for i in range(len(w))}
        assert all(tuple(padded[i:i + 3]) in seen for i in range(len(s)))


def test_ngram_sources_cannot_invent_what_a_long_context_pins_down():
    # order 7 on one word: the only continuation of every context is the word itself, which is excluded
    assert ngram_sources([list("banana")], 10, 7, seed=0, exclude={tuple("banana")}) == []
    assert ngram_sources([], 10, 3, seed=0, exclude=set()) == []
    with pytest.raises(ValueError, match="order must be >= 1"):
        ngram_sources(WORDS, 5, 0, seed=0, exclude=set())
    unigram = ngram_sources(WORDS, 20, 1, seed=0, exclude={tuple(w) for w in WORDS})  # no context at all
    assert len(unigram) == 20 and all(set(s) <= set("abcdln") for s in unigram)


def _split_task(held_out=None) -> Seq2SeqTask:
    words = {"train": ["banana", "cabana", "canal", "nab", "anna"], "val": ["bandana"], "test": ["banal"]}
    splits = {name: Pairs([list(w) for w in ws], [[c.upper() for c in w] for w in ws], ws)
              for name, ws in words.items()}
    return Seq2SeqTask(splits, SymbolVocab.build(splits["train"].sources), SymbolVocab.build(splits["train"].targets),
                       "cpu", held_out=held_out)


def test_extra_sources_never_include_training_validation_or_test_sources(tmp_path):
    path = tmp_path / "unlabeled.txt"
    path.write_text("banana\nbandana\nbanal\ncab\nCab\nlana\ncab\n", encoding="utf-8")
    task = _split_task()
    sources, info, warnings = collect_extra_sources(task, 0, 3, str(path), seed=0)
    # banana (train), bandana (val), banal (test) dropped; Cab has a symbol training never uses; cab kept once
    assert sources == [list("cab"), list("lana")] and info["from_file"] == 2 and info["file_unknown_symbols"] == 1
    assert any("1 sources use symbols the training sources never do" in w for w in warnings)
    # the whole test pool counts, not only the part a data.limit_test run reports on
    pooled = _split_task(held_out={tuple("banal"), tuple("lana")})
    assert collect_extra_sources(pooled, 0, 3, str(path), seed=0)[0] == [list("cab")]
    made_up, info, _ = collect_extra_sources(task, 15, 2, None, seed=0)
    forbidden = {tuple(w) for w in ["banana", "cabana", "canal", "nab", "anna", "bandana", "banal"]}
    assert made_up and not forbidden & {tuple(s) for s in made_up} and info["made_up"] == len(made_up)
    path.write_text("banana\nbanal\n", encoding="utf-8")
    with pytest.raises(DataError, match="extra_sources: no new sources"):
        collect_extra_sources(task, 0, 3, str(path), seed=0)


def test_file_sources_tokenize_skip_known_and_repeated_lines(tmp_path):
    path = tmp_path / "unlabeled.txt"
    path.write_text("zebra\n\nbanana\nzebra\n  quokka \n", encoding="utf-8")
    assert file_sources(path, "chars", {tuple("banana")}) == [list("zebra"), list("quokka")]
    assert file_sources(path, "whitespace", set()) == [["zebra"], ["banana"], ["quokka"]]
    with pytest.raises(DataError, match="extra_sources.file: .*missing.txt not found"):
        file_sources(tmp_path / "missing.txt", "chars", set())
    assert source_key(list("zebra"), "chars") == "zebra" and source_key(["a", "b"], "whitespace") == "a b"


def test_extra_outputs_add_one_pair_per_new_source_and_ignore_training_ones():
    train = Pairs([list("ab")], [["B", "A"]], ["ab"])
    outputs = TeacherOutputs("x", Path("unused"), {"ab": [["B", "B"]]}, 1, None)
    extra = TeacherOutputs("y", Path("unused"), {"ba": [["A", "B"]], "ab": [["Z"]], "c": [[]]}, 1, None)
    pairs, info = training_pairs(train, outputs, "seq", extra=extra)
    assert list(zip(pairs.keys, pairs.sources, pairs.targets)) == [("ab", ["a", "b"], ["B", "B"]),
                                                                  ("ba", ["b", "a"], ["A", "B"])]
    assert info["extra_pairs"] == 1 and info["original_pairs"] == 1
    # a key spelled differently but tokenizing to a training source is that source: not an extra pair
    spaced = TeacherOutputs("z", Path("unused"), {"a b": [["Q"]]}, 1, None)
    assert training_pairs(train, outputs, "seq", extra=spaced)[1]["extra_pairs"] == 0
    words, _ = training_pairs(Pairs([["hi"]], [["H"]], ["hi"]), TeacherOutputs("x", Path("u"), {}, 1, None), "seq",
                              extra=TeacherOutputs("y", Path("u"), {"good day": [["G", "D"]]}, 1, None),
                              tokenization="whitespace")
    assert words.sources[-1] == ["good", "day"] and words.targets[-1] == ["G", "D"]


def test_teacher_decodes_extra_sources_like_training_ones_and_reuses_them(tmp_path):
    task = _task(200)
    teacher = _train(_model(task), task, steps=40)
    sources = [list("abc"), list("hgfedc"), list("d")]
    logs: list[str] = []
    out = build_or_load_outputs(tmp_path, "fx", task, teacher, beam=1, n_best=1, log=logs.append, sources=sources)
    ids = [task.src_vocab.encode(s, bos=False, eos=False) for s in sources]
    for s, i in zip(sources, ids):  # one at a time, no padding: the batched, length-sorted decode must agree
        with torch.no_grad():
            best = greedy(teacher, torch.tensor([i]), torch.tensor([len(i)]), task.max_len)[0]
        assert out.nbest["".join(s)] == [task.tgt_vocab.decode(best)]
    assert out.path.name == "seq-extra-fx.json" and out.build_s is not None
    again = build_or_load_outputs(tmp_path, "fx", task, None, beam=1, n_best=1, log=logs.append, sources=sources)
    assert again.build_s is None and again.nbest == out.nbest and "reusing the teacher's decoded extra" in logs[-1]


def test_recipe_errors_for_extra_sources():
    from leankd.recipe import Recipe

    base = {"teacher": {"model": "seq2seq_rnn"}, "student": {"model": "seq2seq_rnn"},
            "data": {"task": "seq2seq", "source": "cmudict"}}
    with pytest.raises(ValueError, match=r"\['seq\+extra'\] train on extra sources, but distill.seq.extra_sources"):
        Recipe(**base, distill={"seq": {"students": ["seq", "seq+extra"]}})
    with pytest.raises(ValueError, match="extra_sources is set but no student uses it: add seq\\+extra"):
        Recipe(**base, distill={"seq": {"students": ["seq"], "extra_sources": {"count": 10}}})
    with pytest.raises(ValueError, match="extra_sources gives no sources: set count"):
        Recipe(**base, distill={"seq": {"students": ["seq+extra"], "main": "seq+extra", "extra_sources": {}}})
    with pytest.raises(ValueError, match="extra_sources.file: .*nowhere.txt not found"):
        Recipe(**base, distill={"seq": {"students": ["seq+extra"], "main": "seq+extra",
                                        "extra_sources": {"file": "/nowhere.txt"}}})
    ok = Recipe(**base, distill={"seq": {"students": ["seq+extra"], "main": "seq+extra",
                                         "extra_sources": {"count": 10, "order": 3}}})
    assert ok.distill.seq.extra_sources.order == 3
