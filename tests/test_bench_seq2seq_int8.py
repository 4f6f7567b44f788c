"""benchmarks/seq2seq_int8.py end to end on tiny shapes: the JSON it writes holds what the README quotes, and the
fp32 and int8 models it compares do the same amount of decoding work."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from leankd.seq2seq.decode import beam_search, greedy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seq2seq_int8.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_seq2seq_int8", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_fp32_and_int8_timings_per_shape_batch_and_decoder(tmp_path):
    bench = load_bench()
    threads = torch.get_num_threads()
    report = bench.main(["--shapes", "tiny:16:8:1:1", "--batch", "1", "3", "--steps", "3", "--rounds", "2",
                         "--reps", "2", "--threads", "1", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # the caller's thread count is given back
    saved = json.loads((tmp_path / "seq2seq_int8.json").read_text())
    assert saved == report
    (model,) = saved["models"]
    assert model["name"] == "tiny" and model["hidden"] == 16 and model["params"] > 0
    assert {"decoder", "out", "combine", "enc_fwd.0", "enc_bwd.0"} <= set(model["int8_modules"])
    assert {(t["batch"], t["decode"]) for t in model["timings"]} == {(1, "greedy"), (1, "beam5"), (3, "greedy"),
                                                                      (3, "beam5")}
    for t in model["timings"]:
        assert len(t["rounds"]["fp32"]) == len(t["rounds"]["int8"]) == 2
        assert t["fp32_ms_per_seq"] > 0 and t["int8_ms_per_seq"] > 0


def test_fp32_and_int8_never_end_early_so_both_do_the_same_work():
    bench = load_bench()
    from leankd.compress.quantize import quantize_dynamic_int8
    fp32 = bench.build(bench.parse_shape("tiny:16:8:1:1")[1], seed=0)
    int8 = quantize_dynamic_int8(fp32).model.eval()
    src, src_len = torch.randint(3, bench.SRC_VOCAB, (4, 5)), torch.full((4,), 5)
    for model in (fp32, int8):
        assert [len(row) for row in greedy(model, src, src_len, max_len=6)] == [6] * 4
        for hyps in beam_search(model, src, src_len, beam=5, max_len=6, n_best=5):
            assert [len(h.tokens) for h in hyps] == [6] * 5


def test_bad_arguments_name_the_expected_form():
    bench = load_bench()
    with pytest.raises(SystemExit, match="name:hidden:embed:enc_layers:dec_layers"):
        bench.main(["--shapes", "student:96:32"])
    with pytest.raises(SystemExit):
        bench.main(["--batch", "0"])
