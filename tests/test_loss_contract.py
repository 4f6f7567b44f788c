"""Contract over every registered loss kind, logit transform and feature loss kind (as timm tests every model):
each builds from its defaults, returns an fp32 scalar under bf16 inputs, and backpropagates into the student.
A new method file is covered here without a line of new test scaffolding."""
import pytest
import torch

from leankd.core.registry import Registry, RegistryError
from leankd.kd.losses import Loss, LossInputs
from leankd.kd.registry import (FEATURE_LOSSES, LOGIT_LOSSES, TRANSFORMS, BuildContext, LossKind, LossTerm,
                                build_logit_loss, feature_loss, register_loss)
from leankd.recipe import parse_recipe

MINIMAL = {"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"}}


def _inputs(student, **extra):
    torch.manual_seed(0)
    return LossInputs(student=student, targets=torch.tensor([0, 2, 1, 2]), teacher=torch.randn(4, 3) * 2,
                      epoch=1, epochs=12, **extra)


@pytest.mark.parametrize("name", LOGIT_LOSSES.names())
@pytest.mark.parametrize("transform", ["raw", *TRANSFORMS.names()])
def test_every_loss_kind_builds_from_defaults_and_backpropagates(name, transform):
    kind = LOGIT_LOSSES.get(name)
    term = kind.params(kind=name)
    if transform != "raw" and "transform" not in kind.params.model_fields:
        pytest.skip(f"{name} takes no logit transform")
    loss = build_logit_loss([term], BuildContext(transform=transform))
    assert isinstance(loss, Loss) and loss.needs_teacher == kind.uses_teacher
    student = (torch.randn(4, 3) * 2).to(torch.bfloat16).requires_grad_()
    value = loss(_inputs(student))
    assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    assert loss.describe()  # part of the stage fingerprint: never empty


@pytest.mark.parametrize("name", LOGIT_LOSSES.names())
def test_every_loss_kind_is_accepted_by_the_recipe_with_its_defaults(name):
    terms = [{"kind": name}] + ([] if LOGIT_LOSSES.get(name).uses_teacher else [{"kind": "kd"}])
    recipe = parse_recipe({**MINIMAL, "distill": {"loss": terms}})
    assert recipe.distill.loss[0].kind == name


@pytest.mark.parametrize("name", FEATURE_LOSSES.names())
def test_every_feature_kind_is_a_loss_reading_named_modules(name):
    loss = feature_loss(name, [("s.block", "t.block")])
    assert isinstance(loss, Loss) and "s.block" in loss.student_taps()[0] and "t.block" in loss.teacher_taps()[0]
    assert loss.describe().startswith(name)


def test_a_loss_kind_registered_from_outside_is_usable_everywhere():
    """No file under src/ is edited: the recipe, the builder and the search family accept it at once."""
    from typing import Literal

    from leankd.kd.registry import families
    from leankd.kd.build import build_loss

    class L1Term(LossTerm):
        kind: Literal["l1_logits"] = "l1_logits"

    class L1(Loss):
        needs_teacher = True

        def compute(self, inputs):
            return (inputs.student.float() - inputs.teacher.float()).abs().mean()

    register_loss(LossKind("l1_logits", L1Term, lambda term, ctx: L1(), compares_distributions=False))
    try:
        recipe = parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "l1_logits", "weight": 2}]}})
        assert build_loss(recipe.distill).describe() == "2*l1"
        assert "l1_logits" in families()
        with pytest.raises(RegistryError, match="already registered"):
            register_loss(LossKind("l1_logits", type("Other", (L1Term,), {}), lambda t, c: L1()))
    finally:
        LOGIT_LOSSES.remove("l1_logits")
    with pytest.raises(Exception, match="unknown loss kind 'l1_logits'"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "l1_logits"}]}})


def test_register_loss_refuses_a_params_model_of_another_kind():
    from leankd.kd.methods.classic import KDTerm

    with pytest.raises(TypeError, match="must be Literal\\['kd2'\\]"):
        register_loss(LossKind("kd2", KDTerm, lambda t, c: None))
    assert "kd2" not in LOGIT_LOSSES


def test_registry_refuses_clashes_and_suggests_names():
    r = Registry("widget")
    r.add("alpha", object)
    r.add("alpha", object)  # the same entry again (a module imported twice) is fine
    with pytest.raises(RegistryError, match="widget 'alpha' is already registered by builtins.object"):
        r.add("alpha", int)
    with pytest.raises(RegistryError, match="unknown widget 'alpa': did you mean 'alpha'\\? known: alpha"):
        r.get("alpa")
    with pytest.raises(RegistryError, match="non-empty string"):
        r.add(" alpha", int)
