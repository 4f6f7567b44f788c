"""Word-level text students (Tang et al.'s BiLSTM, Kim's CNN) beside a sub-word teacher: the word vocabulary, several
tokenizations of one dataset, augmentation for distillation, cross-entropy that skips unlabeled texts, and a
BiLSTM that distils from cached teacher outputs alone. Tiny random-weight BERTs only: nothing is downloaded."""
import json

import pytest
import torch
import torch.nn.functional as F

from leankd.data.text_augment import AugmentSettings, augment_texts
from leankd.data.words import MASK, WordVocab, split_words
from leankd.errors import LeanKDError, ModelError
from leankd.kd.losses import CE, UNLABELED, LossInputs, mix
from leankd.models import create_model
from leankd.recipe import parse_recipe
from leankd.tasks import build_task

pytest.importorskip("transformers")
from test_text import tiny_bert, write_sst2_like  # noqa: E402


# ---------------------------------------------------------------------------------------------- vocabulary
def test_word_vocabulary_orders_by_frequency_and_maps_unknowns():
    vocab = WordVocab.build(["The movie , the END", "it 's the movie"], min_freq=1)
    assert vocab.words[:4] == ["<pad>", "<unk>", "[MASK]", "<sep>"]
    assert vocab.words[4:7] == ["the", "movie", "'s"]  # 3x, 2x, then ties alphabetically
    assert vocab.ids("the UNSEEN movie") == [4, 1, 5]
    assert vocab.ids("the", pair="movie") == [4, 3, 5]  # the pair follows the separator
    assert vocab.ids("") == [1]  # an empty text is one unknown word, never a zero-length row
    long = WordVocab.build(["a b c d e f g h x y"])
    ids = long.ids("a b c d e f g h", pair="x y", max_length=6)  # cut longest first: both sentences survive
    assert len(ids) == 6 and ids[3] == 3 and ids[4:] == long.ids("x y")
    assert split_words(f"a {MASK} b!") == ["a", MASK, "b", "!"]
    assert len(WordVocab.build(["a a b c"], min_freq=2)) == 5  # b and c seen once
    assert len(WordVocab.build(["a a b c"], max_size=5)) == 5


def test_vocabulary_round_trips_through_its_file(tmp_path):
    vocab = WordVocab.build(["good film", "bad film"])
    vocab.save(tmp_path / "v.txt")
    assert WordVocab.load(tmp_path / "v.txt").words == vocab.words


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_seeded_and_never_repeats_a_text():
    texts = ["a b c d e f", "g h i j", "k l m n o"]
    s = AugmentSettings(copies=6, mask=0.2, dropout=0.1, ngram=0.3, ngram_max=3)
    first = augment_texts(texts, None, s, seed=1)
    assert first == augment_texts(texts, None, s, seed=1) and first != augment_texts(texts, None, s, seed=2)
    new, pairs, sources = first
    assert pairs is None and len(new) == len(sources) > 0
    assert len(set(new)) == len(new) and not set(new) & set(texts)  # no repeats, no unchanged copies
    for text, src in zip(new, sources):  # every word is the source's own (in order) or a mask
        words = [w for w in text.split() if w != MASK]
        original = texts[src].split()
        assert all(w in original for w in words)
        assert [original.index(w) for w in words] == sorted(original.index(w) for w in words)


def test_augmentation_rules_one_at_a_time():
    texts = ["one two three four five six"]
    masked, _, _ = augment_texts(texts, None, AugmentSettings(copies=1, mask=1.0, dropout=0, ngram=0), 0)
    assert masked == [" ".join([MASK] * 6)]
    cut, _, _ = augment_texts(texts, None, AugmentSettings(copies=30, mask=0, dropout=0, ngram=1.0, ngram_max=2), 0)
    assert cut and all(1 <= len(t.split()) <= 2 and t in texts[0] for t in cut)  # contiguous n-grams
    empty, _, _ = augment_texts(texts, None, AugmentSettings(copies=3, mask=0, dropout=1.0, ngram=0), 0)
    assert empty == []  # every word dropped: nothing left to keep
    new, pairs, src = augment_texts(["a b", "c d"], ["x y", "z w"], AugmentSettings(copies=4, mask=0.5), 0)
    assert len(pairs) == len(new) == len(src) and all(p for p in pairs)


def test_augment_recipe_errors():
    base = {"teacher": {"model": "resnet20"}, "student": {"model": "resnet20"}}
    # the section belongs to the text task kinds (TaskKind.distill_sections); the image kind's hint says what it has
    with pytest.raises(LeanKDError, match="distill.augment is for data.task: text_classification or text_regression, "
                                          "not 'image_classification': remove it \\(images and audio augment"):
        parse_recipe({**base, "distill": {"augment": {"copies": 2}}})
    with pytest.raises(LeanKDError, match="teacher.checkpoint loads a trained teacher"):
        parse_recipe({**base, "teacher": {"model": "resnet20", "checkpoint": "t.safetensors", "limit_train": 10}})
    base["data"] = {"task": "text_classification", "source": "x", "text": {"tokenizer": "t"}}
    with pytest.raises(LeanKDError, match="mask, dropout and ngram are all 0"):
        parse_recipe({**base, "distill": {"augment": {"mask": 0, "dropout": 0, "ngram": 0}}})
    with pytest.raises(LeanKDError, match="mask \\+ dropout = 1.2 > 1"):
        parse_recipe({**base, "distill": {"augment": {"mask": 0.6, "dropout": 0.6}}})


# ---------------------------------------------------------------------------------------------- loss
def test_ce_skips_unlabeled_examples_but_divides_by_the_whole_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.5]])
    targets = torch.tensor([0, UNLABELED, 1, UNLABELED])
    by_hand = (-F.log_softmax(logits[0], -1)[0] - F.log_softmax(logits[2], -1)[1]) / 4
    assert float(CE()(LossInputs(logits, targets))) == pytest.approx(float(by_hand), rel=1e-6)
    none = torch.full((4,), UNLABELED)
    leaf = logits.clone().requires_grad_()
    value = CE()(LossInputs(leaf, none))
    assert float(value.detach()) == 0.0
    value.backward()  # still a graph: a batch of augmented texts only trains through KD
    assert torch.equal(leaf.grad, torch.zeros_like(leaf))
    labeled = torch.tensor([0, 1, 1, 0])
    assert float(CE()(LossInputs(logits, labeled))) == pytest.approx(float(F.cross_entropy(logits, labeled)))
    loss = mix(alpha=0.5, temperature=1.0)  # KD still sees every row
    teacher = torch.zeros(4, 2)
    kd_only = 0.5 * float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True,
                                   reduction="batchmean"))
    assert float(loss(LossInputs(logits, none, teacher=teacher))) == pytest.approx(kd_only, rel=1e-6)


# ---------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name,kwargs", [("text_bilstm", {}), ("text_bilstm", {"pooling": "last"}),
                                         ("text_cnn", {})])
def test_word_students_give_the_same_logits_alone_and_in_a_padded_batch(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, vocab_size=50, embed_dim=16, **kwargs).eval()
    ids = torch.randint(4, 50, (3, 9))
    lengths = torch.tensor([9, 5, 1])
    for i, n in enumerate(lengths.tolist()):
        ids[i, n:] = 0
    with torch.no_grad():
        batch = model(ids, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(ids[i:i + 1, :n], lengths[i:i + 1])
            assert torch.allclose(alone[0], batch[i], atol=1e-5)
    with pytest.raises(ModelError, match="needs keyword\\(s\\) 'vocab_size'"):
        create_model(name, num_classes=3)


# ---------------------------------------------------------------------------------------------- task
def _recipe(tmp_path, student="text_bilstm", **extra):
    folder = write_sst2_like(tmp_path / "sst")
    ckpt = tiny_bert(tmp_path / "bert")
    spec = {"data": {"source": str(folder), "task": "text_classification", "eval_split": "val"},
            "teacher": {"model": f"hf:{ckpt}"},
            "student": {"model": student, "kwargs": {"embed_dim": 16, "hidden": 16, "mlp": 16}
                        if student == "text_bilstm" else {}},
            "train": {"epochs": 1, "batch_size": 8}}
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value}
    return parse_recipe(spec)


def test_a_word_student_reads_its_own_tokenization_of_the_same_rows(tmp_path):
    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    teacher = create_model(r.teacher.model, num_classes=2)
    student = create_model("text_bilstm", num_classes=2, **task.model_defaults())
    batch = next(task.eval_batches("val", 4))
    with pytest.raises(ModelError, match="has not prepared: call task.prepare_model"):
        task.forward(student, batch.inputs)
    task.prepare_model(student)
    task.prepare_model(teacher)  # the data's own tokenizer: nothing new
    assert set(task.encodings) == {task.primary, "words"} and not task.same_inputs(teacher, student)
    batch = next(task.eval_batches("val", 4))
    words = task.model_inputs(student, batch.inputs)
    assert set(words) == {"word_ids", "word_lengths"}
    vocab = task.vocabulary()
    for row, i in enumerate(batch.index.tolist()):
        n = int(words["word_lengths"][row])
        assert words["word_ids"][row, :n].tolist() == vocab.ids(task.splits["val"].texts[i])
    assert task.forward(student, batch.inputs).shape == (4, 2) == task.forward(teacher, batch.inputs).shape
    # a second checkpoint folder with the same tokenizer files shares the tokenization
    other = tiny_bert(tmp_path / "bert2", layers=2, seed=3)
    twin = create_model(f"hf:{other}", num_classes=2)
    task.prepare_model(twin)
    assert len(task.encodings) == 2 and task.same_inputs(teacher, twin)


def test_transfer_set_adds_unlabeled_texts_and_keeps_the_vocabulary(tmp_path):
    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    student = create_model("text_bilstm", num_classes=2, **task.model_defaults())
    task.prepare_model(student)
    kd = task.with_transfer_set(AugmentSettings(copies=3), seed=0)
    n, extra = task.split_size("train"), kd.transfer_set["augmented"]
    assert kd.transfer_set["original"] == n and extra > n  # 3 tries per text, a few repeats dropped
    assert kd.split_size("train") == n + extra and kd.split_size("val") == task.split_size("val")
    labels = kd.splits["train"].labels
    assert torch.equal(labels[:n], task.splits["train"].labels) and bool((labels[n:] == UNLABELED).all())
    assert kd.vocabulary().words == task.vocabulary().words  # augmented texts add no words
    assert len(kd.encodings[kd.primary]["train"]) == len(kd.encodings["words"]["train"]) == n + extra
    masked = next(i for i in range(n, n + extra) if MASK in kd.splits["train"].texts[i])
    assert 4 in kd.encodings[kd.primary]["train"].ids[masked].tolist()  # one [MASK] token for BERT (id 4)
    assert 2 in kd.encodings["words"]["train"].ids[masked].tolist()  # ... and for the word vocabulary
    assert task.split_size("train") == n  # the original task is untouched


# ---------------------------------------------------------------------------------------------- end to end
def test_bilstm_distils_from_cached_teacher_outputs_alone(tmp_path, monkeypatch):
    """The teacher labels the training and augmented texts once; the BiLSTM's KD stage never runs it."""
    from leankd.kd import cache as cache_module
    from leankd.kd.teacher import LiveTeacher
    from leankd.pipeline import Pipeline

    built = {"done": False}
    real_build, real_call = cache_module.build_or_load, LiveTeacher.__call__

    def build_then_forbid(*args, **kwargs):
        out = real_build(*args, **kwargs)
        built["done"] = True
        return out

    def call(self, batch):
        assert not built["done"], "the live teacher ran after its outputs were cached"
        return real_call(self, batch)

    monkeypatch.setattr(cache_module, "build_or_load", build_then_forbid)
    monkeypatch.setattr(LiveTeacher, "__call__", call)
    r = _recipe(tmp_path, teacher={"cache": True}, distill={"augment": {"copies": 2}},
                compress={"targets": ["int8-dynamic", "onnx"]})
    run = tmp_path / "run"
    pipeline = Pipeline(r, run, quiet=True)
    report = pipeline.run()
    assert built["done"] and not pipeline.failed_targets
    models = report["models"]
    transfer = models["student"]["training"]["transfer_set"]
    cache = models["student"]["training"]["teacher_cache"]
    assert cache["samples"] == transfer["original"] + transfer["augmented"] and transfer["original"] == 96
    assert any(f"plus {transfer['augmented']} augmented" in n for n in report["notes"])
    assert models["baseline"]["training"].get("transfer_set") is None
    vocab = WordVocab.load(run / "word_vocab.txt")
    assert models["student"]["cost"]["params"] > 16 * len(vocab)  # the embedding is the student's own vocabulary
    for role in ("student_int8_dynamic", "student_onnx"):
        assert models[role]["artifact"]["max_abs_diff"] < 0.05, role
    assert models["student_int8_dynamic"]["artifact"]["quantized"]  # the LSTMs and Linears run in int8
    assert json.loads((run / "report.json").read_text())["models"]["student"]["quality"]["num_samples"] == 32


def test_layer_losses_need_the_same_tokens(tmp_path):
    from leankd.errors import RecipeError
    from leankd.pipeline import Pipeline

    r = _recipe(tmp_path, distill={"features": [{"kind": "hint", "pairs": [["embed", "hf.bert.embeddings"]]}]})
    with pytest.raises(RecipeError, match="another tokenizer than the teacher.*logit KD works across vocabularies"):
        Pipeline(r, tmp_path / "run", quiet=True).run()


# ---------------------------------------------------------------------------------------------- vocabulary trimming
def test_vocab_trim_keeps_training_tokens_exactly_and_maps_the_rest_to_unk(tmp_path):
    from leankd.compress.targets import build_artifact

    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    model = create_model(r.teacher.model, num_classes=2, layers=2).eval()
    task.prepare_model(model)
    art = build_artifact("vocab-trim", model, task, tmp_path / "out")
    trimmed = art.runnable
    keep, unk = task.tokens_in_use(model)
    vocab = model.hf.get_input_embeddings().num_embeddings
    assert trimmed.kept_tokens == len(keep) < vocab and art.path.exists()
    n_params = sum(p.numel() for p in trimmed.parameters())
    assert n_params == sum(p.numel() for p in model.parameters()) - (vocab - len(keep)) * 32 == art.params
    with torch.no_grad():
        for batch in task.eval_batches("train", 16):  # every training token kept: identical logits
            assert torch.equal(task.forward(trimmed, batch.inputs), task.forward(model, batch.inputs))
        unseen = torch.tensor([[2, 29, 30, 5, 3]])  # [CLS] what who good [SEP]: 'what'/'who' never in training
        assert not set(unseen[0].tolist()) <= set(keep.tolist())
        as_unk = torch.where(torch.isin(unseen, keep), unseen, torch.tensor(unk))
        mask = torch.ones_like(unseen)
        assert torch.allclose(trimmed(unseen, mask), model(as_unk, mask), atol=1e-6)
    both = build_artifact("vocab-trim-int8", model, task, tmp_path / "out")
    assert both.quantized and both.path.exists()
    bilstm = create_model("text_bilstm", num_classes=2, embed_dim=8, hidden=8, mlp=8, **task.model_defaults())
    task.prepare_model(bilstm)
    with pytest.raises(ModelError, match="word-level student's vocabulary already"):
        build_artifact("vocab-trim", bilstm, task, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- narrower students
def test_narrower_transformer_student_distils_through_learned_projections(tmp_path):
    """Half the teacher's width: pretrained weights cannot be copied (a clear error says so); from random weights
    the TinyBERT hidden-state loss learns a 16 -> 32 projection and MiniLM's losses need none."""
    from leankd.kd.registry import feature_loss
    from leankd.kd.losses import KD
    from leankd.kd.teacher import LiveTeacher
    from leankd.recipe import TrainConfig
    from leankd.train.loop import fit

    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    narrow = {"hidden_size": 16, "intermediate_size": 32}
    with pytest.raises(ModelError, match="change weight shapes.*pretrained: false"):
        create_model(r.teacher.model, num_classes=2, layers=2, config=narrow)
    torch.manual_seed(0)
    teacher = create_model(r.teacher.model, num_classes=2)
    student = create_model(r.teacher.model, num_classes=2, layers=2, pretrained=False, config=narrow)
    hidden = [("hf.bert.embeddings", "hf.bert.embeddings"), ("hf.bert.encoder.layer.1", "hf.bert.encoder.layer.3")]
    attention = [("hf.bert.encoder.layer.1.attention.self", "hf.bert.encoder.layer.3.attention.self")]
    loss = KD(2.0) + feature_loss("hidden_mse", hidden) + feature_loss("minilm", attention)
    result = fit(student, task, TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=3e-3), loss=loss,
                 teacher=LiveTeacher(teacher, task))
    losses = [row["train_loss"] for row in result.history]
    assert all(v == v for v in losses) and losses[1] < losses[0]
    adapters = [m for m in loss.modules() if isinstance(m, torch.nn.Linear)]
    assert len(adapters) == 2 and all((a.in_features, a.out_features) == (16, 32) for a in adapters)


# ---------------------------------------------------------------------------------------------- teacher subset
def test_teacher_fine_tunes_on_a_subset_and_students_on_everything(tmp_path, monkeypatch):
    import leankd.stages as stages_module
    from leankd.pipeline import Pipeline
    from leankd.tasks.base import TensorTask

    sizes = {}
    real_fit = stages_module.fit

    def spy(model, task, cfg, **kwargs):
        sizes[kwargs["checkpoint_path"].parent.name] = (task.split_size("train"), task.splits["train"].labels.sum())
        return real_fit(model, task, cfg, **kwargs)

    monkeypatch.setattr(stages_module, "fit", spy)
    r = _recipe(tmp_path, teacher={"limit_train": 40, "cache": True})
    report = Pipeline(r, tmp_path / "run", quiet=True).run()
    n = sizes["teacher"][0]
    assert abs(n - 40) <= 1 and sizes["baseline"][0] == sizes["student"][0] == 96  # per-class rounding
    assert abs(int(sizes["teacher"][1]) - n * int(sizes["student"][1]) / 96) <= 1  # stratified: same label mix
    assert report["models"]["student"]["training"]["teacher_cache"]["samples"] == 96  # labels the full set
    assert any(f"subset of {n} of the 96 training examples" in note for note in report["notes"])
    forced = Pipeline(r, tmp_path / "run", quiet=True, force=True).run()
    cache = forced["models"]["student"]["training"]["teacher_cache"]
    assert cache["reused"] is False and cache["build_s"] is not None  # --force rebuilds the run's own cache
    teacher_stage, cache_files = tmp_path / "run" / "teacher" / "stage.json", sorted((tmp_path / "run").glob(
        "teacher_cache/*.json"))
    before = teacher_stage.stat().st_mtime_ns
    raw = r.model_dump()
    raw["data"]["text"]["word_min_freq"] = 2  # read by the BiLSTMs only: the teacher and its cache stay
    Pipeline(parse_recipe(raw), tmp_path / "run", quiet=True).run()
    assert teacher_stage.stat().st_mtime_ns == before
    assert sorted((tmp_path / "run").glob("teacher_cache/*.json")) == cache_files

    x, y = torch.arange(20.0).view(20, 1), torch.tensor([0] * 10 + [1] * 10)
    images = TensorTask({"train": (x, y), "test": (x[:4], y[:4])}, num_classes=2)
    small = images.with_train_subset(6, seed=0)
    kept_x, kept_y = small.splits["train"]
    assert len(kept_y) == 6 and int(kept_y.sum()) == 3 and images.split_size("train") == 20
    assert all(int(y[int(v)]) == int(c) for v, c in zip(kept_x[:, 0], kept_y))  # inputs and labels stay paired


# ---------------------------------------------------------------------------------------------- layers: auto
def test_block_influence_keeps_the_layers_that_change_the_representation():
    from leankd.models.hf import keep_by_influence, rank_layers

    assert keep_by_influence([0.5, 0.1, 0.3, 0.05, 0.2, 0.01], 3) == [0, 2, 5]  # top-2 of 0..4, plus the last
    assert keep_by_influence([0.5, 0.1], 1) == [1]
    with pytest.raises(ModelError, match="keep 1..2"):
        keep_by_influence([0.5, 0.1], 3)

    class Fake(torch.nn.Module):
        """Hidden states: layer 2 copies its input (influence 0), the others rotate it into new features."""

        def forward(self, input_ids, attention_mask, output_hidden_states):
            g = torch.Generator().manual_seed(0)
            h0 = torch.randn(input_ids.shape[0], input_ids.shape[1], 8, generator=g)
            h1 = torch.randn(h0.shape, generator=g)
            h3 = torch.randn(h0.shape, generator=g)

            class Out:
                hidden_states = (h0, h1, h1.clone(), h3)
            return Out()

    inputs = [{"input_ids": torch.ones(16, 5, dtype=torch.long), "attention_mask": torch.ones(16, 5)}]
    influence = rank_layers(Fake(), inputs)
    assert influence[1] == pytest.approx(0.0, abs=1e-9) and min(influence[0], influence[2]) > 0.3
    assert keep_by_influence(influence, 2) == [0, 2]


def test_auto_layer_strategy_in_a_run(tmp_path, monkeypatch):
    from leankd.pipeline import Pipeline

    monkeypatch.setattr("leankd.models.hf.rank_layers", lambda model, batches: [0.1, 0.4, 0.05, 0.2])
    def with_student(kwargs):
        raw = _recipe(tmp_path).model_dump()
        raw["student"] = {"model": f"hf:{tmp_path / 'bert'}", "kwargs": kwargs}
        return parse_recipe(raw)

    pipeline = Pipeline(with_student({"layers": 2, "layer_strategy": "auto"}), tmp_path / "run", quiet=True)
    report = pipeline.run()
    assert pipeline.auto_layers["kept"] == [1, 3]
    assert any("keeps layers [1, 3] of its checkpoint" in n for n in report["notes"])
    assert "layer_strategy: auto" in (tmp_path / "run" / "recipe.yaml").read_text()  # the recipe as written
    with pytest.raises(LeanKDError, match="give their number"):
        Pipeline(with_student({"layers": [0, 1], "layer_strategy": "auto"}), tmp_path / "run2", quiet=True).run()


# ---------------------------------------------------------------------------------------------- regression (STS-B)
def write_sts_like(folder, n_train=96, n_dev=40):
    """STS-B's layout: sentence pairs and a 0-5 similarity score (here: how many words the pair shares)."""
    from test_text import sentences

    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        rows = ["sentence1\tsentence2\tscore"]
        pairs = sentences(2 * n, seed)
        for i in range(n):
            a, b = pairs[2 * i][1], pairs[2 * i + 1][1]
            shared = len(set(a.split()) & set(b.split()))
            rows.append(f"{a}\t{b}\t{min(5.0, float(shared)):.3f}")
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_label_mse_skips_unscored_examples():
    from leankd.kd.losses import LabelMSE

    out = torch.tensor([[1.0], [2.0], [0.5], [4.0]])
    scores = torch.tensor([1.5, float("nan"), 0.0, 3.0])
    assert float(LabelMSE()(LossInputs(out, scores))) == pytest.approx((0.25 + 0.25 + 1.0) / 4)
    assert float(LabelMSE()(LossInputs(out, torch.tensor([1.0, 2.0, 0.5, 4.0])))) == 0.0


def test_regression_run_reports_correlations_and_distils_with_mse(tmp_path):
    from leankd.pipeline import Pipeline

    folder = write_sts_like(tmp_path / "sts")
    ckpt = tiny_bert(tmp_path / "bert")
    r = parse_recipe({
        "data": {"source": str(folder), "task": "text_regression", "eval_split": "val",
                 "text": {"text_column": "sentence1", "pair_column": "sentence2", "label_column": "score"}},
        "teacher": {"model": f"hf:{ckpt}", "cache": True},
        "student": {"model": "text_bilstm", "kwargs": {"embed_dim": 16, "hidden": 16, "mlp": 16}},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 0.003},
        "distill": {"alpha": 0.5, "augment": {"copies": 1}},
        "compress": {"targets": ["int8-dynamic"]},
    })
    run = tmp_path / "run"
    report = Pipeline(r, run, quiet=True).run()
    models = report["models"]
    assert report["run"]["task"] == "text_regression"
    for role in ("teacher", "baseline", "student", "student_int8_dynamic"):
        q = models[role]["quality"]
        assert q["accuracy"] is None and -1 <= q["pearson"] <= 1 and -1 <= q["spearman"] <= 1 and q["mse"] >= 0
    assert models["student"]["training"]["loss"] == "0.5*mse_logits + 0.5*mse_labels"
    assert models["baseline"]["training"]["loss"] == "mse_labels"
    gain = 100 * (models["student"]["quality"]["pearson"] - models["baseline"]["quality"]["pearson"])
    assert report["ratios"]["kd_gain_points"] == pytest.approx(gain, abs=1e-3)
    drop = models["student_int8_dynamic"]["artifact"]["accuracy_drop_points"]
    assert drop == pytest.approx(100 * (models["student"]["quality"]["pearson"]
                                        - models["student_int8_dynamic"]["quality"]["pearson"]), abs=1e-3)
    md = (run / "report.md").read_text()
    assert "Pearson r (x100)" in md and "Spearman" in md and "accuracy (%)" not in md
    t = models["student"]["training"]["transfer_set"]  # the gain sentence says the KD student took more steps
    assert f"{(t['original'] + t['augmented']) / t['original']:.1f}x its steps" in md
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\thigh\n")
    raw = r.model_dump()
    raw["data"]["source"] = str(bad)
    with pytest.raises(LeanKDError, match="row 3: label 'high' is not a number"):
        Pipeline(parse_recipe(raw), tmp_path / "run2", quiet=True).run()
    raw["data"]["source"] = str(folder)
    raw["distill"] = {"loss": [{"kind": "kd", "weight": 1.0}]}
    with pytest.raises(LeanKDError, match="text_regression task has one output: use mse"):
        parse_recipe(raw)  # when the recipe is read, before anything trains


def test_layer_analysis_samples_text_batches_of_any_width(tmp_path):
    """`pairs: auto` samples training sentences from length-sorted batches of different widths: they come back as
    one batch padded to its longest sentence, every tokenization included."""
    from leankd.kd.layer_choice import sample_train_batch

    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    student = create_model("text_bilstm", num_classes=2, embed_dim=8, hidden=8, mlp=8, **task.model_defaults())
    task.prepare_model(student)
    batch = sample_train_batch(task, 40, seed=0)
    assert batch.size == 40 and len(set(batch.index.tolist())) == 40
    ids = batch.inputs[task.primary]["input_ids"]
    assert ids.shape[1] == int(task.encodings[task.primary]["train"].lengths[batch.index].max())
    assert batch.inputs["words"]["word_ids"].shape[0] == 40


# ---------------------------------------------------------------------------------------------- data.text.metric
def test_text_metric_makes_mcc_the_primary_metric_of_the_report(tmp_path):
    """`data.text.metric: mcc` (word-level CNNs, one epoch): the report is judged by MCC, and changing the metric
    afterwards retrains nothing (it enters no fingerprint)."""
    from leankd.pipeline import Pipeline

    folder = write_sst2_like(tmp_path / "sst2")
    ckpt = tiny_bert(tmp_path / "bert")  # its tokenizer is the data's; both CNNs read their own word vocabulary
    raw = {"data": {"source": str(folder), "task": "text_classification",
                    "text": {"tokenizer": str(ckpt), "metric": "mcc"}},
           "teacher": {"model": "text_cnn", "kwargs": {"embed_dim": 16, "filters": 8}},
           "student": {"model": "text_cnn", "kwargs": {"embed_dim": 8, "filters": 4}},
           "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.003},
           "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    run = tmp_path / "run"
    report = Pipeline(parse_recipe(raw), run, quiet=True).run()
    primary = report["run"]["dataset"]["primary_metric"]
    assert (primary["name"], primary["higher_is_better"], primary["label"]) == ("mcc", True, "MCC (data.text.metric)")
    models = report["models"]
    gain = 100 * (models["student"]["quality"]["mcc"] - models["baseline"]["quality"]["mcc"])
    assert report["ratios"]["primary_metric"] == "mcc"
    assert report["ratios"]["kd_gain_primary_points"] == pytest.approx(gain, abs=1e-3)
    assert "- **Primary metric:** MCC (data.text.metric) (higher is better)" in (run / "report.md").read_text()

    raw["data"]["text"]["metric"] = "macro_f1"
    pipeline = Pipeline(parse_recipe(raw), run, quiet=True)
    logs = []
    pipeline.log = logs.append
    again = pipeline.run()
    assert again["run"]["dataset"]["primary_metric"]["name"] == "macro_f1"
    assert any("reusing" in line for line in logs) and not any("training" in line for line in logs), logs
