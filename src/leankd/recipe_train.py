"""The training and model sections of a recipe (`train:`, `teacher:`, `student:`, each model's `train:` overrides):
what every stage trains with. Split out of recipe.py by job; `leankd.recipe` still exports every name."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, create_model, field_validator, model_validator

from .core.params import Strict

Precision = Literal["fp32", "bf16", "fp16"]


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="multistep: fractions of training")
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = Field(False, description="CUDA only: compile the student with mode='reduce-overhead' so each "
                              "fixed-shape step replays CUDA graphs (implies compile); ignored on CPU, with a note")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="large batches: lr x (batch_size / lr_base_batch_size) (linear, Goyal et al.) or its "
        "square root (sqrt, for adaptive optimizers); pair with warmup_epochs")
    lr_base_batch_size: int = Field(128, ge=1, description="the batch size `lr` was tuned for (lr_scaling)")
    deterministic: bool = Field(False, description="deterministic CUDA kernels (slower): resume == uninterrupted on GPU too")
    sync_bn: bool = Field(False, description="several processes (torchrun): BatchNorm normalizes over the whole global "
                          "batch, as one process would, instead of each rank's share")
    accumulate: int = Field(1, ge=1, description="split each process's batch into this many micro-batches whose "
                            "gradients add up (the same step, less memory; BatchNorm then sees the micro-batches)")
    fsdp: bool = Field(False, description="several processes (torchrun): shard the student (and a live teacher) "
                       "with FSDP2 fully_shard instead of replicating it with DDP, for models too large for one "
                       "device; one process trains plainly (with a note)")

    @property
    def effective_lr(self) -> float:
        """`lr` after large-batch scaling: what the optimizer actually starts from."""
        ratio = self.batch_size / self.lr_base_batch_size
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scaling]

    @model_validator(mode="after")
    def _fsdp_combinations(self) -> "TrainConfig":
        """What FSDP cannot be combined with, refused while the recipe is read (before any process starts)."""
        if self.fsdp and self.cuda_graphs:
            raise ValueError("fsdp: true with cuda_graphs: true: FSDP's all-gathers and reduce-scatters run between "
                             "the graph's kernels and cannot be captured in a CUDA graph; set cuda_graphs: false (or "
                             "fsdp: false to train with DDP, where cuda_graphs is skipped with a note)")
        return self

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of training strictly between 0 and 1, e.g. [0.5, 0.75]")
        return v


class _TrainOverrideBase(Strict):
    def apply(self, base: TrainConfig) -> TrainConfig:
        return TrainConfig(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


# Per-stage changes to the shared `train:` section (e.g. more epochs for the teacher): every TrainConfig field,
# optional. Generated, so the two can never drift apart; values are checked when applied (Recipe._stages).
TrainOverride = create_model(
    "TrainOverride", __base__=_TrainOverrideBase,
    **{name: (Optional[field.annotation], None) for name, field in TrainConfig.model_fields.items()},
)


class ModelConfig(Strict):
    model: str = Field(..., description="registry name (e.g. resnet20), torchvision:NAME, timm:NAME or python:module:callable")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model constructor")
    checkpoint: Optional[str] = Field(None, description="load these weights (.safetensors/.pt) instead of training")
    train: TrainOverride = TrainOverride()


class StudentConfig(ModelConfig):
    init_from_teacher: Optional[Literal["every_other"] | list[int]] = Field(
        None, description="start the student (baseline and KD students alike) from the trained teacher's embeddings, "
                          "head and these layers: every_other (DistilBERT / DistilGPT-2) or a list of teacher layer "
                          "indices, one per student layer; widths must match (causal LMs: gpt, lm_small, lm_tiny, hf:)")

    @field_validator("init_from_teacher")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, list) and (not v or any(i < 0 for i in v) or len(set(v)) != len(v)):
            raise ValueError(f"{v}: give distinct teacher layer indices >= 0, one per student layer")
        return v


class TeacherConfig(ModelConfig):
    precision: Precision = Field("fp32", description="dtype the frozen teacher runs in while distilling")
    device: Literal["same", "cpu"] = Field("same", description="cpu: keep the teacher off the GPU while the student "
                                                               "trains there (memory-aware mode for small devices)")
    cache: bool = Field(False, description="offline KD: run the teacher once per augmentation view, store its "
                                           "logits (fp16, memory-mapped) and distill from the file")
    cache_views: int = Field(8, ge=1, description="fixed augmentation views cached; each epoch replays one")
    cache_top_k: Optional[int] = Field(None, ge=1, description="many-class tasks: store the k largest logits (+ "
                                                               "indices + one tail logit) instead of all")
    cache_dir: Optional[str] = Field(None, description="where caches live (shared across runs, one per fingerprint); "
                                                       "default: <run_dir>/teacher_cache")
    limit_train: Optional[int] = Field(None, gt=0, description="fine-tune the teacher on a stratified subset of N "
                                                               "training examples; students still train on all "
                                                               "(a pretrained teacher needs few labels, and its "
                                                               "cached outputs cover the full set)")
