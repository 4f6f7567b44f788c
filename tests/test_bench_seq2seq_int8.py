"""benchmarks/seq2seq_int8.py end to end on tiny shapes: the JSON it writes holds what the README quotes."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seq2seq_int8.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_seq2seq_int8", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_fp32_and_int8_timings_per_shape_batch_and_decoder(tmp_path):
    bench = load_bench()
    report = bench.main(["--shapes", "tiny:16:8:1:1", "--batch", "1", "3", "--steps", "3", "--rounds", "2",
                         "--reps", "2", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "seq2seq_int8.json").read_text())
    assert saved == report
    (model,) = saved["models"]
    assert model["name"] == "tiny" and model["hidden"] == 16 and model["params"] > 0
    assert {(t["batch"], t["decode"]) for t in model["timings"]} == {(1, "greedy"), (1, "beam5"), (3, "greedy"),
                                                                      (3, "beam5")}
    for t in model["timings"]:
        assert len(t["rounds"]["fp32"]) == len(t["rounds"]["int8"]) == 2
        assert t["int8_speedup"] == pytest.approx(t["fp32_ms_per_seq"] / t["int8_ms_per_seq"], rel=1e-2)


def test_never_ends_early_so_both_models_do_the_same_work():
    bench = load_bench()
    import torch
    from leankd.seq2seq.decode import greedy
    model = bench.build(bench.parse_shape("tiny:16:8:1:1")[1], seed=0)
    out = greedy(model, torch.randint(3, bench.SRC_VOCAB, (4, 5)), torch.full((4,), 5), max_len=6)
    assert [len(row) for row in out] == [6, 6, 6, 6]


def test_bad_shape_names_the_expected_form():
    bench = load_bench()
    with pytest.raises(SystemExit, match="name:hidden:embed:enc_layers:dec_layers"):
        bench.parse_shape("student:96:32")
