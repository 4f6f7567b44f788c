"""Layer selection math: linear CKA against hand formulas and its invariances, ridge probes on separable vs noise
data, the monotonic DP matching against brute force, top-k re-ranking by importance, and analyze() end to end."""
import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from leankd.kd.layers import (
    LayerAnalysis,
    analyze,
    as_matrix,
    cka_matrix,
    linear_cka,
    logit_cka,
    match_layers,
    probe_accuracy,
    select_pairs,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------- as_matrix


def test_as_matrix_flattens_and_unwraps():
    conv = torch.randn(6, 3, 4, 5)
    m = as_matrix(conv)
    assert m.shape == (6, 60) and m.dtype == torch.float64
    assert torch.equal(m, conv.reshape(6, -1).double())
    seq = torch.randn(6, 7, 8)
    assert as_matrix((None, seq, torch.zeros(1))).shape == (6, 56)  # first *Tensor* element of a tuple
    assert torch.equal(as_matrix([seq]), as_matrix(seq))
    assert torch.equal(as_matrix(SimpleNamespace(last_hidden_state=seq)), as_matrix(seq))


@pytest.mark.parametrize("bad", ["text", (None, 3), SimpleNamespace(logits=1), torch.tensor(1.0)])
def test_as_matrix_rejects_non_representations(bad):
    with pytest.raises(ValueError):
        as_matrix(bad)


# ---------------------------------------------------------------- linear CKA


def test_cka_self_is_one_and_symmetric():
    x, y = randn(50, 8, seed=1), randn(50, 3, seed=2)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_cka_invariant_to_orthogonal_and_isotropic_scaling():
    x = randn(60, 6, seed=3)
    y = x @ randn(6, 4, seed=4) + 0.5 * randn(60, 4, seed=5)
    q, _ = torch.linalg.qr(randn(6, 6, seed=6))
    base = linear_cka(x, y)
    assert 0.05 < base < 0.999
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x * 3.7, y) == pytest.approx(base, abs=1e-9)


def test_cka_not_invariant_to_general_invertible_map():
    x = randn(60, 6, seed=3)
    y = x @ randn(6, 4, seed=4) + 0.5 * randn(60, 4, seed=5)
    a = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 25.0], dtype=torch.float64)) + 0.3 * randn(6, 6, seed=7)
    assert abs(torch.linalg.det(a)) > 1e-3  # invertible, not orthogonal
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 1e-2
    assert linear_cka(x, x @ a) < 0.99


def feature_space_cka(x, y):
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return (y.T @ x).pow(2).sum() / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


def test_cka_gram_form_matches_feature_space_formula():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0], [-2.0, 0.5]])
    y = torch.tensor([[0.5, 1.0], [2.0, 0.0], [-1.0, 1.5], [0.0, -3.0]])
    assert linear_cka(x, y) == pytest.approx(feature_space_cka(x, y).item(), abs=1e-12)
    # by hand: x centered, y_c = first column of x, y^T x = [2, 0], x^T x = 2I, y^T y = 2 -> 4 / (sqrt(8) * 2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_cka_independent_well_below_related():
    x = randn(500, 10, seed=8)
    independent = linear_cka(x, randn(500, 10, seed=9))
    related = linear_cka(x, x @ randn(10, 10, seed=10) + 0.5 * randn(500, 10, seed=11))
    assert independent < 0.1 and related > 0.6


def test_cka_errors_and_constant_feature():
    with pytest.raises(ValueError, match=r"n=5.*n=6"):
        linear_cka(randn(5, 3), randn(6, 3))
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(randn(1, 3), randn(1, 3))
    const = torch.full((20, 4), 0.1)
    assert linear_cka(const, randn(20, 4)) == 0.0
    assert linear_cka(torch.zeros(20, 4), torch.zeros(20, 4)) == 0.0


def test_cka_matrix_shape_order_and_errors():
    base = randn(40, 8, seed=12)
    student = {"s_a": base, "s_b": randn(40, 3, 2, 2, seed=13), "s_c": (base * 2.0, None)}
    teacher = {"t_x": randn(40, 5, seed=14), "t_y": base @ torch.linalg.qr(randn(8, 8, seed=15))[0]}
    m = cka_matrix(student, teacher)
    assert m.shape == (3, 2) and m.dtype == torch.float64
    for i, s in enumerate(student.values()):
        for j, t in enumerate(teacher.values()):
            assert m[i, j].item() == pytest.approx(linear_cka(as_matrix(s), as_matrix(t)), abs=1e-12)
    assert m[0, 1] == pytest.approx(1.0) and m[2, 1] == pytest.approx(1.0) and m[0, 0] < 0.5

    with pytest.raises(ValueError, match=r"'t_bad'.*n=39|n=39.*'t_bad'"):
        cka_matrix(student, {"t_bad": randn(39, 5)})
    m = cka_matrix({"const": torch.ones(40, 6)}, teacher)
    assert not torch.isnan(m).any() and torch.equal(m, torch.zeros(1, 2, dtype=torch.float64))


# ---------------------------------------------------------------- importance


def separable(n=400, classes=4, d=16, seed=0):
    labels = torch.arange(n) % classes
    means = torch.zeros(classes, d, dtype=torch.float64)
    means[:, :classes] = 10.0 * torch.eye(classes)
    return means[labels] + randn(n, d, seed=seed), labels


def test_probe_separable_near_perfect():
    x, labels = separable()
    assert probe_accuracy(x, labels, 4) > 0.98


def test_probe_noise_is_chance():
    labels = torch.randint(0, 4, (400,), generator=gen(21))
    acc = probe_accuracy(randn(400, 32, seed=22), labels, 4)
    assert acc < 0.5


def test_probe_conv_sequence_projection_and_dual_form():
    n, labels = 200, torch.arange(200) % 4
    offset = torch.zeros(4, 8, dtype=torch.float64)
    offset[:, :4] = 5.0 * torch.eye(4)
    conv = offset[labels][:, :, None, None] + randn(n, 8, 5, 5, seed=23)  # class lives in channel means
    assert probe_accuracy(conv, labels, 4) > 0.95
    seq = offset[labels][:, None, :] + randn(n, 6, 8, seed=24)  # (n, L, H): mean over L
    assert probe_accuracy((seq,), labels, 4) > 0.95
    x, labels = separable(n=400, d=64)
    assert probe_accuracy(x, labels, 4, max_dim=16) > 0.9  # seeded projection 64 -> 16
    labels = torch.arange(40) % 4
    x = randn(4, 100, seed=40)[labels] + randn(40, 100, seed=41)  # d=100 > 20 training rows: dual solve
    assert probe_accuracy(x, labels, 4) > 0.9
    assert probe_accuracy(x, labels, 4, seed=3) == probe_accuracy(x, labels, 4, seed=3)


def test_probe_rejects_bad_labels():
    x, labels = separable(n=40)
    with pytest.raises(ValueError):
        probe_accuracy(x, labels[:30], 4)
    with pytest.raises(ValueError):
        probe_accuracy(x, labels, 3)  # label 3 out of range


def test_logit_cka_prefers_layers_that_carry_the_decision():
    x = randn(200, 16, seed=25)
    logits = x @ randn(16, 5, seed=26)
    assert logit_cka(x, logits) > 0.5 > logit_cka(randn(200, 16, seed=27), logits)


# ---------------------------------------------------------------- matching


def test_match_identical_nets_is_identity():
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(32, 32), nn.ReLU())])
    feats = {}
    for k in range(5):
        name = f"relu{k}"
        net[2 * k + 1].register_forward_hook(lambda mod, inp, out, name=name: feats.__setitem__(name, out.detach()))
    with torch.no_grad():
        net(torch.randn(200, 32))
    assert list(feats) == [f"relu{k}" for k in range(5)]
    cka = cka_matrix(feats, feats)
    assert torch.allclose(cka.diagonal(), torch.ones(5, dtype=torch.float64))
    assert match_layers(cka) == [(k, k) for k in range(5)]


def test_match_hand_cases():
    assert match_layers(torch.tensor([[0.9, 0.1, 0.8, 0.1], [0.1, 0.2, 0.95, 0.3]])) == [(0, 0), (1, 2)]
    # greedy per row picks column 2 twice; best monotonic: (0,1)+(1,2) = 1.05 > (0,0)+(1,2) = .95 > (0,0)+(1,1) = .9
    assert match_layers(torch.tensor([[0.1, 0.2, 0.9], [0.1, 0.8, 0.85]])) == [(0, 1), (1, 2)]
    assert match_layers(torch.zeros(2, 4)) == [(0, 0), (1, 1)]  # ties go to the earliest teacher layers


def brute_force(c):
    m, n = c.shape
    if m <= n:
        return max((c[range(m), list(cols)].sum().item(), list(zip(range(m), cols)))
                   for cols in itertools.combinations(range(n), m))[0]
    return max((c[list(rows), range(n)].sum().item(), list(zip(rows, range(n))))
               for rows in itertools.combinations(range(m), n))[0]


@pytest.mark.parametrize("shape", [(3, 6), (4, 4), (6, 3), (5, 2)])
def test_match_is_optimal_monotonic_and_complete(shape):
    for seed in range(5):
        c = torch.rand(*shape, generator=gen(seed), dtype=torch.float64)
        pairs = match_layers(c)
        assert len(pairs) == min(shape)
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(pairs))
        covered = [j for _, j in pairs] if shape[0] > shape[1] else [i for i, _ in pairs]
        assert covered == list(range(min(shape)))  # the shorter side is fully matched
        assert sum(c[i, j].item() for i, j in pairs) == pytest.approx(brute_force(c), abs=1e-12)


def test_select_pairs_importance_and_top_k():
    cka = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.5, 0.3]], dtype=torch.float64)
    assert select_pairs(cka, None, None) == [(0, 0, pytest.approx(0.9)), (1, 1, pytest.approx(0.5))]
    assert select_pairs(cka, None, 1) == [(0, 0, pytest.approx(0.9))]
    reranked = select_pairs(cka, torch.tensor([0.1, 1.0, 1.0]), 1)
    assert reranked == [(1, 1, pytest.approx(0.5))]
    assert select_pairs(cka, [0.1, 1.0, 1.0], 5) == [(0, 0, pytest.approx(0.09)), (1, 1, pytest.approx(0.5))]
    with pytest.raises(ValueError):
        select_pairs(cka, None, 0)
    with pytest.raises(ValueError):
        select_pairs(cka, [1.0, 1.0], None)


# ---------------------------------------------------------------- analyze


def test_analyze_end_to_end_json():
    n, labels = 64, torch.arange(64) % 3
    base = randn(n, 12, seed=30)
    student = {"s.block0": base[:, :6], "s.block1": base.reshape(n, 3, 2, 2)}
    teacher = {
        "t.layer0": randn(n, 10, seed=31),
        "t.layer1": (base @ randn(12, 12, seed=32), None),  # HF-style tuple
        "t.layer2": SimpleNamespace(last_hidden_state=base.reshape(n, 4, 3)),
    }
    logits = base @ randn(12, 3, seed=33)
    result = analyze(student, teacher, labels, logits, num_classes=3, top_k=1)
    assert isinstance(result, LayerAnalysis)
    assert result.student_names == list(student) and result.teacher_names == list(teacher)
    assert result.cka.shape == (2, 3)
    assert len(result.teacher_probe) == len(result.teacher_logit_cka) == 3
    assert all(0.0 <= p <= 1.0 for p in result.teacher_probe + result.teacher_logit_cka)
    assert len(result.matching) == 1
    s, t, c, score = result.matching[0]
    i, j = result.student_names.index(s), result.teacher_names.index(t)
    assert c == pytest.approx(result.cka[i, j].item()) and score == pytest.approx(c * result.teacher_probe[j])
    d = json.loads(json.dumps(result.as_dict()))
    assert torch.allclose(torch.tensor(d["cka"], dtype=torch.float64), result.cka)
    assert d["matching"][0]["teacher"] == t and d["teacher_probe"] == result.teacher_probe

    full = analyze(student, teacher, labels, logits, num_classes=3, importance="logit_cka")
    assert len(full.matching) == 2 and full.teacher_probe == result.teacher_probe
    assert full.matching[0][3] == pytest.approx(full.matching[0][2] * full.teacher_logit_cka[
        full.teacher_names.index(full.matching[0][1])])
    with pytest.raises(ValueError):
        analyze(student, teacher, labels, logits, num_classes=3, importance="gradnorm")


def test_debiased_cka_removes_the_high_dimension_bias():
    """Plain linear CKA of two unrelated d >> n random layers is close to 1; the debiased estimate is near 0,
    and both still give 1 for a layer with itself (and for an orthogonal transform of it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4096, generator=g, dtype=torch.float64)
    y = torch.randn(64, 4096, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) > 0.9
    assert linear_cka(x, y, debiased=True) < 0.1
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(512, 512, generator=g, dtype=torch.float64))
    assert linear_cka(x[:, :512], x[:, :512] @ q * 2.5, debiased=True) == pytest.approx(1.0, abs=1e-9)
