"""The recipe: a typed, validated description of one run. Unknown keys are errors so typos are caught.

A recipe stays short because everything has a default; `leankd validate recipe.yaml` prints the resolved
form. Errors name the field path, the bad value and what is allowed (`RecipeError`).

The sections live by job: training and models in recipe_train.py, distillation in recipe_distill.py, error
messages in recipe_errors.py, and each task kind's own sections (data.audio, data.text, data.seq, distill.augment,
distill.seq) with its plug-in in leankd/tasks/kinds/, validated through the task-kind registry (recipe_sections.py).
This module assembles the Recipe, reads and writes it, and still exports every name it always did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, Field, GetJsonSchemaHandler, ValidationError, field_validator, model_validator

from .core.params import Strict
from .core.taskkind import TASK_KINDS, owners, section_names
from .errors import RecipeError
from .recipe_distill import DistillConfig, FeatureTerm, LayerCandidates
from .recipe_errors import format_validation_error as _format_validation_error
from .recipe_sections import WithSections
from .recipe_stream import StreamConfig, stream_kind
from .recipe_train import ModelConfig, Precision, StudentConfig, TeacherConfig, TrainConfig, TrainOverride
from .search.config import SearchConfig

__all__ = ["AugmentConfig", "DataConfig", "TrainConfig", "TrainOverride", "ModelConfig", "StudentConfig",
           "TeacherConfig", "Precision",
           "LayerCandidates", "FeatureTerm", "DistillConfig", "MeasureConfig", "CompressTarget", "QATConfig",
           "CompressConfig", "Recipe", "load_recipe", "apply_overrides", "parse_recipe", "format_validation_error",
           "dump_recipe"]  # and the task kinds' section models, read on use (`__getattr__` below)


class AugmentConfig(Strict):
    crop_padding: int = Field(4, ge=0, description="random crop after padding by this many pixels (0 = off)")
    hflip: bool = True
    pad_mode: Literal["reflect", "zeros"] = "reflect"


class DataConfig(WithSections):
    """What data, how it is split and held; a task kind's own settings are its section (`TaskKind.data_sections`,
    e.g. data.audio for keyword_spotting), validated with the model the kind declares."""

    source: str = Field("demo", description="'demo', an ImageFolder dir, a .tar/.tar.gz of one, torchvision:NAME:ROOT, "
                        "or a stream: webdataset:SHARDS (e.g. train-{000..003}.tar) or hf-stream:PATH (data.stream)")
    task: str = Field("image_classification", description="a registered task kind (leankd.tasks.TASKS)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train for per-epoch validation")
    eval_split: Literal["test", "val"] = Field("test", description="split the final report is measured on")
    image_size: Optional[int] = Field(None, gt=0)
    mean: Optional[tuple[float, float, float]] = Field(None, description="default: computed from the train split")
    std: Optional[tuple[float, float, float]] = None
    augment: AugmentConfig = AugmentConfig()
    in_memory: bool | Literal["auto"] = Field("auto", description="uint8 tensors on the device when they fit")
    cache_dir: Optional[str] = Field(None, description="where decoded images are cached (default ~/.cache/leankd)")
    num_workers: int = Field(2, ge=0, description="DataLoader workers when the data does not fit in memory")
    split_seed: Optional[int] = Field(None, ge=0, description="seed of the train/val(/test) split and of the "
                                      "limit_* subsets (default: the run's seed). Pin it to compare seeds on the same "
                                      "examples: `leankd search` does, so its seeds vary training only")
    limit_train: Optional[int] = Field(None, gt=0, description="train on N examples only: a stratified subset of "
                                                               "images, a random subset of audio clips")
    limit_test: Optional[int] = Field(None, gt=0, description="report on a stratified subset of N test images (quick "
                                                              "CPU runs; in-memory image data; the report says so)")
    stream: Optional[StreamConfig] = Field(None, description="settings of a streamed source (webdataset:, "
                                           "hf-stream:); see leankd/recipe_stream.py")
    # the built-in kinds' sections: fields in their old places so dumped recipes keep them (recipe_sections)
    audio: Optional[Any] = Field(None, description="keyword spotting settings, defaults when unset "
                                                   "(leankd/tasks/kinds/audio_config.py)")
    text: Optional[Any] = Field(None, description="text classification settings, defaults when unset "
                                                  "(leankd/tasks/kinds/text_config.py)")
    seq: Optional[Any] = Field(None, description="sequence-to-sequence settings, defaults when unset "
                                                 "(leankd/tasks/kinds/seq_config.py)")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return TASK_KINDS.require(v)

    def check_sections(self) -> None:
        """A task kind's own sections are always carried resolved, so a section left out and one written out with
        the defaults fingerprint the same; other kinds must not carry one. Then the kind's own rules on its data."""
        kind = TASK_KINDS.get(self.task)
        for section in section_names("data"):
            if section in kind.data_sections and self.section(section) is None:
                self.set_section(section, kind.data_sections[section]())
            elif section not in kind.data_sections and self.section(section) is not None:
                raise ValueError(f"data.{section} is for data.task: {' or '.join(owners(section))}, not "
                                 f"{self.task!r}: remove it")
        kind.check_data(self)
        if stream_kind(self.source) is not None and not kind.stream_sources:
            readers = [name for name, k in TASK_KINDS.items() if k.stream_sources]
            raise ValueError(f"data.source {self.source!r} is a stream, which data.task {self.task!r} does not read "
                             f"(streamed sources are read by {', '.join(readers) or 'no task kind'}): give its data as "
                             "files or a folder")
        if stream_kind(self.source) is None and self.stream is not None:
            raise ValueError(f"data.stream applies to a streamed source (webdataset:SHARDS or hf-stream:PATH), not "
                             f"{self.source!r}: remove data.stream")


class MeasureConfig(Strict):
    latency_batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    latency_runs: int = Field(30, ge=30, description="timed runs per batch size (median and p90 need >= 30)")
    latency_warmup: int = Field(5, ge=0)
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for latency (default: torch's setting)")


def _registered_target(name: str) -> str:
    """A compression target is a name in the registry (leankd.compress.registry), the single source of the names:
    a target that is registered is accepted here, a typo is a recipe error naming close names and every known one.
    (Imported on use: reading it imports the heavy targets' package, which a recipe without targets never needs.)"""
    from .compress.registry import TARGETS

    return TARGETS.require(name)


class _TargetNames:
    """The JSON schema of a target name lists the registered ones (read when the schema is made)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict:
        from .compress.registry import TARGETS

        return {**handler(core_schema), "enum": TARGETS.names()}


CompressTarget = Annotated[str, AfterValidator(_registered_target), _TargetNames()]


class QATConfig(Strict):
    """Quantization-aware distillation: the KD student is fine-tuned with int8 fake quantization while the teacher
    keeps distilling (same loss as the student stage), then quantized like int8-static."""

    epochs: int = Field(2, ge=1)
    lr: Optional[float] = Field(None, gt=0, description="default: the student's lr x lr_factor")
    lr_factor: float = Field(0.02, gt=0, le=1, description="the default QAT lr as a fraction of the student's lr. "
                             "benchmarks/qat_lr.py (ResNet-8/-14, demo subset, 1 epoch): 0.02 lowered the loss and "
                             "moved accuracy most (-1.2/+1.8 points vs PTQ), 0.005/0.001 barely trained; a long QAT on "
                             "a well-trained student diverged at 0.02 once, which the divergence guard catches")
    retries: int = Field(2, ge=0, le=5, description="a QAT attempt that diverges is retried at a tenth of its lr this "
                                                     "many times; then the qat artifact is int8-static (said so)")
    divergence_margin: float = Field(2.0, ge=0, description="points: QAT has diverged when its validation accuracy "
                                                             "falls this far (or two standard errors, if more) "
                                                             "below the fake-quantized start (= int8-static)")
    loss_factor: float = Field(2.0, gt=1, description="QAT has diverged when its running training loss exceeds "
                                                       "this multiple of its starting loss (or is not finite)")
    control: bool = Field(True, description="also build qat-control: the same fine-tuning in fp32, then int8-static, "
                                            "so QAT is compared with a same-budget PTQ")


class CompressConfig(Strict):
    """Deployment artifacts made from the distilled student, each measured like the fp32 models."""

    targets: list[CompressTarget] = Field(default_factory=list, description="e.g. [fp16, int8-dynamic, int8-static]")
    max_accuracy_drop: float = Field(1.0, ge=0, description="points; an artifact that loses more is flagged")
    calibration_batches: int = Field(8, ge=1, description="training batches (64 inputs) for int8-static calibration")
    qat: QATConfig = QATConfig()

    @model_validator(mode="after")
    def _qat_references(self) -> "CompressConfig":
        """QAT is always reported beside PTQ of the same student (int8-static) and, unless turned off, beside the
        same-budget control, so its gain is measured, not assumed."""
        targets = list(dict.fromkeys(self.targets))  # drop repeats, keep order
        if "qat" in targets:
            if "int8-static" not in targets:
                targets.insert(targets.index("qat"), "int8-static")
            if self.qat.control and "qat-control" not in targets:
                targets.append("qat-control")
        object.__setattr__(self, "targets", targets)  # not `self.targets =`: validate_assignment would recurse
        return self


class Recipe(Strict):
    name: str = "run"
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    output_dir: str = Field("runs", description="run directories go under this folder")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    baseline: bool = Field(True, description="train the student alone with the same budget for comparison")
    measure: MeasureConfig = MeasureConfig()
    compress: CompressConfig = CompressConfig()
    search: Optional[SearchConfig] = Field(None, description="what `leankd search` varies and optimizes "
                                                             "(ignored by `leankd run`)")
    seeds: Optional[list[int]] = Field(None, description="train the students once per seed, all on the same split "
                                       "(data.split_seed, else the main seed's), and report mean ± sd and the paired "
                                       "KD-vs-baseline comparison. `seed` is the main seed (unset and not listed: "
                                       "the first of these): its stages and cost/latency measurements are the run's "
                                       "usual ones")
    seeds_teacher: Literal["once", "per_seed"] = Field("once", description="with seeds: train the teacher once (with "
                                                       "the main seed) or once per seed")
    logging: list[str] = Field(default_factory=list, description="loggers besides each stage's metrics.jsonl: csv, "
                               "tensorboard, mlflow, wandb (leankd.callbacks.loggers). Logging does not change "
                               "results: it is in no stage fingerprint")

    @field_validator("logging")
    @classmethod
    def _logging(cls, v: list[str]) -> list[str]:
        from .callbacks.loggers import LOGGERS  # a registry: a logger file registers its name

        for name in v:
            LOGGERS.require(name)
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _task_fits_distillation(self) -> "Recipe":
        """Settings that cannot work with this data task fail when the recipe is read, not after the teacher trained:
        the generic rules here, the task kind's own in its `check` hook (leankd/tasks/kinds/)."""
        task = self.data.task
        kind = TASK_KINDS.get(task)
        for section in section_names("distill"):
            if section not in kind.distill_sections and self.distill.section(section) is not None:
                hint = kind.refusals.get(section)
                raise ValueError(f"distill.{section} is for data.task: {' or '.join(owners(section, 'distill'))}, "
                                 f"not {task!r}: remove it" + (f" ({hint})" if hint else ""))
        kind.check(self)
        if self.distill.assistants:
            if self.distill.features:
                raise ValueError("distill.assistants with distill.features: the layer losses pair the student with "
                                 "the teacher's layers, but with assistants the student learns from the last "
                                 "assistant: drop one of them")
            if self.teacher.cache:
                raise ValueError("teacher.cache with distill.assistants: the assistants' outputs are not cached; "
                                 "turn teacher.cache off")
            if any(a.checkpoint for a in self.distill.assistants):
                raise ValueError("distill.assistants[].checkpoint: assistants are distilled here, not loaded: "
                                 "remove the checkpoint")
        if self.teacher.limit_train is not None and self.teacher.checkpoint:
            raise ValueError("teacher.limit_train limits the teacher's fine-tuning, but teacher.checkpoint loads a "
                             "trained teacher: remove one of them")
        return self

    @model_validator(mode="after")
    def _cache_needs_logits_only(self) -> "Recipe":
        if self.teacher.cache and self.distill.features:
            raise ValueError("teacher.cache stores logits only, but distill.features needs the teacher's layers: "
                             "turn teacher.cache off, or drop the feature losses")
        return self

    @model_validator(mode="after")
    def _stages(self) -> "Recipe":
        """Check each stage's merged training settings here, so `validate` catches a bad override too."""
        for role in ("teacher", "student"):
            try:
                self.stage_train(role)
            except ValidationError as e:
                problems = "; ".join(f"{role}.train.{'.'.join(map(str, err['loc']))} = {err.get('input')!r}: "
                                     f"{err['msg']}" for err in e.errors())
                raise ValueError(problems) from None
        return self

    @model_validator(mode="after")
    def _seeds(self) -> "Recipe":
        """The seed list is checked when the recipe is read. The main seed is `seed` when listed (0 by default, so
        `--seeds 2,1,0` extends a default seed-0 run), else the first of the list unless `seed` was set."""
        if self.seeds is None:
            return self
        if not self.seeds:
            raise ValueError("seeds is empty: list the seeds to run (seeds: [0, 1, 2]) or remove it")
        negative = [s for s in self.seeds if s < 0]
        if negative:
            raise ValueError(f"seeds: {negative} are negative; seeds are integers >= 0")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds lists {repeated} more than once: each seed trains the same models, list it once")
        if self.seed not in self.seeds:
            if "seed" in self.model_fields_set:
                raise ValueError(f"seed is {self.seed} but seeds is {self.seeds}: the main seed must be one of the "
                                 f"seeds (add {self.seed} to seeds, or remove seed to make {self.seeds[0]} the main one)")
            object.__setattr__(self, "seed", self.seeds[0])
        if self.seeds_teacher == "per_seed" and self.teacher.checkpoint:
            raise ValueError("seeds_teacher: per_seed trains a teacher per seed, but teacher.checkpoint loads a "
                             "trained one: remove seeds_teacher (or the checkpoint)")
        return self

    @property
    def split_seed(self) -> int:
        """The seed that decides which examples train, validate and test (data.split_seed, else the run's)."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def stage_train(self, stage: str) -> TrainConfig:
        """Resolved training settings of a stage: the shared `train:` plus that model's overrides."""
        override = self.teacher.train if stage == "teacher" else self.student.train
        return override.apply(self.train)


# --------------------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> Recipe:
    """Read a YAML recipe; `overrides` are `dotted.key=value` strings (value parsed as YAML) applied on top. A bare
    name that is no file here (`demo`, `tinyshakespeare_lm`) reads the recipe shipped with leankd of that name."""
    from .recipe_catalogue import find, missing_data, names

    path = Path(path)
    shipped = None
    if not path.exists():
        shipped = find(str(path))
        if shipped is None:
            known = names()
            raise RecipeError(f"recipe file not found: {path}" + (
                f" (and no shipped recipe has that name: {', '.join(known)}; `leankd recipes list` describes them)"
                if known and "/" not in str(path) else ""))
        path = shipped
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:8]
        raise RecipeError(f"{path} is a folder, not a recipe file: give the path of a .yaml file"
                          + (f" (this folder holds {', '.join(found)})" if found else ""))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"cannot read the recipe {path} ({e.strerror or e}); check that it is a readable "
                          "file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipeError(f"{path}, line {line}: byte {data[e.start:e.start + 1].hex()!r} is not UTF-8; a recipe is "
                          "UTF-8 text: re-save it as UTF-8 (an editor's 'encoding' setting)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    if overrides and isinstance(raw, dict):
        apply_overrides(raw, overrides)
    recipe = parse_recipe(raw, origin=str(path))
    missing = shipped and missing_data(shipped.stem, str(recipe.data.source))
    if missing:
        raise RecipeError(missing)
    return recipe


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`train.epochs=1` sets raw['train']['epochs'] = 1 (the value is parsed as YAML: numbers, lists, booleans)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=5")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is not a section, so it has no key {parts[-1]!r}")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return raw


def parse_recipe(raw: Any, origin: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping with at least 'teacher' and 'student', got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, origin)) from None


def format_validation_error(e: ValidationError, origin: str) -> str:
    """A failed Recipe validation as the lines a user reads: each problem at its place (recipe_errors.py)."""
    return _format_validation_error(e, origin, Recipe)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML; `logging` only when set, so a run's recipe.yaml stays as older versions wrote it."""
    raw = recipe.model_dump(mode="json")
    if not raw.get("logging"):
        raw.pop("logging", None)
    return yaml.safe_dump(raw, sort_keys=False)


# the task kinds' section models, defined with their plug-ins since issue 24: their old import path still names them
_MOVED = {"AudioConfig": "audio_config", "TextConfig": "text_config", "TextAugmentConfig": "text_config",
          "SeqConfig": "seq_config", "ExtraSourcesConfig": "seq_config", "SeqDistillConfig": "seq_config",
          "SeqMethod": "seq_config", "SEQ_METHODS": "seq_config"}


def __getattr__(name: str) -> Any:
    """`from leankd.recipe import AudioConfig` still works (PEP 562). Imported on first use, not at the top: their
    modules sit in leankd.tasks, whose package imports this module, so a top-level import would run it half-made."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .tasks.kinds import audio_config, seq_config, text_config

    modules = {"audio_config": audio_config, "text_config": text_config, "seq_config": seq_config}
    return getattr(modules[_MOVED[name]], name)
