"""Keyword-spotting metrics: hand-computed cases and agreement with the course's loop-over-thresholds reference."""
import numpy as np
import pytest
import torch

from leankd.measure.kws import (
    FAR_TARGET,
    binary_kws_metrics,
    fa_fr_auc,
    fa_fr_curve,
    frr_at_far,
)

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it


def reference_au_fa_fr(probs, labels):
    sorted_probs, _ = torch.sort(probs)
    sorted_probs = torch.cat((torch.Tensor([0]), sorted_probs, torch.Tensor([1])))
    FAs, FRs = [], []
    for prob in sorted_probs:
        preds = (probs >= prob) * 1
        FA = ((preds == 1) & (labels == 0)).sum() / (labels == 0).sum()
        FR = ((preds == 0) & (labels == 1)).sum() / labels.sum()
        FAs.append(FA.item())
        FRs.append(FR.item())
    return -_trapezoid(FRs, x=FAs)


def test_perfect_and_inverted_detectors():
    targets = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.9])
    assert fa_fr_auc(scores, targets) == 0.0
    assert fa_fr_auc(1 - scores, targets) == 1.0
    assert frr_at_far(scores, targets) == 0.0


def test_four_sample_case_by_hand():
    # fire when score >= t.  t=0, 0.1: FA 1, FR 0 | t=0.35: FA .5, FR 0 | t=0.4: FA .5, FR .5 | t=0.8: FA 0, FR .5
    # | t=inf: FA 0, FR 1.  Area under FR(FA): only the segment FA .5 -> 0 at FR .5 counts = 0.25 (= 1 - ROC AUC).
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    targets = torch.tensor([0, 0, 1, 1])
    thresholds, fa, fr = fa_fr_curve(scores, targets)
    assert thresholds.tolist() == pytest.approx([0.0, 0.1, 0.35, 0.4, 0.8, float("inf")])
    assert fa.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    assert fr.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    assert fa_fr_auc(scores, targets) == pytest.approx(0.25)
    assert frr_at_far(scores, targets, far=0.01) == 0.5  # FA <= 1% only at t >= 0.8
    assert frr_at_far(scores, targets, far=0.5) == 0.0  # t = 0.35 fires one negative, misses nothing
    assert reference_au_fa_fr(scores, targets.float()) == pytest.approx(0.25)


def test_ties_between_classes():
    scores, targets = torch.tensor([0.5, 0.5]), torch.tensor([0, 1])
    assert fa_fr_auc(scores, targets) == pytest.approx(0.5)
    assert fa_fr_auc(scores, targets) == pytest.approx(reference_au_fa_fr(scores, targets.float()))


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = [7, 50, 333, 1000, 64, 2][seed]
    targets = (torch.rand(n, generator=g) < 0.3).long()
    targets[0], targets[-1] = 0, 1  # both classes present
    scores = torch.rand(n, generator=g)
    if seed % 2:
        scores = (scores * 10).floor() / 10  # many ties (but none at 1.0: see the next test)
    ref = reference_au_fa_fr(scores, targets)
    assert fa_fr_auc(scores, targets) == pytest.approx(ref, abs=1e-6)


def test_scores_of_exactly_one_still_close_the_curve():
    # fp32 softmax saturates to 1.0. The reference's last threshold is 1, so a negative scored 1.0 keeps FA > 0 and
    # the area left of it is never counted (flattering); our last threshold is above every score, so the curve
    # always ends at (FA=0, FR=1). Here: negatives 0.2, 1.0; positives 0.6, 1.0.
    scores, targets = torch.tensor([0.2, 1.0, 0.6, 1.0]), torch.tensor([0, 0, 1, 1])
    # (FA, FR) at t = 0, .2, .6, 1, inf: (1,0) (1,0) (.5,0) (.5,.5) (0,1); only the last segment has area:
    # .5 * (.5 + 1) / 2 = .375. The reference stops at t = 1, i.e. at (.5,.5), and reports a perfect 0.
    assert fa_fr_auc(scores, targets) == pytest.approx(0.375)
    assert reference_au_fa_fr(scores, targets.float()) == pytest.approx(0.0)  # stops at (.5, .5)


def test_random_scores_are_about_half():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(20000, generator=g) < 0.5).long()
    assert fa_fr_auc(torch.rand(20000, generator=g), targets) == pytest.approx(0.5, abs=0.02)


def test_curve_matches_a_loop_over_thresholds():
    g = torch.Generator().manual_seed(3)
    scores = (torch.rand(200, generator=g) * 20).round() / 20
    targets = (torch.rand(200, generator=g) < 0.4).long()
    thresholds, fa, fr = fa_fr_curve(scores, targets)
    assert torch.all(thresholds[1:] > thresholds[:-1])
    for t, a, r in zip(thresholds.tolist(), fa.tolist(), fr.tolist()):
        fire = scores.double() >= t
        assert a == pytest.approx(float((fire & (targets == 0)).sum() / (targets == 0).sum()))
        assert r == pytest.approx(float((~fire & (targets == 1)).sum() / (targets == 1).sum()))


def test_binary_kws_metrics():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [0.0, 0.3], [-3.0, 4.0]])
    targets = torch.tensor([0, 1, 0, 1])
    m = binary_kws_metrics(logits, targets, ["other", "yes"])
    assert m["accuracy"] == 0.5 and set(m["per_class_accuracy"]) == {"other", "yes"}
    assert m["far_target"] == FAR_TARGET == 0.01
    scores = torch.softmax(logits, 1)[:, 1]
    assert m["fa_fr_auc"] == pytest.approx(fa_fr_auc(scores, targets))
    assert m["fa_fr_auc"] == pytest.approx(0.25)  # one of four (pos, neg) pairs is mis-ordered
    assert m["frr_at_far"] == pytest.approx(0.5)
    loose = binary_kws_metrics(logits, targets, ["other", "yes"], far=0.5)
    assert loose["far_target"] == 0.5 and loose["frr_at_far"] == 0.0
    # bf16 logits are scored in fp32 like everything else
    assert binary_kws_metrics(logits.bfloat16(), targets, ["other", "yes"])["fa_fr_auc"] == pytest.approx(0.25)


def test_input_validation():
    with pytest.raises(ValueError, match="both classes"):
        fa_fr_auc(torch.rand(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N\]"):
        fa_fr_auc(torch.rand(5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0 \\(other\\) or 1"):
        fa_fr_auc(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        fa_fr_auc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        binary_kws_metrics(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="far"):
        frr_at_far(torch.rand(2), torch.tensor([0, 1]), far=2.0)


def test_binary_metrics_use_unsaturated_scores_and_survive_one_class():
    from leankd.measure.kws import binary_kws_metrics

    # margins beyond fp32 softmax resolution: 50 keywords at +40, 2 others at +30 (confident false alarms)
    logits = torch.tensor([[0.0, 40.0]] * 50 + [[0.0, 30.0]] * 2)
    targets = torch.tensor([1] * 50 + [0] * 2)
    m = binary_kws_metrics(logits, targets, ["other", "kw"], far=0.01)
    assert m["frr_at_far"] == 0.0  # a threshold between 30 and 40 rejects no keyword and accepts no other clip
    only_negatives = binary_kws_metrics(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), ["other", "kw"])
    assert only_negatives["fa_fr_auc"] is None and only_negatives["frr_at_far"] is None
