"""leankd.models: registry, built-in CIFAR families, hub names, weight loading."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from leankd.errors import ModelError
from leankd.models import create_model, infer_num_classes, list_models, load_weights, register_model
from leankd.models import registry
from leankd.models.lm import CausalLM

EXPECTED_PARAMS_M = {  # 10 classes, millions; from RepDistiller / chenyaofo / the WRN paper
    "resnet20": 0.27,
    "resnet56": 0.86,
    "resnet110": 1.73,
    "resnet8x4": 1.2,
    "resnet32x4": 7.4,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.2,
    "wrn_40_4": 8.9,
    "wrn_16_2": 0.70,
    "mobilenetv2": 2.24,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("seq2seq")])
def test_registered_model_contract(name: str) -> None:
    """Classifiers' contract (seq2seq models decode instead: encode/step, tested in test_seq2seq.py). The causal-LM
    family (`CausalLM`) is a classifier of the next token at every position: token ids [B, T] -> logits [B, T, V]."""
    text = name.startswith("text_")  # word-level text models take word ids and lengths
    model = create_model(name, num_classes=7, **({"vocab_size": 20} if text else {})).eval()
    audio = name.startswith(("crnn", "dscnn"))  # keyword-spotting models take log-mel features [B, n_mels, T]
    causal = isinstance(model, CausalLM)
    x = torch.randn(2, 40, 98) if audio else torch.randn(2, 3, 32, 32)
    x = (torch.randint(1, 20, (2, 6)), torch.tensor([6, 3])) if text else (x,)
    x = (torch.randint(0, 7, (2, 6)),) if causal else x
    with torch.no_grad():
        logits = model(*x)
        split = model.forward_head(model.forward_features(*x))
    assert logits.shape == ((2, 6, 7) if causal else (2, 7))
    assert torch.allclose(logits, split)
    assert model.num_classes == 7
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    assert infer_num_classes(model) == 7


@pytest.mark.parametrize("name,expected_m", sorted(EXPECTED_PARAMS_M.items()))
def test_param_counts(name: str, expected_m: float) -> None:
    measured = n_params(create_model(name, num_classes=10)) / 1e6
    assert measured == pytest.approx(expected_m, rel=0.03)


def test_expected_families_registered() -> None:
    names = set(list_models())
    assert {"resnet8", "resnet14", "resnet32", "resnet44", "wrn", "wrn_16_1", "wrn_28_10"} <= names
    assert {"mobilenetv2_x0_5", "vgg8", "vgg11", "vgg13"} <= names
    assert list_models() == sorted(names)


def test_duplicate_registration_raises() -> None:
    def resnet20(num_classes: int = 10) -> nn.Module:
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError) as err:
        register_model(resnet20)
    msg = str(err.value)
    assert "resnet20" in msg and "leankd.models.cifar_resnet" in msg and __name__ in msg
    assert type(create_model("resnet20", 10)).__name__ == "CifarResNet"


def test_register_refuses_var_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    def sloppy(num_classes: int = 10, **kwargs: object) -> nn.Module:
        return nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="kwargs"):
        register_model(sloppy)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelError) as err:
        create_model("resnet2", 10)
    msg = str(err.value)
    assert "resnet20" in msg
    assert "torchvision:" in msg and "timm:" in msg and "python:module:callable" in msg


def test_unknown_prefix() -> None:
    with pytest.raises(ModelError, match="prefix"):
        create_model("keras:resnet18", 10)


def test_misspelled_kwarg_names_key_and_accepted() -> None:
    with pytest.raises(ModelError) as err:
        create_model("wrn", 10, widen_factr=2)
    msg = str(err.value)
    assert "widen_factr" in msg and "widen_factor" in msg and "depth" in msg


def test_family_knobs_and_bad_values() -> None:
    assert n_params(create_model("wrn", 10, depth=40, widen_factor=2)) == n_params(create_model("wrn_40_2", 10))
    assert create_model("mobilenetv2", 5, width_mult=0.75)(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ModelError, match="6n\\+4"):
        create_model("wrn", 10, depth=17)
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet8", 0)


def test_torchvision_offline() -> None:
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    assert infer_num_classes(model) == 10
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ModelError, match="resnet18"):
        create_model("torchvision:resnet181", 10)
    with pytest.raises(ModelError, match="never downloads"):
        create_model("torchvision:resnet18", 10, weights="DEFAULT")


def test_timm_offline() -> None:
    model = create_model("timm:resnet18", num_classes=10).eval()
    assert infer_num_classes(model) == 10
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ModelError, match="resnet18"):
        create_model("timm:resnet18x", 10)
    # the refusal names the recipe key that exists (`checkpoint:`), not one that does not
    with pytest.raises(ModelError, match=r"never downloads.*`teacher.checkpoint: path/to/weights`") as err:
        create_model("timm:resnet18", 10, pretrained=True)
    assert "weights:" not in str(err.value).replace("path/to/weights", "")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "leankd_test_user_models"
    (tmp_path / f"{name}.py").write_text(
        "from torch import nn\n"
        "def build(num_classes, hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.Linear(hidden, num_classes))\n"
        "def fixed():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_python_callable(user_module: str) -> None:
    model = create_model(f"python:{user_module}:build", num_classes=6, hidden=5)
    assert infer_num_classes(model) == 6 and model[1].out_features == 5
    fixed = create_model(f"python:{user_module}:fixed", num_classes=6)
    assert infer_num_classes(fixed) == 4  # no num_classes parameter: caller must check
    with pytest.raises(ModelError, match="hiden"):
        create_model(f"python:{user_module}:build", 6, hiden=5)
    with pytest.raises(ModelError, match="buld"):
        create_model(f"python:{user_module}:buld", 6)
    with pytest.raises(ModelError, match="not a callable"):
        create_model(f"python:{user_module}:NOT_CALLABLE", 6)


def test_python_import_errors() -> None:
    with pytest.raises(ModelError) as err:
        create_model("python:no_such_pkg_leankd.models:build", 10)
    assert "no_such_pkg_leankd.models" in str(err.value) and "sys.path" in str(err.value)
    with pytest.raises(ModelError, match="package.module:callable"):
        create_model("python:just_a_module", 10)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_weights_safetensors_round_trip(tmp_path) -> None:
    source = create_model("resnet8", 10)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    target = create_model("resnet8", 10)
    assert load_weights(target, path) is target
    assert_same_weights(source, target)


def test_load_weights_pt_nested_and_prefixed(tmp_path) -> None:
    source = create_model("resnet8", 10)
    path = tmp_path / "ckpt.pt"
    nested = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": nested, "epoch": 3}, path)
    target = load_weights(create_model("resnet8", 10), str(path))
    assert_same_weights(source, target)


def test_load_weights_class_mismatch_names_key(tmp_path) -> None:
    path = tmp_path / "w100.safetensors"
    save_file(create_model("resnet8", 100).state_dict(), str(path))
    with pytest.raises(ModelError) as err:
        load_weights(create_model("resnet8", 10), path)
    msg = str(err.value)
    assert "classifier.weight: checkpoint (100, 64) vs model (10, 64)" in msg and "num_classes differs" in msg


def test_load_weights_architecture_mismatch_lists_keys(tmp_path) -> None:
    path = tmp_path / "r8.pth"
    torch.save(create_model("resnet8", 10).state_dict(), path)
    with pytest.raises(ModelError) as err:
        load_weights(create_model("resnet14", 10), path)
    msg = str(err.value)
    assert "missing from checkpoint" in msg and "layer1.1.conv1.weight" in msg and "more" in msg


def test_load_weights_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(ModelError, match="nope.safetensors"):
        load_weights(create_model("resnet8", 10), path)


def test_infer_num_classes_fallbacks() -> None:
    assert infer_num_classes(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))) == 3
    assert infer_num_classes(nn.Conv2d(3, 3, 1)) is None
