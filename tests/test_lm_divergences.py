"""Token-level divergences (kd/methods/divergences.py): values by hand, masking, chunking, gradient accumulation,
bf16 autocast and extreme logits, the JSD / skew limits, and their recipe names."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from leankd.errors import RecipeError
from leankd.kd.losses import KD, LossInputs
from leankd.kd.methods.divergences import (ForwardKL, GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL,
                                           TotalVariation)
from leankd.kd.methods.logit_standardization import standardize
from leankd.kd.registry import TRANSFORMS, BuildContext, build_logit_loss
from leankd.recipe import parse_recipe

MINIMAL = {"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"}}
IGNORE = -100
ALL = [ForwardKL, ReverseKL, GeneralizedJSD, SkewKL, SkewReverseKL, TotalVariation]


def _value(loss, student, teacher, targets):
    return loss(LossInputs(student=student, targets=targets, teacher=teacher))


# values by hand -----------------------------------------------------------------------------------------------------
# Row A: teacher logits [0, ln 3] -> p_t = [1/4, 3/4]; student [0, 0] -> p_s = [1/2, 1/2].
# Row B: the two swapped: p_t = [1/2, 1/2], p_s = [1/4, 3/4].
# Row C: anything, masked (target -100): it must not count, so the loss is the mean of rows A and B.
#   forward KL   A: 1/4 ln(1/2) + 3/4 ln(3/2)                 B: 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
#   reverse KL   A: 1/2 ln(4/3) (B's forward)                  B: A's forward
#   JSD(1/2)     A: m = [3/8, 5/8]; 1/2 [1/4 ln(2/3) + 3/4 ln(6/5)] + 1/2 [1/2 ln(4/3) + 1/2 ln(4/5)];  B: the same
#                   (JSD(1/2) is symmetric in p_t, p_s)
#   skew KL 0.1  A: m = 0.1 p_t + 0.9 p_s = [19/40, 21/40]: 1/4 ln(10/19) + 3/4 ln(10/7)
#                B: m = [0.1/2 + 0.9/4, 0.1/2 + 0.9·3/4] = [11/40, 29/40]: 1/2 ln(20/11) + 1/2 ln(20/29)
#   skew rev 0.1 A: m = 0.1 p_s + 0.9 p_t = [11/40, 29/40]: 1/2 ln(20/11) + 1/2 ln(20/29)
#                B: m = 0.1 p_s + 0.9 p_t = [19/40, 21/40]: 1/4 ln(10/19) + 3/4 ln(10/7)
#   TVD          A and B: 1/2 (1/4 + 1/4) = 1/4
# At T = 2 the teacher logits [0, 2 ln 3] give the same p_t, so the value is the T = 1 one times T² = 4 (TVD: x 1).
FWD_A = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
FWD_B = 0.5 * math.log(4 / 3)
JSD_HALF = (0.5 * (0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))
            + 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)))
SKEW_A = 0.25 * math.log(10 / 19) + 0.75 * math.log(10 / 7)
SKEW_B = 0.5 * math.log(20 / 11) + 0.5 * math.log(20 / 29)
BY_HAND = {
    "forward_kl": (ForwardKL, {}, (FWD_A + FWD_B) / 2),
    "reverse_kl": (ReverseKL, {}, (FWD_B + FWD_A) / 2),
    "jsd": (GeneralizedJSD, {"beta": 0.5}, JSD_HALF),
    "skew_kl": (SkewKL, {"alpha": 0.1}, (SKEW_A + SKEW_B) / 2),
    "skew_reverse_kl": (SkewReverseKL, {"alpha": 0.1}, (SKEW_B + SKEW_A) / 2),
    "tvd": (TotalVariation, {}, 0.25),
}


def _rows_abc(temperature):
    ln3 = temperature * math.log(3)
    teacher = torch.tensor([[0.0, ln3], [0.0, 0.0], [5.0, -5.0]])
    student = torch.tensor([[0.0, 0.0], [0.0, ln3], [-7.0, 7.0]])
    return student, teacher, torch.tensor([1, 0, IGNORE])


@pytest.mark.parametrize("name", list(BY_HAND))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_value_by_hand_on_two_rows_with_a_third_masked(name, temperature):
    cls, kw, expected = BY_HAND[name]
    student, teacher, targets = _rows_abc(temperature)
    value = _value(cls(temperature=temperature, **kw), student, teacher, targets)
    scale = 1.0 if name == "tvd" else temperature ** 2
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected * scale, rel=1e-5)


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _reference(name, s, t, temperature, param):
    """The divergence of one row in plain Python, from its definition."""
    ps, pt = _softmax(s, temperature), _softmax(t, temperature)
    mix = lambda a, p, q: [a * x + (1 - a) * y for x, y in zip(p, q)]  # noqa: E731
    return {
        "forward_kl": lambda: _kl(pt, ps),
        "reverse_kl": lambda: _kl(ps, pt),
        "jsd": lambda: param * _kl(pt, mix(param, pt, ps)) + (1 - param) * _kl(ps, mix(param, pt, ps)),
        "skew_kl": lambda: _kl(pt, mix(param, pt, ps)),
        "skew_reverse_kl": lambda: _kl(ps, mix(param, ps, pt)),
        "tvd": lambda: 0.5 * sum(abs(a - b) for a, b in zip(pt, ps)),
    }[name]()


@pytest.mark.parametrize("name", list(BY_HAND))
def test_value_against_the_definition_on_three_classes_at_t_3(name):
    cls, _, _ = BY_HAND[name]
    param = {"jsd": 0.3, "skew_kl": 0.2, "skew_reverse_kl": 0.2}.get(name)
    kw = {} if param is None else {"beta" if name == "jsd" else "alpha": param}
    s = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
    t = [[3.0, 0.0, 1.0], [2.0, 2.5, -4.0]]
    expected = sum(_reference(name, a, b, 3.0, param) for a, b in zip(s, t)) / 2 * (1 if name == "tvd" else 9)
    value = _value(cls(temperature=3.0, **kw), torch.tensor(s), torch.tensor(t), torch.tensor([0, 2]))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_forward_kl_equals_kd_when_no_row_is_masked():
    """Same divergence, same T² convention: only masking and chunking set them apart."""
    torch.manual_seed(0)
    s, t = torch.randn(6, 9) * 3, torch.randn(6, 9) * 3
    y = torch.randint(0, 9, (6,))
    for temperature in (1.0, 4.0):
        inputs = LossInputs(student=s, targets=y, teacher=t)
        assert ForwardKL(temperature, chunk_rows=4)(inputs).item() == pytest.approx(KD(temperature)(inputs).item(),
                                                                                    rel=1e-6)


def test_jsd_limits_are_the_two_kls_scaled_by_beta():
    """GKD: JSD(β)/β -> KL(p_t || p_s) as β -> 0 and JSD(β)/(1-β) -> KL(p_s || p_t) as β -> 1. The error is first
    order (expanding log m around p_s: JSD/β = KL(p_t || p_s) - β·χ²(p_t || p_s)/2 + O(β²)), so it drops ~10x from
    β = 1e-2 to 1e-3 (below 1e-4 fp32 rounding takes over, so the test stops at 1e-3)."""
    torch.manual_seed(1)
    s, t, y = torch.randn(5, 7), torch.randn(5, 7), torch.zeros(5, dtype=torch.long)
    fwd, rev = _value(ForwardKL(), s, t, y).item(), _value(ReverseKL(), s, t, y).item()
    errors_low, errors_high = [], []
    for b in (1e-2, 1e-3):
        errors_low.append(abs(_value(GeneralizedJSD(beta=b), s, t, y).item() / b - fwd) / fwd)
        errors_high.append(abs(_value(GeneralizedJSD(beta=1 - b), s, t, y).item() / b - rev) / rev)
    assert errors_low[1] < 3e-3 and errors_high[1] < 3e-3
    assert errors_low[0] / errors_low[1] > 5 and errors_high[0] / errors_high[1] > 5


def test_skew_alpha_zero_is_the_plain_kl():
    torch.manual_seed(2)
    s, t, y = torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4, dtype=torch.long)
    assert _value(SkewKL(alpha=0.0), s, t, y).item() == pytest.approx(_value(ForwardKL(), s, t, y).item(), rel=1e-6)
    assert _value(SkewReverseKL(alpha=0.0), s, t, y).item() == pytest.approx(_value(ReverseKL(), s, t, y).item(),
                                                                             rel=1e-6)


# masking -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_a_masked_row_changes_nothing_not_even_a_nan_in_it(cls):
    torch.manual_seed(3)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([1, IGNORE, 3, 0])
    kept = [0, 2, 3]
    alone = _value(cls(), s[kept], t[kept], y[kept])
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[1], t_bad[1] = float("nan"), 1e4
    s_bad.requires_grad_()
    value = _value(cls(chunk_rows=2), s_bad, t_bad, y)
    assert value.item() == pytest.approx(alone.item(), rel=1e-6)
    value.backward()
    assert torch.equal(s_bad.grad[1], torch.zeros(5)) and torch.isfinite(s_bad.grad).all()


@pytest.mark.parametrize("cls", ALL)
def test_all_rows_masked_gives_zero_and_a_zero_gradient(cls):
    s = torch.randn(3, 4, requires_grad=True)
    value = _value(cls(), s, torch.randn(3, 4), torch.full((3,), IGNORE))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(s.grad, torch.zeros(3, 4))


def test_sequence_shaped_logits_are_rows_of_tokens():
    """[B, L, V] logits with [B, L] targets: the mean over unmasked tokens, not over sequences."""
    torch.manual_seed(4)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    y = torch.tensor([[1, 2, IGNORE], [IGNORE, IGNORE, 4]])  # 2 tokens in the first sequence, 1 in the second
    rows = [_value(ForwardKL(), s[i, j:j + 1], t[i, j:j + 1], y[i, j:j + 1]).item()
            for i, j in ((0, 0), (0, 1), (1, 2))]
    assert _value(ForwardKL(), s, t, y).item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="5 targets for 6 rows"):
        _value(ForwardKL(), s, t, y.reshape(-1)[:5])


# chunking ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_chunked_equals_unchunked_value_and_gradient(cls):
    torch.manual_seed(5)
    base, t = torch.randn(10, 13) * 3, torch.randn(10, 13) * 3
    y = torch.tensor([0, 1, IGNORE, 3, 4, IGNORE, 6, 7, 8, 9])
    results = []
    for chunk in (1, 3, 4, 7, 10, 1000):  # 3, 4 and 7 do not divide 10
        s = base.clone().requires_grad_()
        value = _value(cls(temperature=2.0, chunk_rows=chunk), s, t, y)
        value.backward()
        results.append((value.item(), s.grad))
    ref_value, ref_grad = results[-1]
    for value, grad in results[:-1]:
        assert value == pytest.approx(ref_value, abs=1e-6)
        assert torch.allclose(grad, ref_grad, atol=1e-7)


class _LargestFloat32(TorchDispatchMode):
    """Records the element count of the largest fp32 tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("cls", [ForwardKL, GeneralizedJSD])
def test_no_fp32_tensor_larger_than_one_chunk_exists(cls):
    """bf16 logits [64, 512]: with chunk_rows 8 no fp32 tensor over 8 x 512 elements is ever made, forward or
    backward; with one chunk of all rows there is one of 64 x 512 (so the check can fail)."""
    torch.manual_seed(6)
    s0, t = torch.randn(64, 512).to(torch.bfloat16), torch.randn(64, 512).to(torch.bfloat16)
    y = torch.zeros(64, dtype=torch.long)
    seen = {}
    for chunk in (8, 64):
        s = s0.clone().requires_grad_()
        with _LargestFloat32() as mode:
            _value(cls(chunk_rows=chunk), s, t, y).backward()
        seen[chunk] = mode.largest
        assert s.grad.dtype == torch.bfloat16
    assert seen[8] == 8 * 512 and seen[64] == 64 * 512


# gradient accumulation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_two_halves_weighted_by_their_unmasked_rows_give_the_full_batch_gradient(cls):
    torch.manual_seed(7)
    head = torch.nn.Linear(6, 11)
    x, t = torch.randn(8, 6), torch.randn(8, 11) * 2
    y = torch.tensor([1, IGNORE, 2, 3, IGNORE, IGNORE, IGNORE, 4])  # halves with 3 and 1 unmasked rows
    loss = cls(temperature=2.0, chunk_rows=3)

    def grads(weighted_parts):
        head.zero_grad()
        for rows, w in weighted_parts:
            (w * _value(loss, head(x[rows]), t[rows], y[rows])).backward()
        return [p.grad.clone() for p in head.parameters()]

    full = grads([(slice(0, 8), 1.0)])
    halves = grads([(slice(0, 4), 3 / 4), (slice(4, 8), 1 / 4)])
    for a, b in zip(full, halves):
        assert torch.allclose(a, b, atol=1e-6)
    # weighting by all rows (4/8 each, what counts rows rather than tokens would do) is a different gradient
    by_rows = grads([(slice(0, 4), 0.5), (slice(4, 8), 0.5)])
    assert not torch.allclose(full[0], by_rows[0], atol=1e-4)


# bf16 and extreme logits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_bf16_autocast_gives_the_fp32_loss_within_tolerance(cls):
    """The logits come out of a Linear under CPU bf16 autocast. Computed in fp32 from those bf16 values, the loss
    equals the fp32 computation on the same values (1e-6); against the loss of the fp32 model it differs only by the
    rounding of the logits to bf16 (8 significant bits, ≤ 0.4 % per logit, averaging out over the vocabulary: measured
    ≤ 1.6e-4 relative here; stated tolerance 2e-3 relative)."""
    torch.manual_seed(8)
    head = torch.nn.Linear(16, 50)
    x, t = torch.randn(12, 16), torch.randn(12, 50)
    y = torch.tensor([0] * 10 + [IGNORE] * 2)
    loss = cls(temperature=2.0, chunk_rows=5)
    fp32 = _value(loss, head(x), t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        value = _value(loss, logits, t.to(torch.bfloat16), y)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    same_values = _value(loss, logits.float(), t.to(torch.bfloat16).float(), y)
    assert value.item() == pytest.approx(same_values.item(), rel=1e-6, abs=1e-7)
    assert value.item() == pytest.approx(fp32.item(), rel=2e-3)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_stay_finite(cls, dtype):
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]).to(dtype).requires_grad_()
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -1e4]]).to(dtype)
    value = _value(cls(temperature=1.0), s, t, torch.tensor([0, 1]))
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(s.grad.float()).all()


# transforms, names, recipe -------------------------------------------------------------------------------------------
def test_a_logit_transform_applies_row_by_row_within_chunks():
    torch.manual_seed(9)
    s, t, y = torch.randn(7, 8) * 4, torch.randn(7, 8) * 4, torch.zeros(7, dtype=torch.long)
    got = _value(ForwardKL(2.0, chunk_rows=3, transform=TRANSFORMS.get("standardize")), s, t, y)
    assert got.item() == pytest.approx(_value(ForwardKL(2.0), standardize(s), standardize(t), y).item(), rel=1e-6)


def test_descriptions_leave_chunk_rows_out_of_the_fingerprint():
    ctx = BuildContext(temperature=1.0)
    parsed = parse_recipe({**MINIMAL, "distill": {"loss": [
        {"kind": "jsd", "beta": 0.9, "chunk_rows": 64}, {"kind": "skew_reverse_kl", "temperature": 2},
        {"kind": "forward_kl", "transform": "standardize"}, {"kind": "tvd", "weight": 0.5}, {"kind": "ce"}]}})
    loss = build_logit_loss(parsed.distill.loss, ctx)
    assert loss.describe() == "jsd(b=0.9,T=1) + skew_reverse_kl(a=0.1,T=2) + forward_kl(T=1,ls) + 0.5*tvd(T=1) + ce"
    assert loss.losses[0].chunk_rows == 64
    assert ForwardKL(chunk_rows=1).describe() == ForwardKL(chunk_rows=4096).describe() == "forward_kl(T=1)"


@pytest.mark.parametrize("beta", [0, 1])
def test_jsd_beta_at_an_end_is_a_recipe_error_naming_the_kl_to_use(beta):
    use = "forward_kl" if beta == 0 else "reverse_kl"
    with pytest.raises(RecipeError, match=f"beta must be strictly between 0 and 1.*{use}"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "jsd", "beta": beta}]}})
    with pytest.raises(RecipeError, match="strictly between 0 and 1"):
        GeneralizedJSD(beta=beta)


def test_bad_parameters_are_recipe_errors():
    with pytest.raises(RecipeError, match="chunk_rows"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "forward_kl", "chunk_rows": 0}]}})
    with pytest.raises(RecipeError, match="alpha"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "skew_kl", "alpha": 1}]}})
    with pytest.raises(RecipeError, match="temperature must be > 0"):
        ReverseKL(temperature=0)


def test_missing_or_mismatched_teacher_logits_are_clear_errors():
    s = torch.randn(2, 4)
    with pytest.raises(ValueError, match="reverse_kl needs teacher logits"):
        ReverseKL()(LossInputs(student=s, targets=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="share the vocabulary"):
        _value(TotalVariation(), s, torch.randn(2, 5), torch.tensor([0, 1]))


def test_no_gradient_mode_computes_the_same_value():
    torch.manual_seed(10)
    s, t, y = torch.randn(9, 6), torch.randn(9, 6), torch.tensor([0, IGNORE] * 4 + [1])
    with_grad = _value(SkewKL(chunk_rows=2), s.clone().requires_grad_(), t, y)
    with torch.no_grad():
        without = _value(SkewKL(chunk_rows=2), s, t, y)
    assert without.item() == pytest.approx(with_grad.item(), rel=1e-7)


def test_python_api_mixes_a_divergence_with_cross_entropy():
    """The LM objective α·divergence + (1−α)·CE from `leankd.losses`, on rows of a small vocabulary."""
    import leankd.losses as L

    torch.manual_seed(11)
    s, t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    y = torch.tensor([1, 2, 3, 4, 5, 6])
    loss = 0.7 * L.GeneralizedJSD(beta=0.2) + 0.3 * L.CE()
    value = _value(loss, s, t, y)
    expected = 0.7 * _value(GeneralizedJSD(beta=0.2), s, t, y) + 0.3 * F.cross_entropy(s, y)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.describe() == "0.7*jsd(b=0.2,T=1) + 0.3*ce"
    value.backward()
    assert torch.isfinite(s.grad).all()


# top-k teacher: the tail is one bucket ------------------------------------------------------------------------------
def test_a_top_k_teacher_tail_is_one_bucket_in_value_and_gradient():
    """With a top-k cache's compact rows, forward KL equals by hand the KL over k + 1 outcomes (the stored classes and
    one tail bucket), value and gradient, whatever the chunking and at T != 1, and equals the same divergence computed
    from the dense expansion; from dense logits alone the even tail is compared class by class (which taught a flat
    tail)."""
    from leankd.kd.topk import TopKLogits, compress_top_k

    torch.manual_seed(0)
    n, v, k = 6, 12, 3
    s = torch.randn(n, v, dtype=torch.float64).float().requires_grad_()
    t_full = torch.randn(n, v) * 2
    top = TopKLogits(compress_top_k(t_full, k), k, v)
    teacher, classes = top.dense(), top.classes
    y = torch.zeros(n, dtype=torch.long)
    for temp in (1.0, 2.0):
        # by hand, from dense softmaxes: p over the k stored classes + the bucket
        log_pt, log_ps = torch.log_softmax(teacher / temp, -1), torch.log_softmax(s / temp, -1)
        stored = torch.zeros(n, v, dtype=torch.bool).scatter_(1, classes, True)
        pt_k, ps_k = log_pt.exp().gather(1, classes), log_ps.exp().gather(1, classes)
        pt_tail, ps_tail = 1 - pt_k.sum(1), log_ps.exp().masked_fill(stored, 0).sum(1)
        by_hand = ((pt_k * (pt_k.log() - ps_k.log())).sum(1)
                   + pt_tail * (pt_tail.log() - ps_tail.log())).mean() * temp ** 2
        (grad_hand,) = torch.autograd.grad(by_hand, s, retain_graph=True)
        for chunk in (None, 2, 4):
            got = ForwardKL(temperature=temp, chunk_rows=chunk)(LossInputs(student=s, targets=y, teacher_top_k=top))
            (grad,) = torch.autograd.grad(got, s)
            assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
            torch.testing.assert_close(grad, grad_hand, rtol=1e-4, atol=1e-6)
    # reverse KL over the same k + 1 outcomes, by hand (T = 1)
    log_pt, log_ps = torch.log_softmax(teacher, -1), torch.log_softmax(s, -1)
    stored = torch.zeros(n, v, dtype=torch.bool).scatter_(1, classes, True)
    pt_k, ps_k = log_pt.exp().gather(1, classes), log_ps.exp().gather(1, classes)
    pt_tail, ps_tail = 1 - pt_k.sum(1), log_ps.exp().masked_fill(stored, 0).sum(1)
    rkl_hand = ((ps_k * (ps_k.log() - pt_k.log())).sum(1) + ps_tail * (ps_tail.log() - pt_tail.log())).mean()
    rkl = ReverseKL()(LossInputs(student=s, targets=y, teacher_top_k=top))
    assert rkl.item() == pytest.approx(rkl_hand.item(), rel=1e-5)
    torch.testing.assert_close(torch.autograd.grad(rkl, s)[0], torch.autograd.grad(rkl_hand, s)[0], rtol=1e-4,
                               atol=1e-6)
    # the compact rows and their dense expansion (a loss beside it needed dense logits) give the same divergence
    for loss in (ForwardKL(), ReverseKL(), GeneralizedJSD(beta=0.3), SkewKL(alpha=0.1)):
        compact = loss(LossInputs(student=s, targets=y, teacher_top_k=top))
        both = loss(LossInputs(student=s, targets=y, teacher=teacher, teacher_top_k=top))
        assert compact.item() == pytest.approx(both.item(), rel=1e-5)
    even = ForwardKL()(LossInputs(student=s, targets=y, teacher=teacher))  # no rows: the even tail, per class
    assert abs(even.item() - by_hand.item()) > 1e-3
    # masked rows count for nothing on the compact path too
    masked = y.clone()
    masked[:2] = -100
    kept = ForwardKL()(LossInputs(student=s[2:], targets=y[2:], teacher_top_k=TopKLogits(top.rows[2:], k, v)))
    assert ForwardKL()(LossInputs(student=s, targets=masked, teacher_top_k=top)).item() == pytest.approx(
        kept.item(), rel=1e-6)
    with pytest.raises(ValueError, match="share the vocabulary"):
        ForwardKL()(LossInputs(student=s[:, :10], targets=y, teacher_top_k=top))


def test_the_cached_top_k_teacher_reaches_the_loss_compact_unless_a_loss_needs_dense_logits(tmp_path):
    """loss_inputs hands a top-k teacher's rows to the loss as they are; it expands them to dense logits only for a
    loss that reads those (the classic kd, or a divergence with a logit transform)."""
    from types import SimpleNamespace

    from leankd.kd.losses import KD, CE
    from leankd.kd.topk import TopKLogits, compress_top_k
    from leankd.train.loop import loss_inputs

    top = TopKLogits(compress_top_k(torch.randn(4, 10), 2), 2, 10)
    batch = SimpleNamespace(targets=torch.zeros(4, dtype=torch.long))
    compact = loss_inputs(torch.randn(4, 10), batch, ForwardKL() + CE(), None, None, teacher_out=top)
    assert compact.teacher_top_k is top and compact.teacher is None
    dense = loss_inputs(torch.randn(4, 10), batch, ForwardKL() + KD(temperature=2.0), None, None, teacher_out=top)
    assert dense.teacher_top_k is top and torch.equal(dense.teacher, top.dense())
    plain = loss_inputs(torch.randn(4, 10), batch, ForwardKL(), None, None, teacher_out=torch.randn(4, 10))
    assert plain.teacher_top_k is None and plain.teacher is not None


def test_the_student_bucket_log_probs_have_the_exact_gradient_even_with_a_vanishing_tail():
    """The hand-written backward of the student's k + 1 log-probabilities passes gradcheck (float64), matches
    autograd through the plain formula, and stays finite when the tail's mass is far below fp32's range."""
    from leankd.kd.topk import student_top_k_log_probs

    z = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([[0, 3], [1, 2], [8, 7], [4, 5], [6, 0]])
    assert torch.autograd.gradcheck(lambda x: student_top_k_log_probs(x, classes), (z,))
    g = torch.randn(5, 3, dtype=torch.float64)
    stored = torch.zeros(5, 9, dtype=torch.bool).scatter_(1, classes, True)
    log_p = torch.log_softmax(z, 1)
    plain = torch.cat([log_p.gather(1, classes), log_p.masked_fill(stored, float("-inf")).logsumexp(1, keepdim=True)],
                      1)
    torch.testing.assert_close(student_top_k_log_probs(z, classes), plain)
    torch.testing.assert_close(torch.autograd.grad(student_top_k_log_probs(z, classes), z, g)[0],
                               torch.autograd.grad(plain, z, g)[0])
    # the top class 200 above the rest: the tail holds e^-200 of the mass (0 in fp32), its gradient stays finite
    far = torch.zeros(2, 6)
    far[:, 0] = 200.0
    far.requires_grad_()
    out = student_top_k_log_probs(far, torch.tensor([[0], [0]]))
    (grad,) = torch.autograd.grad(out, far, torch.ones(2, 2))
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(grad[:, 1:], torch.full((2, 5), 0.2))  # g_tail · p_j / q_tail, an even tail


def test_generated_rows_drops_the_prompt_rows_of_a_top_k_teacher_too():
    """On-policy's GeneratedRows keeps only the rows with a target: the top-k teacher's compact rows are cut with the
    student's, so the divergence compares row i with row i (it used to keep every compact row: a shape error, or
    another row's classes)."""
    from leankd.kd.losses import KD
    from leankd.kd.topk import TopKLogits, compress_top_k
    from leankd.lm.stages import GeneratedRows

    torch.manual_seed(1)
    n, v, k = 8, 20, 4
    s, t = torch.randn(n, v), torch.randn(n, v) * 2
    top = TopKLogits(compress_top_k(t, k), k, v)
    y = torch.randint(v, (n,))
    y[:3] = -100  # prompt rows
    keep = y != -100
    inner = ForwardKL() * 0.5 + KD(temperature=2.0) * 0.5
    got = GeneratedRows(inner)(LossInputs(student=s, targets=y, teacher=top.dense(), teacher_top_k=top))
    want = inner(LossInputs(student=s[keep], targets=y[keep], teacher=top.dense()[keep],
                            teacher_top_k=top.select(keep)))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
