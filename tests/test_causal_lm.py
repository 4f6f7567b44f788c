"""The causal_lm task kind: reading and splitting a corpus, the three tokenizers, packing into blocks (targets are the
next tokens, cache rows are token positions), evaluation batch by batch, and the errors a user meets first."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from leankd.core.task import evaluate
from leankd.data.lm import CharTokenizer, HFTokenizer, read_corpus, split_text
from leankd.errors import DataError, ModelError, RecipeError
from leankd.recipe import parse_recipe
from leankd.tasks.causal_lm import build_lm_task

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(300))


class Bigram(nn.Module):
    """A causal LM by construction: each position's logits depend on its own token only."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.emb(ids)


def _data(tmp_path, text=TEXT, name="corpus.txt", **lm):
    path = tmp_path / name
    path.write_text(text)
    recipe = parse_recipe({"data": {"task": "causal_lm", "source": str(path), "val_fraction": 0.1,
                                    "lm": {"context": 16, **lm}},
                           "teacher": {"model": "resnet8"},
                           "student": {"model": "resnet8"}})
    return recipe.data


def test_splits_are_contiguous_in_order_and_cover_the_text():
    parts = split_text(TEXT, 0.1, 0.05)
    assert parts["train"] + parts["val"] + parts["test"] == TEXT
    assert len(parts["val"]) == pytest.approx(0.1 * len(TEXT), abs=1)
    assert TEXT.endswith(parts["test"]) and TEXT.startswith(parts["train"])


def test_read_corpus_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "beta"}) + "\n\n" + json.dumps({"body": "gamma"}) + "\n")
    assert read_corpus(str(tmp_path / "a.txt"))[0] == "alpha\n"
    assert read_corpus(str(tmp_path / "b.jsonl"), column="body")[0] == "beta\n\ngamma"
    text, files = read_corpus(str(tmp_path), column="body")
    assert text == "alpha\n\n\nbeta\n\ngamma" and [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.jsonl"]


def test_corpus_errors_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        read_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON.*format: txt"):
        read_corpus(str(tmp_path / "bad.jsonl"))
    (tmp_path / "col.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"no 'text' key \(found \['body'\]\); set data.lm.text_column"):
        read_corpus(str(tmp_path / "col.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        read_corpus(str(tmp_path / "missing.txt"))


def test_char_tokenizer_round_trip_and_unknown_symbol_only_when_needed():
    tok = CharTokenizer.fit("abca", ["ab"])
    assert tok.symbols == ["a", "b", "c"] and tok.decode(tok.encode("cab")) == "cab"
    with_unknown = CharTokenizer.fit("abc", ["abz"])
    assert with_unknown.size == 4 and with_unknown.decode(with_unknown.encode("zb")) == "\ufffdb"


def test_bpe_is_fitted_on_the_training_part_and_a_saved_folder_reads_back(tmp_path):
    tok = HFTokenizer.train_bpe(TEXT, 300)
    assert tok.size == 300
    assert tok.decode(tok.encode("the lazy dog\n")) == "the lazy dog\n"
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges were learned
    other = HFTokenizer.train_bpe(TEXT.replace("fox", "cat"), 300)
    assert other.identity() != tok.identity()
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(folder / "tokenizer.json")
    data = _data(tmp_path, tokenizer=str(folder))
    task = build_lm_task(data, torch.device("cpu"), 0)
    assert task.num_classes == 300 and task.info["tokenizer_id"] == tok.identity()


def test_blocks_targets_are_next_tokens_and_cache_rows_are_their_positions(tmp_path):
    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    train = task.splits["train"]
    assert len(train) == (train.tokens - 1) // 16 and task.cache_size() == len(train) * 16
    batch = next(task.train_batches(0, 4, seed=0))
    assert batch.inputs.shape == (4, 16) and batch.targets.shape == (64,) and batch.size == 64
    targets = batch.targets.view(4, 16)
    assert torch.equal(targets[:, :-1], batch.inputs[:, 1:])  # shifted by one
    rows = task.cache_rows(batch.index)
    assert torch.equal(train.ids[rows + 1], batch.targets) and torch.equal(train.ids[rows], batch.inputs.reshape(-1))
    # every block once, in order, in the view the cache labels
    seen = torch.cat([b.index for b in task.view_batches(0, 0, 5)])
    assert torch.equal(seen, torch.arange(len(train)))
    # a torchrun share / micro-batch keeps each block with its own targets
    halves = [task.shard_batch(batch, p, 2) for p in range(2)]
    assert torch.equal(torch.cat([h.targets for h in halves]), batch.targets)
    assert all(torch.equal(h.targets.view(-1, 16)[:, :-1], h.inputs[:, 1:]) for h in halves)


def test_epochs_reshuffle_blocks_but_a_seed_replays(tmp_path):
    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    first = [b.index for b in task.train_batches(0, 4, seed=3)]
    assert all(torch.equal(a, b.index) for a, b in zip(first, task.train_batches(0, 4, seed=3)))
    assert not all(torch.equal(a, b.index) for a, b in zip(first, task.train_batches(1, 4, seed=3)))


def test_evaluation_batch_by_batch_equals_the_whole_split_at_once(tmp_path):
    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    torch.manual_seed(0)
    model = Bigram(task.num_classes)
    got = evaluate(model, task, "val", batch_size=3)
    logits = torch.cat([model(b.inputs).reshape(-1, task.num_classes) for b in task.eval_batches("val", 100)])
    targets = torch.cat([b.targets for b in task.eval_batches("val", 100)])
    loss = float(nn.functional.cross_entropy(logits, targets).detach())
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["bpc"] == pytest.approx(loss / math.log(2), rel=1e-5)  # characters: one token per character
    assert got["num_samples"] == len(targets)
    assert got["accuracy"] == pytest.approx(float((logits.argmax(-1) == targets).float().mean()))


def test_bits_per_character_count_characters_not_tokens(tmp_path):
    task = build_lm_task(_data(tmp_path, tokenizer="bpe", vocab_size=300), torch.device("cpu"), 0)
    model = Bigram(task.num_classes)
    got = evaluate(model, task, "val")
    val = task.splits["val"]
    assert got["bpc"] == pytest.approx(got["loss"] * val.tokens / val.chars / math.log(2), rel=1e-6)
    assert val.tokens < val.chars


def test_a_context_longer_than_a_part_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"data.lm.context is 2000 tokens, but the val part .* raise "
                                        r"data.val_fraction"):
        build_lm_task(_data(tmp_path, context=2000), torch.device("cpu"), 0)


def test_models_that_are_not_causal_lms_of_this_vocabulary_are_refused(tmp_path):
    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    task.prepare_model(Bigram(task.num_classes))  # fine

    class Classifier(nn.Module):
        def forward(self, ids):
            return torch.zeros(ids.shape[0], 3)

    with pytest.raises(ModelError, match="not a causal language model"):
        task.prepare_model(Classifier())
    with pytest.raises(ModelError, match=rf"vocabulary has 7 tokens, .* {task.num_classes}: teacher and student "
                                         "must share the data's tokenizer"):
        task.prepare_model(Bigram(7))
    with pytest.raises(ModelError, match=r"a larger, padded vocabulary is accepted from a causal-LM checkpoint"):
        task.prepare_model(Bigram(task.num_classes + 3))  # not a CausalLM: nothing says its extra rows are padding


def test_a_causal_lm_padded_past_the_tokenizer_is_trimmed_to_it(tmp_path):
    from leankd.models import create_model

    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    model = create_model("gpt", task.num_classes + 5, context=16, layers=1, hidden=16, heads=2)
    task.prepare_model(model)
    assert model.vocab_used == task.num_classes
    x = torch.zeros(2, 16, dtype=torch.long)
    assert task.forward(model, x).shape == (32, task.num_classes)


def test_recipe_rules(tmp_path):
    with pytest.raises(RecipeError, match="data.lm is for data.task: causal_lm"):
        parse_recipe({"data": {"source": "demo", "lm": {"context": 8}}, "teacher": {"model": "resnet8"},
                      "student": {"model": "resnet8"}})
    with pytest.raises(RecipeError, match="neither chars, bpe nor a Hugging Face tokenizer folder"):
        _data(tmp_path, tokenizer=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="demo is an image set"):
        build_lm_task(parse_recipe({"data": {"task": "causal_lm"}, "teacher": {"model": "resnet8"},
                                    "student": {"model": "resnet8"}}).data, torch.device("cpu"), 0)


# sequence-level and on-policy KD: the data steps -------------------------------------------------------------------
def test_extra_blocks_join_the_training_blocks_for_the_same_steps(tmp_path):
    from leankd.tasks.causal_lm import CausalLMTask

    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    n = len(task.splits["train"])
    windows = torch.randint(0, task.num_classes, (5, 17))
    mixed = task.with_extra_blocks(windows)
    assert isinstance(mixed, CausalLMTask) and len(mixed.splits["train"]) == n + 5
    assert mixed.steps_per_epoch(4) == task.steps_per_epoch(4)
    extra = mixed.splits["train"].batch(torch.arange(n, n + 5))
    assert torch.equal(extra.inputs, windows[:, :-1]) and torch.equal(extra.targets, windows[:, 1:].reshape(-1))
    assert len(task.splits["train"]) == n  # the original task is unchanged


def test_on_policy_batches_keep_the_prompt_and_mask_it_and_replay_for_a_seed(tmp_path):
    from leankd.lm.onpolicy import Policy

    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    torch.manual_seed(0)
    model = Bigram(task.num_classes)
    policy = Policy(model, fraction=1.0, prompt_tokens=4)
    batch = next(task.train_batches(0, 3, seed=0))
    out = policy(batch, epoch=0, step=0, seed=0)
    assert out.inputs.shape == batch.inputs.shape and torch.equal(out.inputs[:, :4], batch.inputs[:, :4])
    assert not torch.equal(out.inputs, batch.inputs)  # the rest was sampled
    targets = out.targets.view(3, 16)
    assert (targets[:, :3] == -100).all() and torch.equal(targets[:, 3:-1], out.inputs[:, 4:])
    again = Policy(model, fraction=1.0, prompt_tokens=4)(batch, epoch=0, step=0, seed=0)
    assert torch.equal(again.inputs, out.inputs)
    half = Policy(model, fraction=0.5, prompt_tokens=4)
    task.with_policy(half)
    rewritten = sum(not torch.equal(b.inputs, o.inputs) for b, o in
                    zip(task.train_batches(0, 2, 0), task.with_policy(half).train_batches(0, 2, 0)))
    assert half.rewritten == rewritten and 0 < half.rewritten < half.batches
    assert half.stats()["on_policy_batches"] == half.rewritten


def test_lm_student_settings_are_checked_when_the_recipe_is_read(tmp_path):
    base = {"data": {"task": "causal_lm", "source": str(tmp_path), "lm": {"context": 32}},
            "teacher": {"model": "gpt"}, "student": {"model": "gpt"}}
    with pytest.raises(RecipeError, match="prompt_tokens = 32 leaves nothing to generate"):
        parse_recipe({**base, "distill": {"lm": {"students": ["seq"], "prompt_tokens": 32}}})
    with pytest.raises(RecipeError, match="on_policy needs a divergence"):
        parse_recipe({**base, "distill": {"loss": [{"kind": "mse"}, {"kind": "ce"}], "lm": {"students": ["on_policy"]}}})
    with pytest.raises(RecipeError, match="distill.lm is for data.task: causal_lm"):
        parse_recipe({"data": {"source": "demo"}, "teacher": {"model": "resnet8"}, "student": {"model": "resnet8"},
                      "distill": {"lm": {"students": ["seq"]}}})


def test_on_policy_loss_scores_generated_rows_only_whatever_its_terms(tmp_path):
    """With the alpha-mix (`kd`, which averages over every row) the prompt rows of an on-policy batch must still not
    count: the on-policy loss drops them before any term sees them."""
    from leankd.kd.losses import LossInputs
    from leankd.lm.stages import divergence_loss

    r = parse_recipe({"data": {"task": "causal_lm", "source": str(tmp_path), "lm": {"context": 32}},
                      "teacher": {"model": "gpt"}, "student": {"model": "gpt"}, "distill": {"alpha": 0.5}})
    loss = divergence_loss(r.distill, 0.0)
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    targets = torch.tensor([-100, -100, 1, 2, 3, 4])
    whole = loss(LossInputs(s, targets, t))
    generated = loss(LossInputs(s[2:], targets[2:], t[2:]))
    assert float(whole) == pytest.approx(float(generated)) and loss.describe() == "0.5*kd(T=1)"
    assert float(whole) != pytest.approx(float(loss.inner(LossInputs(s, targets, t))))  # kd alone would count them


def test_large_vocabularies_get_smaller_evaluation_batches(tmp_path, monkeypatch):
    import leankd.tasks.causal_lm as lm

    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    assert task._blocks_per_batch(256) == 256
    monkeypatch.setattr(lm, "LOGIT_BUDGET", 16 * task.num_classes * 3)  # room for 3 blocks of logits
    assert [len(b.index) for b in task.eval_batches("val", 256)][:2] == [3, 3]


def test_seq_continuations_are_reused_and_stale_ones_pruned_only_after_the_new_set_is_complete(tmp_path):
    """`lm/seqkd.continuations`: a fingerprint's windows are built once and read back; when the fingerprint changes
    (another teacher) the old set is removed — but only after the new one is written, and never in a shared
    cache_dir (prune=False)."""
    from leankd.lm.seqkd import continuations

    built = []

    def build(value):
        def make():
            built.append(value)
            if value == "boom":
                raise RuntimeError("generation failed")
            return torch.full((3, 5), value, dtype=torch.int32)
        return make

    w, info = continuations(tmp_path, "aaaa", build(1), log=lambda m: None)
    assert torch.equal(w, torch.ones(3, 5, dtype=torch.long)) and not info["reused"] and info["sequences"] == 3
    w, info = continuations(tmp_path, "aaaa", build(9), log=lambda m: None)
    assert info["reused"] and built == [1] and int(w.max()) == 1
    with pytest.raises(RuntimeError):  # a failed build of a new teacher's set leaves the old set in place
        continuations(tmp_path, "bbbb", build("boom"), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm-seq-aaaa.json", "lm-seq-aaaa.safetensors"]
    logs = []
    continuations(tmp_path, "bbbb", build(2), log=logs.append, prune=False)  # shared cache_dir: both kept
    assert len(list(tmp_path.glob("lm-seq-*"))) == 4
    w, _ = continuations(tmp_path, "cccc", build(3), log=logs.append)
    assert int(w.max()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm-seq-cccc.json", "lm-seq-cccc.safetensors"]
    assert any("removed stale" in m and "lm-seq-aaaa" in m for m in logs)
