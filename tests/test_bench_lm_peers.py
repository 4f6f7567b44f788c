"""benchmarks/lm_peers.py: the shared pieces every contestant relies on do what leankd does (same batches, same loss,
same schedule, a tokenizer that encodes like leankd's, a recipe leankd accepts), and a tiny run end to end writes
the table it prints. TRL itself is not imported here (it lives in its own venv)."""
import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from leankd.kd.build import build_loss
from leankd.kd.losses import LossInputs
from leankd.recipe import TrainConfig, parse_recipe
from leankd.train.optim import lr_factor

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(BENCH / "peers"))
bench = load(BENCH / "lm_peers.py", "bench_lm_peers")
lc = load(BENCH / "peers" / "lm_common.py", "lm_common_under_test")
plain = load(BENCH / "peers" / "lm_plain_run.py", "lm_plain_run_under_test")
leankd_run = load(BENCH / "peers" / "lm_leankd_run.py", "lm_leankd_run_under_test")

LINES = ["First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
         "All:\nSpeak, speak.\n\n", "MENENIUS:\nWhat work's, my countrymen, in hand? where go you\n\n"]


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text("".join(LINES[i % 3] for i in range(300)))  # ~24k characters
    return path


def quick_args(corpus: Path, tmp_path: Path, *extra: str) -> argparse.Namespace:
    return bench.parse_args(["--quick", "--source", str(corpus), "--out", str(tmp_path / "results"), *extra])


def test_shared_loss_is_hand_computed_forward_kl_plus_ce_and_equals_leankds():
    # one token: student uniform over 2 symbols, teacher (0.75, 0.25), target symbol 0
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    target = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert lc.kd_ce_loss(student, teacher, target, 0.5).item() == pytest.approx(0.5 * kl + 0.5 * math.log(2), abs=1e-6)
    # many tokens: the value leankd's recipe loss (what lm_leankd_run.py asks for) computes
    recipe = parse_recipe({"data": {"task": "causal_lm", "source": "x.txt"}, "teacher": {"model": "gpt"},
                           "student": {"model": "gpt"},
                           "distill": {"temperature": 1.0, "loss": [{"kind": "forward_kl", "weight": 0.5},
                                                                    {"kind": "ce", "weight": 0.5}]}})
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(24, 65, generator=g), torch.randn(24, 65, generator=g) * 2
    y = torch.randint(0, 65, (24,), generator=g)
    theirs = build_loss(recipe.distill)(LossInputs(student=s, targets=y, teacher=t))
    assert lc.kd_ce_loss(s, t, y, 0.5).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_plain_loop_draws_the_batches_leankd_draws(corpus, tmp_path):
    args = quick_args(corpus, tmp_path)
    task = bench.build_leankd_task(args)  # limit_train 64: a seeded subset of the blocks
    train = bench.windows(task.splits["train"])
    assert train.shape == (64, 33)
    for epoch in (0, 1):
        ours = lc.leankd_order(len(train), 16, epoch, args.seed, torch.device("cpu"))
        theirs = list(task.train_batches(epoch, 16, args.seed))
        assert len(ours) == len(theirs) == 4
        for idx, batch in zip(ours, theirs):
            assert torch.equal(train[idx][:, :-1], batch.inputs)
            assert torch.equal(train[idx][:, 1:].reshape(-1), batch.targets)
    first, second = (lc.leankd_order(len(train), 16, e, args.seed, torch.device("cpu")) for e in (0, 1))
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new permutation every epoch


def test_plain_schedule_is_leankds_lr_factor_at_every_step():
    steps, epochs, warmup = 7, 3, 2
    cfg = TrainConfig(epochs=epochs, batch_size=4, optimizer="adamw", lr=1e-3, warmup_epochs=warmup / steps,
                      schedule="cosine")
    factor = plain.leankd_schedule(warmup, epochs * steps)
    for step in range(epochs * steps):
        assert factor(step) == pytest.approx(lr_factor(cfg, step, epochs * steps, steps), abs=1e-12)
    assert factor(0) == pytest.approx(0.5) and factor(epochs * steps) == pytest.approx(0.0)


def test_tokenizer_folder_for_trl_encodes_and_decodes_like_leankd(corpus, tmp_path):
    from transformers import AutoTokenizer

    task = bench.build_leankd_task(quick_args(corpus, tmp_path))
    bench.save_tokenizer(task, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    text = "All:\nSpeak,  speak.\n\nWhat work's?"
    ids = task.tokenizer.encode(text)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == text and len(tok) == task.num_classes


def test_leankd_recipe_is_valid_and_starts_the_student_from_the_saved_init(corpus, tmp_path):
    args = quick_args(corpus, tmp_path)
    data = {"leankd_data": json.dumps(bench.leankd_data(args)), "vocab_size": 20,
            "teacher_kwargs": json.dumps(bench.model_kwargs(args, "teacher")),
            "student_kwargs": json.dumps(bench.model_kwargs(args, "student"))}
    ns = argparse.Namespace(teacher=str(tmp_path / "models" / "teacher"), cached=True, seed=0, device="cpu",
                            epochs=3, batch_size=16, lr=3e-3, weight_decay=0.01, grad_clip=1.0, alpha=0.5)
    spec = leankd_run.recipe(ns, data, steps=4, warmup=1)
    recipe = parse_recipe(spec)
    assert recipe.student.checkpoint == str(tmp_path / "models" / "student_init.safetensors")
    assert recipe.teacher.checkpoint == str(tmp_path / "models" / "teacher.safetensors") and recipe.teacher.cache
    assert recipe.baseline is False and recipe.train.warmup_epochs * 4 == pytest.approx(1)
    assert recipe.data.lm.context == 32 and recipe.student.kwargs["context"] == 33


def test_s_per_step_is_the_median_of_later_epochs_over_rounds():
    runs = [{"seconds_per_epoch": [9.0, 2.0, 4.0], "steps_per_epoch": 2},
            {"seconds_per_epoch": [7.0, 3.0, 100.0], "steps_per_epoch": 2}]
    assert bench.step_seconds(runs) == (4.0, 1.75)  # firsts 4.5, 3.5 -> 4; later 1, 2, 1.5, 50 -> 1.75
    assert bench.step_seconds([{"seconds_per_epoch": [6.0], "steps_per_epoch": 3}]) == (2.0, 2.0)


def test_quick_run_of_the_plain_loop_end_to_end(corpus, tmp_path):
    summary = bench.main(["--quick", "--source", str(corpus), "--out", str(tmp_path / "results"), "--only", "plain",
                          "--epochs", "2"])
    saved = json.loads((tmp_path / "results" / "lm_peers_quick.json").read_text())
    assert saved == summary and summary["same_student_init"] is True
    (row,) = summary["rows"]
    assert row["contestant"] == "plain" and row["s_per_step"] > 0 and row["x_vs_trl"] is None
    assert row["tokens_per_s"] == pytest.approx(16 * 32 / row["s_per_step"])
    (result,) = summary["results"]["plain"]
    assert len(result["seconds_per_epoch"]) == 2 and len(result["seconds_per_step"]) == 8
    assert 0 < result["val_loss"] < 20
    table = (tmp_path / "results" / "lm_peers_quick.md").read_text()
    assert "| plain PyTorch loop |" in table and f"{row['val_loss']:.4f}" in table


def test_probe_estimates_the_full_run_from_its_step_times_and_overheads():
    probe = {"prepared": {"train_blocks_unlimited": 100, "teacher_s_per_step": 0.5}, "batch_size": 10,
             "rows": [{"contestant": "plain", "s_per_step": 2.0}, {"contestant": "trl", "failed": "exit 1"}],
             "results": {"plain": [{"process_wall_s": 30.0, "seconds_per_epoch": [4.0, 6.0]}]}}
    estimate = bench.full_run_estimate(probe)
    assert bench.FULL["epochs"] == 3 and bench.FULL["teacher_epochs"] == 3 and bench.FULL["rounds"] == 2
    # 10 steps an epoch; plain: 2 s x 30 steps + 20 s outside its epochs; teacher: 0.5 s x 30 steps
    assert estimate == {"steps_per_epoch": 10, "teacher_s": 15.0, "per_contestant_round_s": {"plain": 80.0},
                        "total_s": 15.0 + 2 * 80.0}


def test_a_given_teacher_of_the_data_context_predicts_the_same_in_the_longer_model(corpus, tmp_path):
    from leankd.models import create_model
    from leankd.train.checkpoint import save_weights

    given_path = tmp_path / "given.safetensors"
    task = bench.build_leankd_task(quick_args(corpus, tmp_path))
    torch.manual_seed(3)
    given = create_model("gpt", num_classes=task.num_classes, hidden=32, layers=2, heads=2, context=32).eval()
    save_weights(given_path, given)
    args = quick_args(corpus, tmp_path, "--teacher-weights", str(given_path))
    facts = bench.load_teacher(args, task, tmp_path)
    assert facts["teacher_from"] == str(given_path) and facts["teacher_val_loss"] > 0
    hf = lc.load_causal_lm(str(tmp_path / "teacher")).eval()
    assert hf.config.n_positions == 33
    block = bench.windows(task.splits["train"])[:4]  # 33 tokens: what TRL feeds
    with torch.no_grad():
        want = given(block[:, :-1])
        assert torch.allclose(hf(input_ids=block[:, :-1]).logits, want, atol=1e-5)
        assert torch.allclose(hf(input_ids=block).logits[:, :-1], want, atol=1e-5)
