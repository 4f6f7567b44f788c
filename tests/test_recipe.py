"""Recipe validation: defaults fill in, and every mistake names the field path, the value and what is allowed."""
import pytest

from leankd.errors import RecipeError
from leankd.recipe import dump_recipe, load_recipe, parse_recipe

MINIMAL = {"teacher": {"model": "resnet20"}, "student": {"model": "resnet8"}}


def test_minimal_recipe_gets_defaults():
    r = parse_recipe(MINIMAL)
    assert r.data.source == "demo" and r.train.epochs == 30 and r.distill.alpha == 0.9
    assert r.distill.temperature == 4.0 and r.baseline is True and r.train.precision == "fp32"


def test_stage_overrides_apply_to_that_stage_only():
    r = parse_recipe({**MINIMAL, "teacher": {"model": "resnet20", "train": {"epochs": 50, "lr": 0.05}},
                      "train": {"epochs": 10}})
    assert r.stage_train("teacher").epochs == 50 and r.stage_train("teacher").lr == 0.05
    assert r.stage_train("student").epochs == 10 and r.stage_train("student").lr == 0.1


def test_unknown_key_is_an_error_listing_allowed_keys():
    with pytest.raises(RecipeError) as e:
        parse_recipe({**MINIMAL, "train": {"epocs": 3}})
    msg = str(e.value)
    assert "train.epocs" in msg and "unknown key" in msg and "epochs" in msg


def test_bad_value_names_path_value_and_allowed():
    with pytest.raises(RecipeError) as e:
        parse_recipe({**MINIMAL, "train": {"precision": "fp8"}})
    msg = str(e.value)
    assert "train.precision" in msg and "'fp8'" in msg and "bf16" in msg


def test_missing_student_is_named():
    with pytest.raises(RecipeError, match="student: required field is missing"):
        parse_recipe({"teacher": {"model": "resnet20"}})


def test_nested_loss_terms_are_checked():
    with pytest.raises(RecipeError, match=r"distill.loss.0.kind"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "kl"}]}})
    from leankd.kd.registry import LOGIT_LOSSES

    with_temperature = sorted(n for n in LOGIT_LOSSES.names() if LOGIT_LOSSES.get(n).takes("temperature"))
    assert {"kd", "dkd", "dist", "soft_ce"} <= set(with_temperature) and "ce" not in with_temperature
    with pytest.raises(RecipeError, match="ce takes weight, label_smoothing, not 'temperature'; 'temperature' is a "
                       "parameter of " + ", ".join(with_temperature)):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "ce", "temperature": 2}]}})
    with pytest.raises(RecipeError, match="teacher is never used"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "ce"}]}})


def test_range_checks():
    with pytest.raises(RecipeError, match="distill.alpha = 1.5"):
        parse_recipe({**MINIMAL, "distill": {"alpha": 1.5}})
    with pytest.raises(RecipeError, match="milestones"):
        parse_recipe({**MINIMAL, "train": {"schedule": "multistep", "milestones": [0.8, 0.5]}})
    with pytest.raises(RecipeError, match="device"):
        parse_recipe({**MINIMAL, "device": "tpu"})


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(lst)


def test_dump_round_trips(tmp_path):
    r = parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "kd", "temperature": 2, "weight": 0.5}, {"kind": "ce"}]}})
    p = tmp_path / "r.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r


def test_shipped_recipes_are_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes, "the project ships example recipes"
    for path in recipes:
        load_recipe(path)


def test_set_overrides(tmp_path):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    r = load_recipe(p, ["train.epochs=3", "data.augment.hflip=false", "measure.latency_batch_sizes=[1, 8]"])
    assert r.train.epochs == 3 and r.data.augment.hflip is False and r.measure.latency_batch_sizes == [1, 8]
    with pytest.raises(RecipeError, match="train.epohcs"):
        load_recipe(p, ["train.epohcs=3"])
    with pytest.raises(RecipeError, match="dotted.key=value"):
        load_recipe(p, ["train.epochs"])
    with pytest.raises(RecipeError, match="not a section"):
        load_recipe(p, ["teacher.model.x=1"])


def test_stage_override_errors_name_the_stage_path():
    with pytest.raises(RecipeError, match=r"teacher\.train\.milestones"):
        parse_recipe({**MINIMAL, "teacher": {"model": "resnet20", "train": {"milestones": [0.9, 0.5]}}})
    with pytest.raises(RecipeError, match=r"student\.train\.epochs"):
        parse_recipe({**MINIMAL, "student": {"model": "resnet8", "train": {"epochs": 0}}})
    with pytest.raises(RecipeError, match="weight 0"):
        parse_recipe({**MINIMAL, "distill": {"loss": [{"kind": "kd", "weight": 0}]}})
    with pytest.raises(RecipeError, match="latency_runs"):
        parse_recipe({**MINIMAL, "measure": {"latency_runs": 10}})


def test_yaml_boolean_keyword_gets_a_quoting_hint(tmp_path):
    path = tmp_path / "kws.yaml"
    path.write_text("teacher: {model: crnn}\nstudent: {model: crnn_small}\n"
                    "data: {task: keyword_spotting, audio: {keyword: yes}}\n")
    with pytest.raises(RecipeError, match="YAML reads yes/no/on/off as true/false, so quote the word"):
        load_recipe(path)
    path.write_text(path.read_text().replace("keyword: yes", "keyword: 'yes'"))
    assert load_recipe(path).data.audio.keyword == "yes"
