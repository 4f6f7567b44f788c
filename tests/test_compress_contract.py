"""Contract tests over every registered compression target (`leankd.compress.targets.TARGETS`), the way timm tests
every registered model: each target either builds on a tiny image model and returns a runnable that gives fp32
logits of the right shape, or says clearly that it does not apply (`Unsupported`) - never another exception.
Then the registry itself: a target registered from outside leankd (here, this file) is accepted by the recipe and
built like the others, and a second target under a taken name is refused."""
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from leankd.compress.targets import (TARGETS, BuildContext, BuiltArtifact, Finetune, Unsupported, build_artifact,
                                     register_target)
from leankd.core.registry import RegistryError
from leankd.errors import LeanKDError, RecipeError
from leankd.kd.losses import CE
from leankd.recipe import CompressConfig, TrainConfig, parse_recipe
from leankd.tasks.base import TensorTask

CLASSES = 4


def _tiny_images() -> TensorTask:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 12, 12, generator=g)
    y = torch.arange(48) % CLASSES
    return TensorTask({"train": (x[:32], y[:32]), "test": (x[32:], y[32:])}, num_classes=CLASSES)


def _tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, CLASSES)).eval()


def _finetune() -> Finetune:
    """What a recipe gives a training target: one short epoch of the student's loss (CE alone: no teacher needed)."""
    return Finetune(TrainConfig(epochs=1, batch_size=16, lr=0.01), CE())


def _assert_runs(art: BuiltArtifact, task: TensorTask) -> None:
    assert isinstance(art, BuiltArtifact) and art.path.exists() and art.format in ("torch", "onnx")
    inputs = task.example_inputs(5)
    with torch.no_grad():
        logits = task.forward(art.runnable, inputs)
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (5, CLASSES)
    assert torch.isfinite(logits).all()


def _build_or_unsupported(name: str, tmp_path, finetune=None):
    """The artifact, or the Unsupported error: any other exception fails the contract."""
    missing = TARGETS.get(name).missing()
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    try:
        return build_artifact(name, _tiny_convnet(), _tiny_images(), tmp_path / "out", calibration_batches=2,
                              finetune=finetune)
    except Unsupported as e:
        return e


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_target_builds_on_a_tiny_model_or_says_it_does_not_apply(name, tmp_path):
    entry = TARGETS.get(name)
    assert entry.name == name and entry.description.strip(), f"{name}: no description for --help"
    assert all(isinstance(m, str) and m for m in entry.needs)
    result = _build_or_unsupported(name, tmp_path)
    if entry.trains:  # outside a recipe there is no teacher, loss or schedule: said, not crashed
        assert isinstance(result, Unsupported) and "supplies the teacher and loss" in str(result)
        result = _build_or_unsupported(name, tmp_path, finetune=_finetune())
    if isinstance(result, Unsupported):
        assert len(str(result)) > 20, f"{name}: the unsupported note says too little: {result}"
        return
    _assert_runs(result, _tiny_images())
    if entry.trains:
        assert result.training is not None and result.metrics_path.exists()


def test_vocab_trim_on_an_image_model_is_unsupported_with_the_reason(tmp_path):
    result = _build_or_unsupported("vocab-trim", tmp_path)
    assert isinstance(result, Unsupported) and str(result) == ("vocab-trim applies to text students; this run's task "
                                                               "is classification")


def test_training_targets_are_derived_from_the_registry():
    from leankd.compress.targets import TRAINING_TARGETS

    assert TRAINING_TARGETS == {n for n, t in TARGETS.items() if t.trains} == {"qat", "qat-control"}


# --------------------------------------------------------------------------------------------------- the registry
def _identity_build(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    path = ctx.out_dir / "identity.pt"
    torch.save(model.state_dict(), path)
    return BuiltArtifact(model, path, "torch", notes=["the fp32 model, saved as is"])


def test_a_target_registered_outside_leankd_is_accepted_and_built(tmp_path):
    from leankd.compress.targets import TRAINING_TARGETS

    with pytest.raises(RecipeError, match="unknown compression target 'test-identity'"):
        parse_recipe({"teacher": {"model": "resnet20"}, "student": {"model": "resnet8"},
                      "compress": {"targets": ["test-identity"]}})
    register_target("test-identity", description="the fp32 model as is (a test's own target)")(_identity_build)
    try:
        r = parse_recipe({"teacher": {"model": "resnet20"}, "student": {"model": "resnet8"},
                          "compress": {"targets": ["fp16", "test-identity"]}})
        assert r.compress.targets == ["fp16", "test-identity"]
        assert "test-identity" in CompressConfig.model_json_schema()["properties"]["targets"]["items"]["enum"]
        assert "test-identity" not in TRAINING_TARGETS
        art = build_artifact("test-identity", _tiny_convnet(), _tiny_images(), tmp_path)
        assert art.notes == ["the fp32 model, saved as is"]
        _assert_runs(art, _tiny_images())
    finally:
        TARGETS.remove("test-identity")
    with pytest.raises(ValidationError, match="unknown compression target 'test-identity'"):
        CompressConfig(targets=["test-identity"])
    with pytest.raises(LeanKDError, match="unknown compression target 'test-identity'"):
        build_artifact("test-identity", _tiny_convnet(), _tiny_images(), tmp_path)


def test_a_training_target_registered_outside_leankd_joins_the_training_targets(tmp_path):
    from leankd.compress import targets

    register_target("test-trains", description="trains (a test's own target)", trains=True)(_identity_build)
    try:
        assert "test-trains" in targets.TRAINING_TARGETS
        with pytest.raises(Unsupported, match="test-trains fine-tunes the student with its teacher"):
            build_artifact("test-trains", _tiny_convnet(), _tiny_images(), tmp_path)
        assert build_artifact("test-trains", _tiny_convnet(), _tiny_images(), tmp_path, finetune=_finetune()).path
    finally:
        TARGETS.remove("test-trains")
    assert "test-trains" not in targets.TRAINING_TARGETS


def test_a_second_target_under_a_taken_name_is_refused():
    before = TARGETS.get("fp16")
    with pytest.raises(RegistryError, match="'fp16' is already registered by leankd.compress.targets.half.fp16"):
        register_target("fp16", description="a clash")(_identity_build)
    assert TARGETS.get("fp16") is before


def test_a_misspelled_target_names_the_close_one():
    with pytest.raises(ValidationError, match="did you mean 'int8-static'"):
        CompressConfig(targets=["int8-statc"])


def test_validate_lists_a_target_whose_packages_are_missing_as_not_checked():
    from leankd.validate import check_compress

    register_target("test-needs", description="needs a package that is not there",
                    needs=("leankd_no_such_package",))(_identity_build)
    try:
        r = parse_recipe({"teacher": {"model": "resnet20"}, "student": {"model": "resnet8"},
                          "compress": {"targets": ["fp16", "test-needs"]}})
        assert check_compress(r) == ["compress.targets test-needs: needs leankd_no_such_package, not installed here "
                                     "(pip install leankd_no_such_package)"]
    finally:
        TARGETS.remove("test-needs")


def test_compress_help_lists_every_registered_target():
    from typer.testing import CliRunner

    from leankd.cli import app

    out = CliRunner().invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for name, entry in TARGETS.items():
        assert f"{name}: {entry.description}" in " ".join(out.output.split()), name
