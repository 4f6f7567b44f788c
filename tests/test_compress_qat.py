"""Quantization-aware distillation pieces: the fake quantizers reproduce ONNX Runtime's int8 grid (hand-computed),
BatchNorm folding preserves the function, stripping leaves a plain model with grid weights, and the int8 ONNX model
of a QAT-prepared network computes what its fake-quantized PyTorch twin computes."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from leankd.compress.qat import ActivationFakeQuant, WeightFakeQuant, fold_batchnorm, prepare_qat
from leankd.errors import LeanKDError


def test_weight_fake_quant_matches_ort_reduce_range_grid():
    # per output channel: scale = max|w| / 64, values rounded to integers in [-64, 64], zero point 0
    w = torch.tensor([[0.64, -0.32, 0.006, -0.0049], [1.28, 0.021, -0.5, 0.0]])
    fq = WeightFakeQuant()
    assert torch.equal(fq(w), w)  # off until switched on
    fq.quantize = True
    expected = torch.tensor([[0.64, -0.32, 0.01, 0.0], [1.28, 0.02, -0.5, 0.0]])
    torch.testing.assert_close(fq(w), expected, rtol=0, atol=1e-7)


def test_activation_fake_quant_moving_average_scale_zero_point_and_ste():
    fq = ActivationFakeQuant(averaging=0.5).train()
    fq(torch.tensor([-1.0, 0.5, 3.0]))  # first batch sets the range
    assert (fq.min_val.item(), fq.max_val.item()) == (-1.0, 3.0)
    fq(torch.tensor([-2.0, 5.0]))  # later batches move it halfway (averaging 0.5)
    assert (fq.min_val.item(), fq.max_val.item()) == (-1.5, 4.0)
    fq.eval()(torch.tensor([-100.0, 100.0]))  # evaluation data never moves the range
    assert (fq.min_val.item(), fq.max_val.item()) == (-1.5, 4.0)

    scale, zp = fq.scale_zero_point()
    assert scale.item() == pytest.approx(5.5 / 255) and zp.item() == round(1.5 / (5.5 / 255))  # ORT's formulas
    fq.quantize = True
    x = torch.tensor([0.1, -3.0, 10.0], requires_grad=True)
    y = fq(x)
    s = 5.5 / 255
    assert y[0].item() == pytest.approx(round(0.1 / s) * s, abs=1e-6)
    assert y[1].item() == pytest.approx((0 - zp.item()) * s, abs=1e-6)  # clamped to the range's low end
    assert y[2].item() == pytest.approx((255 - zp.item()) * s, abs=1e-6)  # and its high end
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]  # straight-through inside the range, zero where clamped


def _convnet():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():  # non-trivial statistics, so folding is really exercised
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_prepare_folds_batchnorm_without_changing_the_function():
    net, x = _convnet(), torch.randn(4, 3, 16, 16)
    qat = prepare_qat(net)
    assert qat.folded_batchnorms == 2 and not qat.notes
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qat.model.modules())
    assert len(qat.quantized) == 3  # two convs and the head
    with torch.no_grad():
        torch.testing.assert_close(qat.model.eval()(x), net(x), rtol=1e-4, atol=1e-5)  # quantization still off
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the caller's model is untouched


def test_untraceable_model_is_still_quantized_and_says_batchnorm_was_not_folded():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # Python control flow on a tensor value: torch.fx cannot trace this
                x = -x
            return self.head(self.bn(self.conv(x)).mean((2, 3)))

    model, folded, why = fold_batchnorm(DataDependent())
    assert folded == 0 and "torch.fx could not trace" in why
    qat = prepare_qat(DataDependent())
    assert len(qat.quantized) == 2 and "BatchNorm not folded" in qat.notes[0]


def test_strip_leaves_a_plain_model_with_weights_on_the_int8_grid():
    qat = prepare_qat(_convnet())
    qat.calibrate([torch.randn(8, 3, 16, 16)], lambda m, x: m(x))
    stripped = qat.strip()
    assert not any(parametrize.is_parametrized(m) for m in stripped.modules())
    assert not any(isinstance(m, (ActivationFakeQuant, WeightFakeQuant)) for m in stripped.modules())
    assert not any(m._forward_pre_hooks for m in stripped.modules())
    for name in ("0", "3", "8"):
        w = getattr(stripped, name).weight.detach()
        q = w / (w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / 64)
        torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-4)  # integers ...
        assert q.abs().max() <= 64 + 1e-4  # ... in ORT's reduce_range


def test_ort_int8_uses_exactly_the_grid_and_ranges_qat_trained_on(tmp_path):
    """ORT requantizes the stripped weights without moving them (they already lie on its grid) and calibrates the
    same activation range as the QAT observer - so what QAT learned is what the int8 model runs."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from leankd.compress.onnx import export_onnx, quantize_onnx_static

    torch.manual_seed(1)
    calib = torch.randn(32, 3, 16, 16)
    qat = prepare_qat(_convnet())
    qat.calibrate([calib], lambda m, x: m(x))  # one batch: the observer's range is that batch's min/max, as ORT's
    first_input_scale = qat.model.get_submodule("0").input_fake_quant.scale_zero_point()
    plain = qat.strip()
    export_onnx(plain, calib[:2], tmp_path / "m.onnx")
    quantize_onnx_static(tmp_path / "m.onnx", tmp_path / "q.onnx", [calib], quant_format="QDQ")

    graph = onnx.load(tmp_path / "q.onnx").graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dequantized = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and init.get(node.input[0]) is not None \
                and init[node.input[0]].dtype.name == "int8" and init[node.input[0]].ndim >= 2:
            q, scale = init[node.input[0]], init[node.input[1]]
            shape = (-1,) + (1,) * (q.ndim - 1)
            dequantized[q.shape] = torch.from_numpy(q.astype("float32") * scale.reshape(shape))
    for name in ("0", "3", "8"):
        w = plain.get_submodule(name).weight.detach()
        torch.testing.assert_close(dequantized[tuple(w.shape)], w, rtol=0, atol=1e-6)

    input_node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    ort_scale, ort_zero_point = init[input_node.input[1]].item(), init[input_node.input[2]].item()
    assert ort_scale == pytest.approx(first_input_scale[0].item(), rel=1e-5)
    assert ort_zero_point == first_input_scale[1].item()


def test_qat_target_outside_a_recipe_names_what_is_missing(tmp_path):
    from leankd.compress.targets import build_artifact

    class _Task:
        pass

    with pytest.raises(LeanKDError, match="supplies the teacher and loss"):
        build_artifact("qat-control", _convnet(), _Task(), tmp_path)


def test_keyword_spotting_models_fold_their_batchnorm():
    from leankd.models import create_model

    for name in ("crnn_small", "dscnn_s"):  # their input checks are skipped while torch.fx traces
        qat = prepare_qat(create_model(name, num_classes=12))
        assert qat.folded_batchnorms >= 1 and not qat.notes, name


def test_calibration_takes_the_min_max_over_all_batches_like_ort():
    fq = ActivationFakeQuant(averaging=0.01)
    fq.train()
    fq.calibrating = True
    for hi in (1.0, 10.0, 3.0):
        fq(torch.tensor([-0.5, hi]))
    assert (fq.min_val.item(), fq.max_val.item()) == (-0.5, 10.0)
