"""Each loss against a value computed by hand, composition, and fp32 behaviour under half precision."""
import math

import pytest
import torch
import torch.nn.functional as F

import leankd
from leankd.losses import CE, KD, MSE, LossInputs, SoftCE, mix

LN2, LN3 = math.log(2), math.log(3)
# student uniform over 2 classes, teacher (0.75, 0.25): KL(p_t || p_s) = 0.75 ln 1.5 + 0.25 ln 0.5
KL_HAND = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812


def inputs(student, teacher=None, targets=(0,)):
    t = None if teacher is None else torch.tensor(teacher, dtype=torch.float32)
    return LossInputs(student=torch.tensor(student, dtype=torch.float32), teacher=t, targets=torch.tensor(targets))


def test_kd_matches_hand_value_at_t1():
    assert KD(1.0)(inputs([[0.0, 0.0]], [[LN3, 0.0]])).item() == pytest.approx(0.130812, abs=1e-5)
    assert KL_HAND == pytest.approx(0.130812, abs=1e-5)


def test_kd_scales_by_t_squared():
    # logits doubled and T = 2 give the same distributions, so the value is T^2 * KL = 4 * 0.130812
    assert KD(2.0)(inputs([[0.0, 0.0]], [[2 * LN3, 0.0]])).item() == pytest.approx(4 * KL_HAND, abs=1e-5)


def test_kd_is_batch_mean():
    one = KD(1.0)(inputs([[0.0, 0.0]], [[LN3, 0.0]], targets=(0,)))
    two = KD(1.0)(inputs([[0.0, 0.0], [0.0, 0.0]], [[LN3, 0.0], [0.0, 0.0]], targets=(0, 0)))
    assert two.item() == pytest.approx(one.item() / 2, abs=1e-6)  # second row has zero divergence


def test_kd_zero_when_equal():
    assert KD(4.0)(inputs([[1.0, -2.0, 3.0]], [[1.0, -2.0, 3.0]])).item() == pytest.approx(0.0, abs=1e-7)


def test_ce_hand_values():
    # p = (0.5, 0.25, 0.25), label 0 -> ln 2; label smoothing 0.3 -> q = (0.8, 0.1, 0.1)
    x = [[LN2, 0.0, 0.0]]
    assert CE()(inputs(x)).item() == pytest.approx(LN2, abs=1e-6)
    assert CE(0.3)(inputs(x)).item() == pytest.approx(0.8 * LN2 + 0.2 * 2 * LN2, abs=1e-6)


def test_soft_ce_is_kd_plus_teacher_entropy():
    # -(0.75 ln 0.5 + 0.25 ln 0.5) = ln 2 = KL + H(0.75, 0.25)
    assert SoftCE(1.0)(inputs([[0.0, 0.0]], [[LN3, 0.0]])).item() == pytest.approx(LN2, abs=1e-6)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert KL_HAND + entropy == pytest.approx(LN2, abs=1e-6)


def test_mse_on_logits():
    assert MSE()(inputs([[1.0, 2.0]], [[3.0, 5.0]])).item() == pytest.approx(6.5)


def test_mix_and_composition():
    x = inputs([[0.0, 0.0]], [[LN3, 0.0]])
    loss = mix(alpha=0.9, temperature=1.0)
    assert loss(x).item() == pytest.approx(0.9 * KL_HAND + 0.1 * LN2, abs=1e-5)
    assert loss.describe() == "0.9*kd(T=1) + 0.1*ce"
    same = leankd.losses.KD(temperature=1) * 0.9 + 0.1 * leankd.losses.CE()
    assert same(x).item() == pytest.approx(loss(x).item(), abs=1e-7)
    terms = loss.terms(x)
    assert set(terms) == {"kd(T=1)", "ce"}
    assert sum(terms.values()).item() == pytest.approx(loss(x).item(), abs=1e-7)
    assert loss.needs_teacher and not CE().needs_teacher
    assert (2 * (0.5 * CE()))(x).item() == pytest.approx(LN2, abs=1e-6)


def test_teacher_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="same classes"):
        KD(4.0)(inputs([[0.0, 0.0]], [[0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="needs teacher logits"):
        KD(4.0)(inputs([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="temperature"):
        KD(0.0)
    with pytest.raises(ValueError, match="alpha"):
        mix(alpha=1.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", [KD(4.0), SoftCE(4.0), MSE(), mix(0.7, 8.0)])
def test_half_precision_logits_give_the_fp32_answer(dtype, loss):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(64, 100, generator=g) * 15).to(dtype)  # large logits: where naive fp16 softmax breaks
    t = (torch.randn(64, 100, generator=g) * 15).to(dtype)
    y = torch.randint(0, 100, (64,), generator=g)
    half = loss(LossInputs(student=s, teacher=t, targets=y))
    full = loss(LossInputs(student=s.float(), teacher=t.float(), targets=y))
    assert half.dtype == torch.float32
    assert torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=1e-5)


def test_naive_fp16_kd_breaks_where_ours_does_not():
    """The bug from our reference reports: softmax with temperature and log(p + 1e-8) in fp16."""
    s = torch.tensor([[30.0, -30.0, 0.0]], dtype=torch.float16)
    t = torch.tensor([[-30.0, 30.0, 0.0]], dtype=torch.float16)
    T = 1.0
    p_t = F.softmax(t / T, dim=-1, dtype=torch.float16)
    p_s = F.softmax(s / T, dim=-1, dtype=torch.float16)
    naive = (p_t * (torch.log(p_t + 1e-8) - torch.log(p_s + 1e-8))).sum()  # 1e-8 rounds to 0 in fp16
    ours = KD(T)(LossInputs(student=s, teacher=t, targets=torch.tensor([0])))
    exact = KD(T)(LossInputs(student=s.double().float(), teacher=t.double().float(), targets=torch.tensor([0])))
    assert not torch.isfinite(naive) or abs(naive.item() - exact.item()) > 1.0
    assert ours.item() == pytest.approx(exact.item(), rel=1e-6)


def test_under_autocast_the_loss_is_fp32():
    lin = torch.nn.Linear(8, 5)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = lin(x)
        t = lin(x) * 2
        value = KD(4.0)(LossInputs(student=s, teacher=t, targets=torch.zeros(4, dtype=torch.long)))
    assert s.dtype == torch.bfloat16 and value.dtype == torch.float32
