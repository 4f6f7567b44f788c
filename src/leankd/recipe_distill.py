"""The `distill:` section of a recipe: the logit loss (the alpha-mix or explicit terms), layer losses and
progressive distillation. A task kind's own distill sections (`distill.augment`, `distill.seq`) are declared on the
kind (`TaskKind.distill_sections`) and validated with its model (recipe_sections). Split out of recipe.py by job;
`leankd.recipe` still exports every name."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from .core.params import Strict
from .kd.registry import FEATURE_LOSSES, RAW, TRANSFORMS, LossTerm, check_terms, parse_terms
from .recipe_sections import WithSections
from .recipe_train import ModelConfig


class LayerCandidates(Strict):
    """Module-name patterns (fnmatch, e.g. `layer*.?`) the automatic layer choice may pick from; default: the
    blocks of each network (children of its Sequential/ModuleList containers)."""

    student: Optional[list[str]] = None
    teacher: Optional[list[str]] = None


class FeatureTerm(Strict):
    """One intermediate-layer loss, added to the logit loss: `weight * kind(pairs)`.

    `pairs` lists (student module, teacher module) paths as `named_modules()` spells them, or `auto`: the pipeline
    measures linear CKA between candidate layers on a few batches and distills the `top_k` best pairs of a
    monotonic student->teacher matching (`leankd layers RECIPE` shows the table)."""

    kind: str = Field(description="a registered feature loss kind (leankd.kd.registry.FEATURE_LOSSES)")
    weight: float = Field(1.0, gt=0, description="at: the paper's beta = 1000 is the usual weight")
    pairs: list[tuple[str, str]] | Literal["auto"]
    top_k: Optional[int] = Field(None, ge=1, description="with pairs: auto, distill only the k best pairs")
    candidates: LayerCandidates = LayerCandidates()

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        return FEATURE_LOSSES.require(v)

    @model_validator(mode="after")
    def _pairs(self) -> "FeatureTerm":
        if self.pairs == "auto" and not FEATURE_LOSSES.get(self.kind).auto_pairs:
            raise ValueError(f"{self.kind} reads attention modules, which pairs: auto (CKA over blocks) does not "
                             "choose: list the self-attention modules, e.g. [[hf.bert.encoder.layer.2.attention.self, "
                             "hf.bert.encoder.layer.5.attention.self]]")
        if self.pairs != "auto":
            if not self.pairs:
                raise ValueError("'pairs' is empty: list [student_module, teacher_module] pairs, or write 'auto'")
            if self.top_k is not None:
                raise ValueError("'top_k' applies to pairs: auto (explicit pairs are all distilled)")
        return self


class DistillConfig(WithSections):
    """Either the classic α-mix (alpha, temperature) or an explicit list of weighted loss terms; optional
    intermediate-layer (feature) losses on top. A task kind's own sections (`TaskKind.distill_sections`) are keys
    here too, unset unless the recipe gives one (or the kind's check fills it)."""

    sections_of = "distill"

    alpha: float = Field(0.9, ge=0, le=1, description="weight of KD; 1 - alpha goes to cross-entropy")
    temperature: float = Field(4.0, gt=0)
    loss: Optional[list[SerializeAsAny[LossTerm]]] = Field(
        None, description="explicit terms {kind, weight, <the kind's parameters>}; overrides alpha. Kinds: "
                          "leankd.kd.registry.LOGIT_LOSSES (ce, kd, soft_ce, mse, dkd, dist, ...)")
    transform: str = Field(RAW, description="logits before every distribution-comparing term's softmax (the alpha-"
                                            "mix's kd included, unless a term sets its own): raw, or standardize "
                                            "(logit standardization, Sun et al. 2024)")
    features: list[FeatureTerm] = Field(default_factory=list, description="layer distillation terms (hint, at, ...)")
    analysis_batches: int = Field(4, ge=1, description="batches (of batch_size) for the CKA analysis of pairs: auto")
    feature_control: bool = Field(True, description="with features: also train a logit-only KD student (same "
                                                    "budget), so the report shows what the feature losses bought")
    # the text kinds' and seq2seq's sections, fields in their old places so dumped recipes keep them (recipe_sections)
    augment: Optional[Any] = Field(None, description="text: Tang et al. augmentation, unlabeled texts the teacher "
                                                     "labels for the KD student (leankd/tasks/kinds/text_config.py)")
    seq: Optional[Any] = Field(None, description="seq2seq: word- and sequence-level KD students, defaults when unset "
                                                 "(leankd/tasks/kinds/seq_config.py)")
    assistants: list[ModelConfig] = Field(default_factory=list, description="progressive distillation: teacher "
                                          "-> assistants (in order, each distilled with the recipe's loss and "
                                          "train: settings) -> student; a model name or {model, kwargs}")
    assistant_mode: Literal["chain", "dense"] = Field("chain", description="chain: each model learns from the one "
                                                      "before it (TAKD); dense: from the teacher and every assistant "
                                                      "before it (DGKD)")

    @field_validator("assistants", mode="before")
    @classmethod
    def _assistant_names(cls, v: Any) -> Any:
        """`assistants: [resnet32, resnet14]` is short for [{model: resnet32}, {model: resnet14}]."""
        return [{"model": a} if isinstance(a, str) else a for a in v] if isinstance(v, list) else v

    @field_validator("loss", mode="wrap")
    @classmethod
    def _terms(cls, v: Any, handler: Any) -> Any:
        """Each term is validated by its registered kind's own parameter model."""
        return handler(parse_terms(v))

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, v: str) -> str:
        return TRANSFORMS.require(v, also=(RAW,))

    @model_validator(mode="after")
    def _needs_teacher(self) -> "DistillConfig":
        if self.loss is not None:
            check_terms(self.loss)
        return self
