"""The causal-LM wrapper (`CausalLM`), a randomly initialized one from a transformers config, and `copy_layers`, the
DistilBERT/DistilGPT-2 student initialization (every other teacher layer). The registered family (`gpt`, `lm_small`,
`lm_tiny`) lives in `lm.py`, which re-exports these; they are here, below the registry, because `hf.py` wraps
`hf:PATH` causal checkpoints in them and the registry imports `hf.py` (through `hub.py`).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Union

import torch
from torch import nn

from leankd.errors import ModelError

# the width fields copy_layers compares (config attribute -> the name a message uses)
WIDTHS = {"hidden_size": "hidden", "num_attention_heads": "heads", "vocab_size": "vocab (num_classes)"}


class CausalLM(nn.Module):
    """A Hugging Face `...ForCausalLM` (`.hf`) that takes token ids and returns the logits tensor, so the loop, the
    measurements and int8 quantization treat it like any leankd model. `context` is its largest sequence length
    (the position table's size; a rotary model's configured maximum)."""

    def __init__(self, hf: nn.Module, source: str = ""):
        super().__init__()
        # fp32 weights always: transformers loads a checkpoint in the dtype it was saved in (most LMs ship bf16), and
        # AdamW on bf16 weights rounds small updates away; reduced precision is the loop's autocast, not the weights
        self.hf = hf.float()
        self.source = source
        self.num_classes = int(hf.config.vocab_size)
        self.context = int(hf.config.max_position_embeddings)
        self.vocab_used: Optional[int] = None  # limit_vocab: logits past the tokenizer's last id are dropped

    def limit_vocab(self, size: int) -> None:
        """Return logits for the first `size` token ids only. Checkpoints pad their embedding table past their
        tokenizer for faster matmuls (Pythia: 50,304 rows for 50,277 tokens; Qwen2.5 likewise): the padding rows are
        never a real next token, and teacher and student distributions must range over the same tokens for logit KD.
        The task calls this with its tokenizer's size; it is not saved with the weights, because every model a run
        builds or loads goes through the task first."""
        if not 0 < size <= self.num_classes:
            raise ModelError(f"limit_vocab({size}): the model has {self.num_classes} output tokens; the tokenizer "
                             "may use at most that many")
        self.vocab_used = None if size == self.num_classes else int(size)

    def trim_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [..., num_classes] -> [..., vocab_used] (a view; unchanged without limit_vocab)."""
        return logits if self.vocab_used is None else logits[..., :self.vocab_used]

    @property
    def config(self):
        return self.hf.config

    @property
    def classifier(self) -> nn.Module:
        """The output layer (hidden -> vocabulary), as leankd's classifiers name it."""
        return self.hf.get_output_embeddings()

    def _check_length(self, input_ids: torch.Tensor) -> None:
        if input_ids.shape[-1] > self.context:
            raise ModelError(f"a sequence of {input_ids.shape[-1]} tokens is longer than the model's context of "
                             f"{self.context} positions: crop the input or build the model with a larger context")

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last block after the final norm, [B, T, hidden]."""
        self._check_length(input_ids)
        return self.hf.base_model(input_ids=input_ids, use_cache=False).last_hidden_state

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.trim_logits(self.classifier(hidden))

    def init_from_teacher(self, teacher: nn.Module, layers: Union[str, Sequence[int]] = "every_other") -> list[int]:
        """`student.init_from_teacher` (the run's hook, named by no family): `copy_layers` from `teacher`."""
        return copy_layers(self, teacher, layers)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self._check_length(input_ids)
        # no KV cache in a full-sequence pass: training and scoring would only build one and throw it away
        return self.trim_logits(self.hf(input_ids=input_ids, use_cache=False).logits)


def from_config(config, source: str = "") -> CausalLM:
    """A randomly initialized CausalLM of `config` (transformers' own init: normal(0, initializer_range))."""
    from transformers import AutoModelForCausalLM

    return CausalLM(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), source)


# ------------------------------------------------------------------------------------------- layer copying
def blocks(model: CausalLM) -> tuple[str, nn.ModuleList]:
    """(state-dict prefix, ModuleList) of the transformer blocks: the ModuleList as long as the config's
    num_hidden_layers (GPTBigCode `transformer.h`, Llama `model.layers`, OPT `model.decoder.layers`, ...)."""
    n = model.config.num_hidden_layers
    for name, module in model.hf.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name:
            return f"{name}.", module
    raise ModelError(f"cannot find the {n} transformer blocks of {type(model.hf).__name__} to copy layers into")


def every_other(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers 0, 2, 4, ... for the student's `student_layers` blocks (DistilBERT's choice)."""
    if 2 * (student_layers - 1) >= teacher_layers:
        raise ModelError(f"copy_layers: every other layer of a {teacher_layers}-layer teacher fills at most "
                         f"{(teacher_layers + 1) // 2} student layers, the student has {student_layers}: give the "
                         "teacher indices as a list, or use a student with fewer layers")
    return list(range(0, 2 * student_layers, 2))


def _width_mismatches(student: CausalLM, teacher: CausalLM) -> list[str]:
    s, t = student.config, teacher.config
    found = []
    if type(student.hf) is not type(teacher.hf):
        found.append(f"architecture: student {type(student.hf).__name__}, teacher {type(teacher.hf).__name__}")
    for key, label in WIDTHS.items():
        if getattr(s, key, None) != getattr(t, key, None):
            found.append(f"{label}: student {getattr(s, key, None)}, teacher {getattr(t, key, None)}")
    inner = [getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) for c in (s, t)]
    if inner[0] != inner[1]:
        found.append(f"intermediate: student {inner[0]}, teacher {inner[1]}")
    tied = [bool(getattr(c, "tie_word_embeddings", False)) for c in (s, t)]
    if tied[0] != tied[1]:
        found.append(f"tie_embeddings: student {tied[0]}, teacher {tied[1]}")
    return found


@torch.no_grad()
def copy_layers(student: CausalLM, teacher: CausalLM,
                layers: Union[str, Sequence[int]] = "every_other") -> list[int]:
    """Initialize `student` from `teacher` (DistilBERT / DistilGPT-2): token and position embeddings, the final norm
    and the head are copied, and student block i gets teacher block kept[i] (`"every_other"`: 0, 2, 4, ...; or a
    list of teacher indices, one per student block). Widths must match (the student is the teacher with fewer
    blocks). Returns the kept teacher indices."""
    if not isinstance(student, CausalLM) or not isinstance(teacher, CausalLM):
        raise ModelError("copy_layers copies between two leankd causal LMs (gpt, lm_*, or hf: causal checkpoints); "
                         f"got {type(student).__name__} and {type(teacher).__name__}")
    mismatched = _width_mismatches(student, teacher)
    if mismatched:
        raise ModelError(f"copy_layers: student and teacher differ in {'; '.join(mismatched)}. Copying layers needs "
                         "the same widths: make the student as wide as the teacher (only fewer layers), or drop the "
                         "layer-copy initialization")
    s_prefix, s_blocks = blocks(student)
    t_prefix, t_blocks = blocks(teacher)
    if layers == "every_other":
        kept = every_other(len(t_blocks), len(s_blocks))
    elif isinstance(layers, str):
        raise ModelError(f"copy_layers: layers={layers!r}; give 'every_other' or a list of teacher layer indices")
    else:
        kept = [int(i) for i in layers]
        if len(kept) != len(s_blocks) or any(not 0 <= i < len(t_blocks) for i in kept):
            raise ModelError(f"copy_layers: layers {kept} must name {len(s_blocks)} teacher layers (one per student "
                             f"layer), each in 0..{len(t_blocks) - 1}")
    source = teacher.hf.state_dict()
    block_key = re.compile(rf"^{re.escape(s_prefix)}(\d+)\.(.*)$")
    target = {}
    for key, value in student.hf.state_dict().items():
        m = block_key.match(key)
        src = f"{t_prefix}{kept[int(m.group(1))]}.{m.group(2)}" if m else key
        if src not in source:
            raise ModelError(f"copy_layers: the teacher has no {src!r} for the student's {key!r}")
        if source[src].shape != value.shape:
            raise ModelError(f"copy_layers: {key} is {tuple(value.shape)} in the student but {src} is "
                             f"{tuple(source[src].shape)} in the teacher (e.g. another context); build the student "
                             "with the teacher's sizes, or drop the layer-copy initialization")
        target[key] = source[src]
    student.hf.load_state_dict(target)
    student.hf.config.leankd_kept_layers = kept  # saved with the model: which teacher layers it started from
    return kept
