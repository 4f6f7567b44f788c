"""The causal_lm kind's recipe section `data.lm`: where the text is, how it is tokenized, how long a block is.
Kept in a module of its own (imports only leankd.core) so the recipe can read it without the kind's builders."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ...core.params import Strict, known_encoding


class LMConfig(Strict):
    """Causal language modelling (`data.task: causal_lm`): text from a .txt file, a JSON-lines file (one text per
    line, `text_column`) or a folder of such files, cut into contiguous train / val / test parts (train first, so no
    text of a later part is ever trained on) and packed into blocks of `context` tokens."""

    format: Literal["auto", "txt", "jsonl"] = Field("auto", description="auto: by the file suffix (.jsonl/.json: "
                                                                         "JSON lines, anything else: plain text)")
    text_column: str = Field("text", description="the key of the text in each JSON line")
    encoding: str = Field("utf-8", description="text encoding of the files")
    tokenizer: str = Field("chars", description="chars (one token per character, vocabulary from the training part), "
                                                "bpe (a byte-level BPE trained on the training part with the "
                                                "`tokenizers` library), or the path of a local Hugging Face "
                                                "tokenizer folder (holding tokenizer.json)")
    vocab_size: int = Field(512, ge=260, le=65_536, description="bpe: the vocabulary size it is trained to (256 "
                                                                "byte symbols + merges + 1 end-of-text)")
    context: int = Field(64, ge=2, le=1 << 16, description="tokens per training block (and per evaluated block)")
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="the last share of the text, held out for the "
                                                                   "final report (data.val_fraction: the share "
                                                                   "before it, per-epoch validation)")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return known_encoding(v)

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, v: str) -> str:
        if v in ("chars", "bpe"):
            return v
        if v.startswith("hf:"):
            v = v[3:]
        from pathlib import Path

        folder = Path(v).expanduser()
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{v!r} is neither chars, bpe nor a Hugging Face tokenizer folder (no tokenizer.json "
                             "found there): give chars, bpe, or the folder a model was saved to with "
                             "save_pretrained")
        return str(folder)


LMStudent = Literal["seq", "on_policy"]


class LMDistillConfig(Strict):
    """`distill.lm`: causal-LM students besides the token-level KD student (`distill.loss`), each its own stage with
    the same initialization and budget, in the report beside the baseline.

    - `seq` (sequence-level KD, Kim & Rush 2016): the teacher continues the first `prompt_tokens` tokens of training
      blocks once (cached, fingerprinted); the student learns by cross-entropy on those continuations mixed with the
      real text, for the baseline's number of steps.
    - `on_policy` (GKD, Agarwal et al. 2024): in a share `on_policy_fraction` (λ) of the batches, each block's
      continuation after `prompt_tokens` is sampled from the student being trained, and the teacher scores it; the
      loss is the divergence terms of `distill.loss` alone (no cross-entropy: the student's own samples are no
      labels), on the generated positions of those batches and every position of the others."""

    students: list[LMStudent] = Field(default_factory=list, description="extra students: seq and/or on_policy")
    prompt_tokens: int = Field(16, ge=1, description="tokens of a training block kept as the prompt of a generated "
                                                     "continuation (must be less than data.lm.context)")
    seq_prompts: Optional[int] = Field(None, ge=1, description="seq: how many training blocks the teacher continues "
                                                               "(evenly spread; default every block)")
    seq_temperature: float = Field(1.0, ge=0, description="seq: the teacher samples at this temperature (0: greedy)")
    on_policy_fraction: float = Field(0.5, gt=0, le=1, description="on_policy: the share λ of batches whose "
                                                                    "continuations the student samples")
    sample_temperature: float = Field(1.0, gt=0, description="on_policy: the student samples at this temperature")

    @field_validator("students")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{v}: name each student once")
        return v
