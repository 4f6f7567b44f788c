"""DKD, DIST and logit standardization: hand-computed values and the identities their papers give; the recipe,
search and Python faces of the loss registry; the loss descriptions that stage fingerprints are made of."""
import math

import pytest
import torch
import torch.nn.functional as F

from leankd.errors import RecipeError
from leankd.kd.losses import KD, LossInputs
from leankd.kd.methods.dist import DIST
from leankd.kd.methods.dkd import DKD, decoupled_parts
from leankd.kd.methods.logit_standardization import standardize
from leankd.kd.registry import LOGIT_LOSSES, families
from leankd.kd.build import build_loss
from leankd.recipe import DistillConfig, parse_recipe

MINIMAL = {"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"}}


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# DKD ---------------------------------------------------------------------------------------------------------------
def test_dkd_parts_by_hand():
    s, t, target, T = [1.0, 2.0, 0.5], [3.0, 0.0, 1.0], 0, 2.0
    ps, pt = _softmax(s, T), _softmax(t, T)
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    ns = [ps[1] / (1 - ps[0]), ps[2] / (1 - ps[0])]
    nt = [pt[1] / (1 - pt[0]), pt[2] / (1 - pt[0])]
    nckd = _kl(nt, ns)
    got_t, got_n = decoupled_parts(torch.tensor([s]), torch.tensor([t]), torch.tensor([target]), T)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    value = DKD(alpha=0.5, beta=3.0, temperature=T, warmup_epochs=0)(
        LossInputs(student=torch.tensor([s]), targets=torch.tensor([target]), teacher=torch.tensor([t])))
    assert value.item() == pytest.approx(T * T * (0.5 * tckd + 3.0 * nckd), rel=1e-5)


def test_kd_is_tckd_plus_teacher_weighted_nckd():
    """Zhao et al., eq. (1): KD = TCKD + (1 - p_t^teacher) NCKD, example by example (both x T^2)."""
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3, torch.randint(0, 10, (6,))
    for T in (1.0, 4.0):
        for i in range(6):
            inputs = LossInputs(student=s[i:i + 1], targets=y[i:i + 1], teacher=t[i:i + 1])
            p_target = F.softmax(t[i] / T, dim=-1)[y[i]].item()
            dkd = DKD(alpha=1.0, beta=1 - p_target, temperature=T, warmup_epochs=0)(inputs)
            assert dkd.item() == pytest.approx(KD(T)(inputs).item(), rel=1e-5, abs=1e-7)


def test_dkd_warmup_ramps_linearly_and_defaults_to_the_papers_share():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])

    def at(loss, epoch, epochs):
        return loss(LossInputs(student=s, targets=y, teacher=t, epoch=epoch, epochs=epochs)).item()

    full = at(DKD(warmup_epochs=0), 1, 10)
    assert at(DKD(warmup_epochs=4), 1, 10) == pytest.approx(full / 4, rel=1e-6)
    assert at(DKD(warmup_epochs=4), 4, 10) == pytest.approx(full, rel=1e-6)
    assert at(DKD(), 5, 240) == pytest.approx(full * 5 / 20, rel=1e-6)  # the paper: 20 of 240 epochs
    assert at(DKD(), 3, 24) == pytest.approx(full, rel=1e-6)  # 24 epochs: a 2-epoch warm-up is over
    assert at(DKD(), 1, 24) == pytest.approx(full / 2, rel=1e-6)
    assert at(DKD(warmup_epochs=4), None, None) == pytest.approx(full, rel=1e-6)  # outside training: full weight

    # the ramp advances every step: a 10-epoch run's warm-up is 10/12 of an epoch, so epoch 1 does not start at full
    # weight (it did when the ramp read whole epochs, and beta 8 collapsed a 10-epoch CIFAR-10 student to chance)
    def stepped(loss, progress, epochs=10):
        return loss(LossInputs(student=s, targets=y, teacher=t, epoch=1, epochs=epochs, progress=progress)).item()

    assert stepped(DKD(), 0.1) == pytest.approx(full * 0.1 / (10 / 12), rel=1e-6)
    assert stepped(DKD(), 0.5) == pytest.approx(full * 0.6, rel=1e-6)
    assert stepped(DKD(), 1.0) == pytest.approx(full, rel=1e-6)
    assert stepped(DKD(warmup_epochs=4), 2.5) == pytest.approx(full * 2.5 / 4, rel=1e-6)


def test_dkd_stays_finite_for_a_confident_teacher_and_labels_missing():
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    t = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 300.0]])
    value = DKD(warmup_epochs=0)(LossInputs(student=s, targets=torch.tensor([0, -100]), teacher=t))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


# DIST --------------------------------------------------------------------------------------------------------------
def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)))


def test_dist_by_hand():
    s = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]
    t = [[2.0, 1.0, 0.0], [-1.0, 0.0, 3.0]]
    T, beta, gamma = 2.0, 1.5, 0.5
    ps, pt = [_softmax(r, T) for r in s], [_softmax(r, T) for r in t]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / 2
    cols = lambda m, c: [row[c] for row in m]  # noqa: E731
    intra = 1 - sum(_pearson(cols(ps, c), cols(pt, c)) for c in range(3)) / 3
    value = DIST(beta, gamma, T)(LossInputs(student=torch.tensor(s), targets=torch.tensor([0, 1]),
                                            teacher=torch.tensor(t)))
    assert value.item() == pytest.approx(T * T * (beta * inter + gamma * intra), rel=1e-5)


def test_dist_is_zero_for_the_teachers_predictions_and_large_for_reversed_ones():
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    same = DIST()(LossInputs(student=t.clone(), targets=torch.tensor([0, 1]), teacher=t))
    assert same.item() == pytest.approx(0.0, abs=1e-3)  # fp32 Pearson of identical rows: 1 - 1e-6, times T^2
    other = DIST()(LossInputs(student=-t, targets=torch.tensor([0, 1]), teacher=t))
    assert other.item() > 1.0


# logit standardization ---------------------------------------------------------------------------------------------
def test_standardize_by_hand_and_its_invariance():
    z = torch.tensor([[1.0, 2.0, 6.0]])
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)  # unbiased, as the paper's code
    assert standardize(z).tolist()[0] == pytest.approx([(v - mean) / (std + 1e-7) for v in (1, 2, 6)], rel=1e-6)
    torch.manual_seed(1)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    loss = build_loss(DistillConfig(loss=[{"kind": "kd", "transform": "standardize"}]))
    a = loss(LossInputs(student=s, targets=torch.zeros(5, dtype=torch.long), teacher=t))
    b = loss(LossInputs(student=3 * s + 2, targets=torch.zeros(5, dtype=torch.long), teacher=0.5 * t - 1))
    assert a.item() == pytest.approx(b.item(), rel=1e-4)  # only the logits' relations matter
    plain = KD(4.0)(LossInputs(student=3 * s + 2, targets=torch.zeros(5, dtype=torch.long), teacher=0.5 * t - 1))
    assert plain.item() != pytest.approx(a.item(), rel=1e-2)


def test_transform_is_a_switch_for_kd_dkd_and_the_alpha_mix():
    d = DistillConfig(loss=[{"kind": "dkd", "beta": 2}, {"kind": "ce"}], transform="standardize")
    assert build_loss(d).describe() == "dkd(a=1,b=2,T=4,warmup=paper,ramp=step,ls) + ce"
    assert build_loss(DistillConfig(transform="standardize")).describe() == "0.9*kd(T=4,ls) + 0.1*ce"
    own = DistillConfig(loss=[{"kind": "kd", "transform": "raw"}, {"kind": "dist", "transform": "standardize"}],
                        transform="standardize")
    assert build_loss(own).describe() == "kd(T=4) + dist(b=1,g=1,T=4,ls)"


# the registry's faces ----------------------------------------------------------------------------------------------
def test_descriptions_of_existing_recipes_are_unchanged():
    """A stage fingerprint contains `loss.describe()`: these strings were produced before the loss registry
    existed, so runs made then are reused after it."""
    golden = [
        ({}, 0.0, False, None, "0.9*kd(T=4) + 0.1*ce"),
        ({"alpha": 1.0}, 0.0, False, None, "kd(T=4) + 0*ce"),
        ({"alpha": 0.0, "temperature": 2}, 0.1, False, None, "0*kd(T=2) + ce(ls=0.1)"),
        ({"loss": [{"kind": "kd", "temperature": 2, "weight": 0.5}, {"kind": "ce", "label_smoothing": 0.1}]}, 0.0,
         False, None, "0.5*kd(T=2) + ce(ls=0.1)"),
        ({"loss": [{"kind": "soft_ce"}, {"kind": "ce"}], "temperature": 3}, 0.2, False, None,
         "soft_ce(T=3) + ce(ls=0.2)"),
        ({"loss": [{"kind": "mse", "weight": 2}, {"kind": "kd"}]}, 0.0, False, None, "2*mse_logits + kd(T=4)"),
        ({}, 0.0, True, None, "0.9*mse_logits + 0.1*mse_labels"),
        ({"loss": [{"kind": "mse"}, {"kind": "ce", "weight": 0.3}]}, 0.0, True, None, "mse_logits + 0.3*mse_labels"),
        ({"features": [{"kind": "hint", "pairs": [["layer1", "layer1"]]},
                       {"kind": "at", "weight": 1000, "pairs": [["layer3", "layer3"]]}]}, 0.0, False,
         [[("layer1", "layer1")], [("layer3", "layer3")]],
         "0.9*kd(T=4) + 0.1*ce + hint(layer1->layer1) + 1000*at(layer3->layer3)"),
    ]
    for cfg, ls, regression, pairs, want in golden:
        assert build_loss(DistillConfig(**cfg), ls, pairs, regression).describe() == want


def test_the_task_says_which_losses_it_trains_with():
    """The pipeline hands its task to the loss builders instead of branching on regression itself: a task with one
    output per example (`Task.regression`) gets the same losses, descriptions (stage fingerprints) included, as
    `regression=True` always gave; a classification task the same as before. The task also says whether `pairs:
    auto` has classes to probe."""
    from leankd.kd.build import logit_loss, supervised_loss
    from leankd.kd.layer_choice import check_probe
    from leankd.tasks import TensorTask

    def task(regression: bool) -> TensorTask:
        t = TensorTask({"train": (torch.zeros(4, 2), torch.zeros(4))}, num_classes=1 if regression else 2)
        t.regression, t.kind = regression, "toy_score" if regression else "toy_class"
        return t

    for cfg in ({}, {"alpha": 0.3}, {"loss": [{"kind": "mse"}, {"kind": "ce", "weight": 0.3}]}):
        for regression in (False, True):
            d = DistillConfig(**cfg)
            assert (build_loss(d, 0.1, task=task(regression)).describe()
                    == build_loss(d, 0.1, None, regression).describe())
            assert (logit_loss(d, 0.1, task=task(regression)).describe()
                    == logit_loss(d, 0.1, regression).describe())
    assert supervised_loss(0.1, task=task(True)).describe() == "mse_labels"
    assert supervised_loss(0.1, task=task(False)).describe() == supervised_loss(0.1).describe() == "ce(ls=0.1)"
    with pytest.raises(RecipeError, match="kd compares class distributions"):
        build_loss(DistillConfig(loss=[{"kind": "kd"}, {"kind": "ce"}]), task=task(True))
    check_probe(task(False), "distill.features[0].pairs")
    with pytest.raises(RecipeError, match=r"distill.features\[0\].pairs: auto .* a toy_score task has no classes"):
        check_probe(task(True), "distill.features[0].pairs")


def test_recipe_terms_are_validated_by_their_own_kind():
    r = parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "dkd", "beta": 2, "warmup_epochs": 5},
                                                      {"kind": "ce"}]}})
    assert type(r.distill.loss[0]).__name__ == "DKDTerm" and r.distill.loss[0].beta == 2
    dumped = r.model_dump()["distill"]["loss"][0]
    assert dumped["beta"] == 2 and dumped["alpha"] == 1.0  # its own fields survive a dump (recipe.yaml)
    with pytest.raises(RecipeError, match=r"distill.loss.0.beta = -1"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "dkd", "beta": -1}]}})
    with pytest.raises(RecipeError, match=r"kd takes weight, temperature, transform, not 'beta'; 'beta' is a "
                                          r"parameter of dist, dkd"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "kd", "beta": 1}]}})
    with pytest.raises(RecipeError, match=r"unknown loss kind 'dkdd': did you mean 'dkd'"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "dkdd"}]}})
    with pytest.raises(RecipeError, match=r"unknown logit transform 'standardise': did you mean 'standardize'"):
        parse_recipe({**MINIMAL, "distill": {"transform": "standardise"}})


def test_regression_refuses_every_distribution_kind():
    """The recipe's text_regression rule and the builder both ask the registry (tests/test_text_students.py runs
    the recipe path on a real regression folder)."""
    kinds = [n for n, k in LOGIT_LOSSES.items() if k.compares_distributions]
    assert {"kd", "soft_ce", "dkd", "dist"} <= set(kinds) and "mse" not in kinds
    for kind in kinds:
        with pytest.raises(RecipeError, match=f"{kind} compares class distributions"):
            build_loss(DistillConfig(loss=[{"kind": kind}, {"kind": "ce"}]), regression=True)


def test_search_family_reads_the_registry():
    from leankd.search.space import apply_params

    assert {"kd", "soft_ce", "mse", "dkd", "dist"} <= set(families()) and "ce" not in families()
    raw = apply_params({**MINIMAL, "distill": {"alpha": 0.8, "temperature": 3}}, {"distill.family": "dkd"})
    assert raw["distill"]["loss"] == [{"kind": "dkd", "weight": 0.8, "temperature": 3},
                                      {"kind": "ce", "weight": 0.2}]
    raw = apply_params({**MINIMAL}, {"distill.family": "mse", "distill.transform": "standardize"})
    assert raw["distill"]["loss"][0] == {"kind": "mse", "weight": 0.9}  # mse takes no temperature
    assert build_loss(parse_recipe(raw).distill).describe() == "0.9*mse_logits + 0.1*ce"


def test_python_api_composes_the_new_losses():
    import leankd.losses as L

    loss = 1.0 * L.DKD(beta=2.0) + 0.5 * L.DIST() + L.CE()
    s, t = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4)
    value = loss(LossInputs(student=s, targets=torch.randint(0, 4, (8,)), teacher=t, epoch=1, epochs=12))
    value.backward()
    assert loss.needs_teacher and s.grad is not None
    assert loss.describe() == "dkd(a=1,b=2,T=4,warmup=paper,ramp=step) + 0.5*dist(b=1,g=1,T=4) + ce"


def test_dkd_with_standardized_logits_runs_end_to_end(tmp_path):
    """Through `leankd.run`: the recipe's term reaches the loop (the warm-up sees the epochs), the student stage
    records the loss it trained with, and a second run reuses the stage by its fingerprint."""
    import json

    import leankd

    recipe = {"name": "dkd", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "demo", "limit_train": 64, "limit_test": 32, "val_fraction": 0.25,
                       "cache_dir": str(tmp_path / "cache")},
              "teacher": {"model": "resnet8", "train": {"epochs": 1}}, "student": {"model": "resnet8"},
              "train": {"epochs": 2, "batch_size": 16}, "baseline": False,
              "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]},
              "distill": {"loss": [{"kind": "dkd", "beta": 2, "warmup_epochs": 2}, {"kind": "ce"}],
                          "transform": "standardize"}}
    result = leankd.run(recipe, quiet=True)
    stage = json.loads((result.run_dir / "student" / "stage.json").read_text())
    assert result.report["models"]["student"]["training"]["loss"] == "dkd(a=1,b=2,T=4,warmup=2,ramp=step,ls) + ce"
    rows = [json.loads(line) for line in (result.run_dir / "student" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "train_loss" in r]) == 2 and all(math.isfinite(r["train_loss"]) for r in rows
                                                                   if "train_loss" in r)
    again = leankd.run(recipe, quiet=True)
    assert json.loads((again.run_dir / "student" / "stage.json").read_text())["fingerprint"] == stage["fingerprint"]


def test_a_logit_transform_hands_every_step_field_to_the_loss_it_wraps():
    """Transformed (e.g. logit standardization under DKD) once rebuilt LossInputs without `progress`, so DKD's warm-up
    ramped per epoch instead of per step under `transform: standardize`."""
    import torch

    from leankd.kd.losses import Loss, LossInputs
    from leankd.kd.registry import TRANSFORMS, Transformed

    seen = {}

    class Spy(Loss):
        needs_teacher = True

        def compute(self, inputs):
            seen.update(progress=inputs.progress, epoch=inputs.epoch, epochs=inputs.epochs)
            return inputs.student.sum() * 0

    name = next(iter(TRANSFORMS.names()))
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    Transformed(Spy(), TRANSFORMS.get(name))(LossInputs(student=s, targets=torch.zeros(4, dtype=torch.long),
                                                        teacher=t, epoch=2, epochs=5, progress=1.25))
    assert seen == {"progress": 1.25, "epoch": 2, "epochs": 5}
