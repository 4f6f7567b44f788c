"""A task kind is a plug-in (issue 24): this file registers a toy span-extraction kind and a toy model of its own,
with no edit under src/, and runs it end to end through `leankd.run` (teacher, baseline, KD student, report).

The toy task: token sequences of length L in which the answer span is the run between a START marker token and
an END marker token. A model returns start and end logits over the L positions; the task's `forward` stacks them
as 2·B rows over L positions (start rows, then end rows) with the gold positions as targets, which is what the
logit KD losses (kd, ce) read. Its metrics are the span's exact match and the start / end accuracies, and exact
match is its primary metric. The kind brings its own data section (`data.span`, the split sizes), which the recipe
validates with the kind's model.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from leankd.core.params import Strict
from leankd.core.registry import RegistryError
from leankd.errors import RecipeError
from leankd.models.registry import _MODELS, register_model
from leankd.recipe import dump_recipe, parse_recipe
from leankd.tasks import TASKS, Batch, TensorTask, register_task

KIND = "toy_span"
L, VOCAB, OPEN, CLOSE = 12, 16, 1, 2  # tokens 1 and 2 mark the span; words are 3..VOCAB-1


def make_split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB, (n, L), generator=g)
    start = torch.randint(1, L - 3, (n,), generator=g)
    length = torch.randint(0, 3, (n,), generator=g)
    end = torch.minimum(start + length, torch.full_like(start, L - 2))
    rows = torch.arange(n)
    x[rows, start - 1] = OPEN
    x[rows, end + 1] = CLOSE
    return x, torch.stack([start, end], 1)


class SpanData(Strict):
    """The toy kind's own data section (`data.span`): how many generated examples each split holds."""

    train_examples: int = Field(256, ge=32)
    test_examples: int = Field(128, ge=8)


class SpanTask(TensorTask):
    """Splits of (tokens [N, L], gold (start, end) [N, 2]); no class names: each logit row is over positions."""

    kind = KIND

    def __init__(self, device, seed: int, sizes: SpanData):
        super().__init__({"train": make_split(sizes.train_examples, seed), "val": make_split(64, seed + 1),
                          "test": make_split(sizes.test_examples, seed + 2)}, num_classes=L, device=device,
                         info={"positions": L})
        self.class_names = []  # positions are not classes: no per-class section

    @staticmethod
    def _rows(batch: Batch) -> Batch:  # (start, end) per example -> start rows then end rows
        return Batch(batch.inputs, torch.cat([batch.targets[:, 0], batch.targets[:, 1]]), batch.index,
                     count=int(batch.targets.shape[0]))

    def train_batches(self, epoch, batch_size, seed, view=None):
        return map(self._rows, super().train_batches(epoch, batch_size, seed, view))

    def eval_batches(self, split, batch_size):
        return map(self._rows, super().eval_batches(split, batch_size))

    def view_batches(self, view, seed, batch_size):
        return map(self._rows, super().view_batches(view, seed, batch_size))

    def cache_size(self) -> int:
        return 2 * self.split_size("train")

    def cache_rows(self, index: Tensor) -> Tensor:
        return torch.cat([index, index + self.split_size("train")])

    def forward(self, model, inputs):
        out = model(inputs)  # [B, 2, L]
        return torch.cat([out[:, 0], out[:, 1]])

    def metrics(self, logits, targets) -> dict:
        n = targets.shape[0] // 2
        hit = logits.argmax(-1) == targets
        start, end = hit[:n].float(), hit[n:].float()
        return {"exact_match": float((start * end).mean()), "start_accuracy": float(start.mean()),
                "end_accuracy": float(end.mean()), "accuracy": float(hit.float().mean()),
                "loss": float(nn.functional.cross_entropy(logits.float(), targets)), "num_samples": n}

    def primary_metric(self) -> dict:
        return {"name": "exact_match", "higher_is_better": True, "label": "span exact match"}


def build_span_task(cfg, device, seed, channels_last):
    return SpanTask(device, seed, cfg.span)


def toy_span_net(num_classes: int = L, width: int = 32, vocab: int = VOCAB) -> nn.Module:
    """Embeddings, one 3-wide convolution (sees the markers beside a position), start and end scores per position."""
    class SpanNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_classes = num_classes  # the width of a logit row (positions): what leankd checks the data against
            self.embed = nn.Embedding(vocab, width)
            self.conv = nn.Conv1d(width, width, 3, padding=1)
            self.head = nn.Linear(width, 2)

        def forward(self, tokens):
            h = torch.relu(self.conv(self.embed(tokens).transpose(1, 2))).transpose(1, 2)  # [B, L, W]
            return self.head(h).transpose(1, 2)  # [B, 2, L]

    return SpanNet()


@pytest.fixture
def span_kind():
    register_task(KIND, build_span_task, data_sections={"span": SpanData})
    if "toy_span_net" not in _MODELS:
        register_model(toy_span_net)
    yield KIND
    TASKS.remove(KIND)
    _MODELS.pop("toy_span_net", None)


def recipe(tmp_path) -> dict:
    return {"name": "span", "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "data": {"task": KIND, "source": "generated"},
            "teacher": {"model": "toy_span_net", "kwargs": {"width": 48}, "train": {"epochs": 4}},
            "student": {"model": "toy_span_net", "kwargs": {"width": 8}},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
            "distill": {"alpha": 0.7, "temperature": 2},
            "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}


def test_an_unregistered_kind_is_a_recipe_error_with_close_names(tmp_path):
    with pytest.raises(RecipeError, match="unknown task kind 'keyword_spoting': did you mean 'keyword_spotting'"):
        parse_recipe({**recipe(tmp_path), "data": {"task": "keyword_spoting"}})
    with pytest.raises(RecipeError, match=f"unknown task kind '{KIND}'"):
        parse_recipe(recipe(tmp_path))


def test_a_kind_is_registered_once(span_kind):
    assert span_kind in TASKS.names()
    register_task(KIND, build_span_task, data_sections={"span": SpanData})  # the same builder again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_task(KIND, lambda *a: None)
    with pytest.raises(RegistryError, match="already registered"):
        from leankd.core.taskkind import TaskKind, register_kind
        register_kind(TaskKind(KIND, lambda *a: None))


def test_a_task_kind_registered_from_a_test_runs_end_to_end(tmp_path, span_kind):
    import leankd

    result = leankd.run(recipe(tmp_path), quiet=True)
    run_dir = result.run_dir
    report = json.loads((run_dir / "report.json").read_text())
    models = report["models"]
    assert {"teacher", "baseline", "student"} <= set(models)
    for role in ("teacher", "baseline", "student"):
        q = models[role]["quality"]
        assert 0.0 <= q["exact_match"] <= 1.0 and 0.0 <= q["start_accuracy"] <= 1.0
    assert models["teacher"]["quality"]["exact_match"] > 0.5  # the markers make the span learnable
    dataset = report["run"]["dataset"]
    assert report["run"]["task"] == KIND and dataset["primary_metric"]["name"] == "exact_match"
    assert dataset["num_classes"] is None and dataset["classes"] == []  # positions are not classes
    assert dataset["positions"] == L  # the task's own description joins the dataset block
    md = (run_dir / "report.md").read_text()
    assert "- **Primary metric:** span exact match (higher is better)" in md
    # no class count in the header (the console log line still prints one) and no per-class section
    assert "classes" not in md.split("## Data")[0] and "per-class" not in md.lower()
    assert "better than the baseline" in md or "worse than the baseline" in md or "ties" in md.lower()


def test_a_kind_brings_its_own_data_section(tmp_path, span_kind):
    """data.span is validated with the model the kind declares: filled with its defaults when left out, its errors
    at their place, a typo listing the section's keys; another kind's recipe may not carry it, nor dump it."""
    r = parse_recipe(recipe(tmp_path))
    assert r.data.span == SpanData()  # left out: the kind's defaults, carried resolved
    given = {**recipe(tmp_path), "data": {"task": KIND, "source": "generated", "span": {"train_examples": 64}}}
    r = parse_recipe(given)
    assert r.data.span.train_examples == 64 and r.data.span.test_examples == 128
    dumped = dump_recipe(r)
    assert "span:\n    train_examples: 64\n    test_examples: 128\n" in dumped
    import yaml
    assert parse_recipe(yaml.safe_load(dumped)) == r  # the dump reads back as the same recipe

    typo = {**given, "data": {**given["data"], "span": {"train_exampels": 64}}}
    with pytest.raises(RecipeError) as e:
        parse_recipe(typo)
    assert "data.span.train_exampels: unknown key (typo?); allowed here: train_examples, test_examples" in str(e.value)
    bad = {**given, "data": {**given["data"], "span": {"train_examples": 4}}}
    with pytest.raises(RecipeError, match=r"data\.span\.train_examples = 4: Input should be greater than or equal"):
        parse_recipe(bad)
    with pytest.raises(RecipeError, match=r"data\.spam: unknown key \(typo\?\); allowed here: .*seq, lm, span"):
        parse_recipe({**given, "data": {**given["data"], "spam": {}}})

    image = {**recipe(tmp_path), "data": {"source": "demo"}, "teacher": {"model": "resnet8"},
             "student": {"model": "resnet8"}}
    assert "span" not in parse_recipe(image).data.model_dump()  # another kind's dump and fingerprint are unchanged
    with pytest.raises(RecipeError, match="data.span is for data.task: toy_span, not 'image_classification'"):
        parse_recipe({**image, "data": {"source": "demo", "span": {}}})


def test_a_data_section_is_declared_with_its_model(tmp_path, span_kind):
    from leankd.core.taskkind import TaskKind, register_kind

    with pytest.raises(RegistryError, match="data_sections maps each section name to the model"):
        TaskKind("toy_bare", build_span_task, data_sections=("span",))
    other = register_kind(TaskKind("toy_other", build_span_task, data_sections={"span": Strict}))
    try:  # two kinds, one section, two models: a recipe could not mean both
        with pytest.raises(RecipeError, match="data.span is declared with different models"):
            parse_recipe({**recipe(tmp_path), "data": {"task": KIND, "span": {}}})
    finally:
        TASKS.remove(other.name)


def test_an_unregistered_kinds_section_is_an_unknown_key(tmp_path):
    with pytest.raises(RecipeError, match=r"data\.span: unknown key \(typo\?\)"):
        parse_recipe({**recipe(tmp_path), "data": {"source": "demo", "span": {}}})


# ------------------------------------------------------------------------------------ a kind's own student stages
EXTRA_KIND, EXTRA_ROLE, EXTRA_LABEL = "toy_span_soft", "student_soft", "pure-KD student (no labels)"


def soft_student(ctx) -> dict[str, str]:
    """The toy kind's own student: distilled from the teacher's soft targets alone (KD at T=2, no label term), an
    ordinary stage of the run (fingerprint, reuse) keyed on the teacher and the data like the run's KD student."""
    from leankd.kd.losses import KD

    runner = ctx.runner
    live = runner.live_teacher(ctx.teacher.model, ctx.task, channels_last=False)
    ctx.stages[EXTRA_ROLE] = runner.stage(
        EXTRA_ROLE, copy.deepcopy(ctx.student_init), ctx.task, runner.recipe.stage_train("student"), KD(2.0),
        teacher=live, model_cfg=ctx.model_cfg,
        extra_fp={**ctx.data_fp, "teacher": runner.stage_fp("teacher"), "method": "soft"})
    return {EXTRA_ROLE: EXTRA_LABEL}


@pytest.fixture
def soft_kind():
    register_task(EXTRA_KIND, build_span_task, data_sections={"span": SpanData}, student_stages=soft_student)
    if "toy_span_net" not in _MODELS:
        register_model(toy_span_net)
    yield EXTRA_KIND
    TASKS.remove(EXTRA_KIND)
    _MODELS.pop("toy_span_net", None)


def test_a_kinds_own_student_stage_joins_the_run_and_is_reused(tmp_path, soft_kind):
    """A kind declares an extra student stage (`TaskKind.student_stages`) with no edit under src/: the pipeline
    trains it beside the ordinary KD student (it does not replace it), the report shows it under the kind's label,
    and a second run reuses it like any other stage."""
    import leankd

    raw = {**recipe(tmp_path), "data": {"task": EXTRA_KIND, "source": "generated"}}
    raw["teacher"]["train"]["epochs"] = 2
    result = leankd.run(raw, quiet=True)
    models = json.loads((result.run_dir / "report.json").read_text())["models"]
    assert list(models)[:4] == ["teacher", "baseline", "student", EXTRA_ROLE]  # after the pipeline's KD student
    assert models[EXTRA_ROLE]["label"] == EXTRA_LABEL and models["student"]["label"] == "KD student"
    assert models[EXTRA_ROLE]["training"]["loss"] == "kd(T=2)" and models["student"]["training"]["loss"] != "kd(T=2)"
    assert 0.0 <= models[EXTRA_ROLE]["quality"]["exact_match"] <= 1.0
    assert EXTRA_LABEL in (result.run_dir / "report.md").read_text()
    weights = {role: (result.run_dir / role / "model.safetensors").stat().st_mtime_ns
               for role in ("teacher", "baseline", "student", EXTRA_ROLE)}

    again = json.loads((leankd.run(raw, quiet=True).run_dir / "report.json").read_text())["models"]
    assert {role: (result.run_dir / role / "model.safetensors").stat().st_mtime_ns for role in weights} == weights
    assert again[EXTRA_ROLE]["label"] == EXTRA_LABEL
    assert again[EXTRA_ROLE]["quality"] == models[EXTRA_ROLE]["quality"]
