"""Fast checks of leankd.measure against hand-computed values (quality, params, FLOPs) and physical sanity
(a sleeping module is slow, a 200 MB allocation shows up in peak RSS, fake RAPL counters give the right joules)."""
from __future__ import annotations

import math
import os
import time

import pytest
import torch
from torch import nn

from leankd.measure import (
    EnergyMeter,
    PeakMemory,
    classification_metrics,
    count_flops,
    count_parameters,
    cpu_fp32_copy,
    inference_peak_memory,
    measure_latency,
    profile_model,
    serialized_size_bytes,
    to_device,
)

# ---------------------------------------------------------------------------------------------------- quality


def _logits_for(preds: list[int], num_classes: int) -> torch.Tensor:
    """Logit ln(2) on the predicted class, 0 elsewhere: softmax gives 2/(2+C-1) to the prediction."""
    logits = torch.zeros(len(preds), num_classes)
    logits[torch.arange(len(preds)), torch.tensor(preds)] = math.log(2.0)
    return logits


def test_classification_metrics_match_hand_counts():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(_logits_for(preds, 3), targets, class_names=["cat", "dog", "frog"])
    # 4 of 6 correct.
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0: TP1 FP1 FN1 -> F1 1/2; class 1: TP2 FP1 FN0 -> P 2/3 R 1 -> F1 4/5; class 2: TP1 FP0 FN1 -> F1 2/3.
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["per_class_accuracy"] == pytest.approx({"cat": 0.5, "dog": 1.0, "frog": 0.5})
    # p(pred) = 2/4 -> correct costs ln2, wrong target has p = 1/4 -> 2 ln2; mean = (4 ln2 + 2*2 ln2) / 6.
    assert m["loss"] == pytest.approx(8 * math.log(2) / 6, rel=1e-5)
    assert m["num_samples"] == 6


def test_classification_metrics_default_names_and_low_precision_logits():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = _logits_for([0, 1, 1, 1, 2, 0], 3).to(torch.bfloat16)
    m = classification_metrics(logits, targets)
    assert list(m["per_class_accuracy"]) == ["0", "1", "2"]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["loss"] == pytest.approx(8 * math.log(2) / 6, rel=1e-2)
    assert all(isinstance(m[k], float) for k in ("accuracy", "macro_f1", "loss"))


def test_classification_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), class_names=["a", "b"])


# ---------------------------------------------------------------------------------------------------- cost


def test_parameter_count_and_size_of_linear():
    model = nn.Linear(10, 5)
    assert count_parameters(model) == {"params": 55, "trainable_params": 55}
    model.bias.requires_grad_(False)
    assert count_parameters(model) == {"params": 55, "trainable_params": 50}
    size = serialized_size_bytes(model)
    assert 55 * 4 <= size < 55 * 4 + 1024


def test_serialized_size_handles_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    assert count_parameters(model)["params"] == 160  # shared parameter counted once
    assert serialized_size_bytes(model) >= 2 * 160 * 4  # two state_dict keys, both shipped


def test_flops_conv_hand_count():
    model = nn.Conv2d(3, 8, 3, padding=1)
    out = count_flops(model, torch.randn(1, 3, 32, 32))
    assert out["macs"] == 8 * 32 * 32 * 3 * 3 * 3 == 221184
    assert out["flops"] == 2 * out["macs"]


def test_flops_linear_hand_count():
    assert count_flops(nn.Linear(100, 10), torch.randn(4, 100))["macs"] == 4 * 100 * 10


class DictModel(nn.Module):
    """Stands in for a text model that takes a dict of tensors."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(h.mean(dim=1))


def _dict_forward(model, batch):
    return model(batch["input_ids"], batch["attention_mask"])


def test_flops_dict_inputs_via_forward():
    batch = {"input_ids": torch.randint(0, 50, (4, 7)), "attention_mask": torch.ones(4, 7)}
    out = count_flops(DictModel(), batch, forward=_dict_forward)
    assert out["macs"] == 4 * 16 * 3  # embedding lookups are not MACs; only the head's matmul counts


# ---------------------------------------------------------------------------------------------------- latency


def test_latency_fields_and_order():
    res = measure_latency(nn.Linear(32, 8), torch.randn(16, 32), runs=12, warmup=2)
    assert set(res) == {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "batch_size", "device", "threads",
                        "pooled_median_ms", "spread", "round_spread", "round_ms", "reliable", "noise"}
    assert res["runs"] >= 12 and len(res["round_ms"]) == 3  # blocked_autorange: at least the calls asked for
    assert res["reliable"] is (not res["noise"])
    assert res["batch_size"] == 16
    assert res["device"] == "cpu"
    assert res["threads"] == torch.get_num_threads()
    assert 0 <= res["min_ms"] <= res["median_ms"] <= res["p90_ms"]


class Sleeper(nn.Module):
    def forward(self, x):
        time.sleep(0.002)
        return x


def test_latency_of_sleeping_module_is_at_least_the_sleep():
    res = measure_latency(Sleeper(), torch.zeros(2, 3), runs=5, warmup=1)
    assert res["median_ms"] >= 2.0
    assert res["min_ms"] >= 2.0


def test_latency_with_dict_inputs():
    batch = {"input_ids": torch.randint(0, 50, (3, 5)), "attention_mask": torch.ones(3, 5)}
    res = measure_latency(DictModel(), batch, forward=_dict_forward, runs=3, warmup=0)
    assert res["batch_size"] == 3 and res["runs"] >= 3


# ---------------------------------------------------------------------------------------------------- memory


def test_peak_memory_cpu_sees_a_200mb_allocation():
    with PeakMemory("cpu") as pm:
        t = torch.empty(50_000_000, dtype=torch.float32)  # 200 MB
        t.fill_(1.0)  # touch every page so it becomes resident
        time.sleep(0.01)
        del t
    assert pm.kind == "cpu_peak_rss"
    assert pm.delta_mb >= 100
    assert pm.peak_mb >= pm.delta_mb
    assert pm.as_dict() == {"peak_mb": pm.peak_mb, "delta_mb": pm.delta_mb, "kind": "cpu_peak_rss"}


def test_inference_peak_memory_fields():
    res = inference_peak_memory(nn.Linear(8, 4), torch.randn(5, 8), repeats=2)
    assert res["kind"] == "cpu_peak_rss" and res["batch_size"] == 5 and res["repeats"] == 2
    assert res["peak_mb"] > 0 and res["delta_mb"] >= 0


# ---------------------------------------------------------------------------------------------------- energy


def _zone(root, name, energy_uj, max_range_uj=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range_uj is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return d / "energy_uj"


def test_energy_meter_fake_rapl(tmp_path):
    pkg0 = _zone(tmp_path, "intel-rapl:0", 1_000_000, 10**12)
    pkg1 = _zone(tmp_path, "intel-rapl:1", 5_000_000, 10**12)
    sub = _zone(tmp_path, "intel-rapl:0:0", 0, 10**12)  # subzone: already inside package 0, must be ignored
    with EnergyMeter("cpu", powercap_root=tmp_path) as meter:
        pkg0.write_text("3500000\n")  # +2.5 J
        pkg1.write_text("5500000\n")  # +0.5 J
        sub.write_text("99000000\n")
    assert meter.source == "rapl"
    assert meter.joules == pytest.approx(3.0)
    assert meter.as_dict() == {"joules": pytest.approx(3.0), "source": "rapl"}


def test_energy_meter_rapl_wraparound(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 9_000_000, max_range_uj=10_000_000)
    with EnergyMeter("cpu", powercap_root=tmp_path) as meter:
        pkg.write_text("500000\n")  # wrapped: 1.0 J to the top, then 0.5 J
    assert meter.joules == pytest.approx(1.5)


def test_energy_meter_rapl_multiple_wraps_with_polling(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 0, max_range_uj=1_000_000)
    with EnergyMeter("cpu", powercap_root=tmp_path, poll_interval_s=0.02) as meter:
        for value in (600_000, 100_000, 700_000, 200_000):  # wraps twice: 0.6+0.5+0.6+0.5 J
            pkg.write_text(f"{value}\n")
            time.sleep(0.1)
    assert meter.joules == pytest.approx(2.2)


def test_energy_meter_not_available(tmp_path):
    with EnergyMeter("cpu", powercap_root=tmp_path / "missing") as meter:
        pass
    assert meter.joules is None
    assert meter.source.startswith("not available: no readable RAPL counters under")
    (tmp_path / "empty").mkdir()
    with EnergyMeter("cpu", powercap_root=tmp_path / "empty") as meter:
        pass
    assert meter.as_dict()["joules"] is None and meter.source.startswith("not available:")


def test_energy_meter_garbage_counter(tmp_path):
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("n/a\n")
    with EnergyMeter("cpu", powercap_root=tmp_path) as meter:
        pass
    assert meter.as_dict() == {"joules": None, "source": meter.source}
    assert meter.source.startswith("not available: no readable RAPL counters under")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_energy_meter_unreadable_counter(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 1)
    pkg.chmod(0)
    try:
        with EnergyMeter("cpu", powercap_root=tmp_path) as meter:
            pass
    finally:
        pkg.chmod(0o644)
    assert meter.joules is None and "not available" in meter.source


def test_energy_meter_cuda_without_pynvml():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pynvml is installed")
    with EnergyMeter("cuda") as meter:
        pass
    assert meter.joules is None and "pynvml" in meter.source and meter.source.startswith("not available:")


# ---------------------------------------------------------------------------------------------------- profile


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_profile_model_shape():
    model = TinyCNN()
    prof = profile_model(model, lambda bs: torch.randn(bs, 3, 8, 8), batch_sizes=(1, 4), runs=3, warmup=1)
    assert set(prof) == {"cost", "latency", "memory"}
    assert set(prof["cost"]) == {"params", "trainable_params", "size_mb", "size_bytes", "macs", "flops"}
    assert prof["cost"]["params"] == (3 * 4 * 9 + 4) + 8 + (4 * 10 + 10)
    assert prof["cost"]["macs"] == 4 * 8 * 8 * 3 * 9 + 4 * 10  # per single sample
    assert prof["cost"]["size_mb"] == prof["cost"]["size_bytes"] / 1e6
    assert set(prof["latency"]) == {"cpu"}  # no "cuda" for a CPU model
    cpu = prof["latency"]["cpu"]
    assert set(cpu) == {"threads", "batch_1", "batch_4", "reliable", "noise", "load_avg", "interop_threads",
                        "cpu_count", "method"}
    for key in ("batch_1", "batch_4"):
        assert set(cpu[key]) == {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "pooled_median_ms", "spread",
                                 "round_spread", "round_ms"}
        assert cpu[key]["runs"] >= 3
    assert set(prof["memory"]) == {"inference_peak_mb", "inference_delta_mb", "kind", "batch_size", "model_memory_mb"}
    assert 0 < prof["memory"]["model_memory_mb"] < prof["memory"]["inference_peak_mb"]
    assert prof["memory"]["batch_size"] == 4 and prof["memory"]["kind"] == "tensor_bytes"
    assert model.training  # left as it was


def test_profile_model_without_cpu_latency_and_with_dict_inputs():
    def make(bs):
        return {"input_ids": torch.randint(0, 50, (bs, 6)), "attention_mask": torch.ones(bs, 6)}

    prof = profile_model(DictModel(), make, forward=_dict_forward, batch_sizes=(2,), runs=2, warmup=0,
                         cpu_latency=False)
    assert prof["latency"] == {}
    assert prof["cost"]["macs"] == 16 * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_model_cuda_has_both_latencies():
    model = TinyCNN().cuda().half()
    prof = profile_model(model, lambda bs: torch.randn(bs, 3, 8, 8, device="cuda", dtype=torch.half),
                         batch_sizes=(1, 4), runs=3, warmup=1)
    assert {"cpu", "cuda"} <= set(prof["latency"])
    assert prof["memory"]["kind"] == "cuda_max_allocated"
    assert next(model.parameters()).dtype == torch.half  # the CPU copy did not touch the original


# ---------------------------------------------------------------------------------------------------- helpers


def test_train_eval_mode_restored_per_submodule():
    model = TinyCNN().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model must stay frozen
    x = torch.randn(2, 3, 8, 8)
    count_flops(model, x)
    measure_latency(model, x, runs=1, warmup=0)
    inference_peak_memory(model, x, repeats=1)
    assert model.training and model.conv.training and model.head.training
    assert not model.bn.training
    model.eval()
    measure_latency(model, x, runs=1, warmup=0)
    assert not model.training


def test_runs_in_eval_mode_without_grad():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            return x

    measure_latency(Probe().train(), torch.zeros(1), runs=1, warmup=0)
    assert seen == {"training": False, "grad": False}


def test_to_device_and_cpu_fp32_copy():
    batch = {"ids": torch.ones(2, 3, dtype=torch.long), "pair": (torch.ones(2, dtype=torch.half), 7)}
    moved = to_device(batch, "cpu", torch.float32)
    assert moved["ids"].dtype == torch.long
    assert moved["pair"][0].dtype == torch.float32 and moved["pair"][1] == 7
    model = TinyCNN().to(torch.bfloat16)
    copy = cpu_fp32_copy(model)
    assert all(p.dtype == torch.float32 for p in copy.parameters())
    assert copy.bn.num_batches_tracked.dtype == torch.long
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert copy.conv.weight.data_ptr() != model.conv.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------- tensor memory

from leankd.measure import tensor_memory  # noqa: E402
from leankd.measure import memory as memory_module  # noqa: E402

_B = 1e6  # bytes per MB in tensor_memory


def test_tensor_memory_linear_weights_and_activations():
    res = tensor_memory(nn.Linear(1000, 1000), torch.randn(64, 1000))
    assert res["kind"] == "tensor_bytes" and res["batch_size"] == 64
    assert res["weights_mb"] == pytest.approx((1000 * 1000 * 4 + 1000 * 4) / _B)
    assert res["inputs_mb"] == pytest.approx(64 * 1000 * 4 / _B)
    assert res["activations_peak_mb"] * _B >= 64 * 1000 * 4
    assert res["peak_mb"] == pytest.approx(res["weights_mb"] + res["inputs_mb"] + res["activations_peak_mb"])


class _ViewInplaceTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 20)

    def forward(self, x):
        y = self.fc(x).relu_()  # in place: no new storage
        v = y.view(64, 4, 5)  # view: shares y's storage
        return v, y[:, :3], y.t()  # tuple of views


def test_tensor_memory_views_inplace_and_tuples_count_once():
    res = tensor_memory(_ViewInplaceTuple(), torch.randn(64, 10))
    assert res["activations_peak_mb"] * _B == 64 * 20 * 4  # only the Linear output
    assert res["weights_mb"] * _B == (10 * 20 + 20) * 4
    assert res["inputs_mb"] * _B == 64 * 10 * 4


class _Temporaries(nn.Module):
    def forward(self, x):
        a = x * 2
        b = a * 2  # a and b alive: 2 tensors
        del a
        c = b * 2  # b and c alive: still 2
        del b
        return c + 1  # c and the result: 2


def test_tensor_memory_subtracts_freed_storages():
    x = torch.randn(100, 100)
    res = tensor_memory(_Temporaries(), x)
    assert res["activations_peak_mb"] * _B == 2 * x.numel() * 4  # a peak of two live tensors, not four
    assert res["weights_mb"] == 0


class _UsesOutsideTensors(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.arange(60.0)  # plain attribute: neither a parameter nor a buffer

    def forward(self, x):
        x.add_(1)  # in place on the input
        return self.table.view(6, 10)[: x.shape[0]], x.view(-1)


def test_tensor_memory_ignores_storages_made_outside_the_forward():
    res = tensor_memory(_UsesOutsideTensors(), torch.zeros(3, 4))
    assert res["activations_peak_mb"] == 0
    assert res["inputs_mb"] * _B == 3 * 4 * 4


def test_tensor_memory_larger_model_larger_peak_and_repeatable():
    small = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    big = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(64, 32)
    s, b = tensor_memory(small, x), tensor_memory(big, x)
    assert b["peak_mb"] > s["peak_mb"]
    assert b["weights_mb"] > s["weights_mb"] and b["activations_peak_mb"] > s["activations_peak_mb"]
    assert tensor_memory(big, x) == b
    # Linear, ReLU (new tensor), Linear: peak when the second Linear's output exists next to the ReLU output.
    assert s["activations_peak_mb"] * _B == 64 * 16 * 4 * 2


def test_tensor_memory_cnn_with_buffers_and_dict_inputs():
    res = tensor_memory(TinyCNN(), torch.randn(4, 3, 8, 8))
    # conv 3->4 (3*4*9 + 4), BN weight/bias/running_mean/running_var (4 each) + num_batches_tracked (int64),
    # Linear 4->10 (40 + 10); float32 = 4 bytes.
    assert res["weights_mb"] * _B == ((3 * 4 * 9 + 4) + 16 + (4 * 10 + 10)) * 4 + 8
    assert res["activations_peak_mb"] * _B >= 2 * 4 * 4 * 8 * 8  # conv output and BN output alive together
    batch = {"input_ids": torch.randint(0, 50, (3, 5)), "attention_mask": torch.ones(3, 5)}
    res = tensor_memory(DictModel(), batch, forward=_dict_forward)
    assert res["batch_size"] == 3 and res["inputs_mb"] * _B == 3 * 5 * 8 + 3 * 5 * 4
    assert res["activations_peak_mb"] > 0


def test_tensor_memory_restores_modes_and_runs_without_grad():
    model = TinyCNN().train()
    model.bn.eval()
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    tensor_memory(model, torch.randn(2, 3, 8, 8))
    assert seen and all(s == (False, False) for s in seen)
    assert model.training and model.conv.training and model.head.training and not model.bn.training


def test_tensor_memory_not_available_falls_back(monkeypatch):
    def broken():
        raise ImportError("no dispatch modes here")

    monkeypatch.setattr(memory_module, "_make_live_storage_counter", broken)
    model = nn.Linear(4, 2).train()
    res = tensor_memory(model, torch.randn(5, 4))
    assert res["peak_mb"] is None and res["kind"] == "not available: ImportError: no dispatch modes here"
    assert res["batch_size"] == 5 and model.training


def test_tensor_memory_tracking_error_is_reported_but_model_errors_raise(monkeypatch):
    class Fails(nn.Module):
        def forward(self, x):
            raise ValueError("model bug")

    with pytest.raises(ValueError, match="model bug"):
        tensor_memory(Fails(), torch.zeros(2, 2), warmup=False)

    def storages_fail(t):
        raise RuntimeError("storage lookup failed")

    monkeypatch.setattr(memory_module, "_storages_of", storages_fail)
    # Weights/inputs registration fails before the forward: reported as not available, not raised.
    res = tensor_memory(nn.Linear(4, 2), torch.randn(5, 4))
    assert res["peak_mb"] is None and res["kind"].startswith("not available: RuntimeError")

    monkeypatch.undo()
    real = memory_module._storages_of

    def fail_on_output(t):
        if tuple(t.shape) == (5, 2):  # only the Linear's output, seen inside the dispatch mode
            raise RuntimeError("storage lookup failed in dispatch")
        return real(t)

    monkeypatch.setattr(memory_module, "_storages_of", fail_on_output)
    model = nn.Linear(4, 2).train()
    res = tensor_memory(model, torch.randn(5, 4))
    assert res["peak_mb"] is None and res["kind"] == "not available: RuntimeError: storage lookup failed in dispatch"
    assert model.training


def test_profile_model_cpu_memory_is_tensor_bytes():
    prof = profile_model(TinyCNN(), lambda bs: torch.randn(bs, 3, 8, 8), batch_sizes=(1, 4), runs=1, warmup=0,
                         cpu_latency=False)
    direct = tensor_memory(TinyCNN(), torch.randn(4, 3, 8, 8))
    one = tensor_memory(TinyCNN(), torch.randn(1, 3, 8, 8))
    mem = prof["memory"]
    assert set(mem) == {"inference_peak_mb", "inference_delta_mb", "kind", "batch_size", "model_memory_mb"}
    assert mem["model_memory_mb"] == pytest.approx(one["weights_mb"] + one["activations_peak_mb"])
    assert mem["kind"] == "tensor_bytes" and mem["batch_size"] == 4
    assert mem["inference_delta_mb"] == direct["activations_peak_mb"]
    assert mem["inference_peak_mb"] == pytest.approx(direct["peak_mb"])
    assert mem["inference_peak_mb"] > mem["inference_delta_mb"] > 0


def test_interleaved_latency_gives_every_model_the_same_runs_and_rotates_order():
    import time as _time

    from leankd.measure.latency import interleaved_latency

    calls = []

    class Sleeper(torch.nn.Module):
        def __init__(self, name, ms):
            super().__init__()
            self.name, self.ms = name, ms
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            calls.append((self.name, x.shape[0]))
            _time.sleep(self.ms / 1000)
            return x

    models = {"a": Sleeper("a", 1), "b": Sleeper("b", 4)}
    out = interleaved_latency(models, lambda bs: torch.zeros(bs, 2), [1, 3], runs=30, warmup=2, rounds=3)
    assert set(out) == {"a", "b"} and {"batch_1", "batch_3", "reliable", "noise", "load_avg"} <= set(out["a"])
    assert out["a"]["batch_1"]["runs"] >= 30 and out["b"]["batch_1"]["runs"] >= 30
    assert out["b"]["batch_1"]["median_ms"] > out["a"]["batch_1"]["median_ms"] + 2
    for bs in (1, 3):
        seq = [name for name, b in calls if b == bs][8:]  # after 2 warm-up calls + 2 sizing calls each
        segments = [n for i, n in enumerate(seq) if i == 0 or seq[i - 1] != n]
        # rounds a,b | b,a | a,b: the middle round's first model continues the first round's last
        assert segments == ["a", "b", "a", "b"], segments
        assert len(out["a"][f"batch_{bs}"]["round_ms"]) == 3


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_and_gru_macs_are_counted_on_the_cpu(bidirectional):
    """nn.LSTM runs as one fused oneDNN op on x86 CPUs that FlopCounterMode has no formula for (it counted 0);
    MACs per step are the gate projections: G*H*(I + H) per layer and direction (layer 2 reads both directions)."""
    d = 2 if bidirectional else 1
    lstm = torch.nn.LSTM(8, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
    steps_batch = 7 * 2
    expected = steps_batch * d * (20 * 8 + 20 * 5) + steps_batch * d * (20 * 5 * d + 20 * 5)
    assert count_flops(lstm, torch.randn(2, 7, 8))["macs"] == expected
    gru = torch.nn.GRU(8, 5, batch_first=True)
    assert count_flops(gru, torch.randn(2, 7, 8))["macs"] == steps_batch * (15 * 8 + 15 * 5)
