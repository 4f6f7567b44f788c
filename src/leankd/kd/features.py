"""Feature (layer) distillation losses: the student matches what the teacher computes inside, not only its logits.

Each loss takes `pairs = [(student_module, teacher_module), ...]` (module paths as `named_modules()` spells them),
names those modules in `student_taps()` / `teacher_taps()` so the training loop hooks them, and reads their raw
outputs from `LossInputs.student_features` / `teacher_features` (a tensor, or the tuple a Hugging Face module
returns; `first_tensor` takes the representation out of it).

- `Hint`                  FitNets hints (Romero et al. 2015): a trained adapter maps the student map to the
                          teacher's width, then MSE.
- `AttentionTransfer`     Zagoruyko & Komodakis 2017: match normalised spatial attention maps (no parameters).
- `SimilarityPreserving`  Tung & Mori 2019: match the batch's pairwise-similarity matrices (no parameters).
- `HiddenStateMSE`        TinyBERT (Jiao et al. 2020) hidden-state loss: Linear(Hs→Ht), then MSE.
- `AttentionMapLoss`      TinyBERT attention loss on the attention probabilities of an attention module.

Trainable adapters (Hint, HiddenStateMSE) are created by `build()`, which the training loop calls once with the
features of a probe batch before the optimizer exists; they live in this loss (an `nn.ModuleDict`), so the
optimizer gets them through `loss.parameters()` and export never sees them.

Precision: everything here runs in fp32 with autocast switched off, whatever precision the features came out in.
Adapters are therefore always fp32 parameters (on the student feature's device), never bf16/fp16 — a half-precision
adapter would train badly and mismatch the upcast features; fp32 master weights are what mixed precision wants.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LeanKDError
from .losses import Loss, LossInputs
from .taps import first_tensor

__all__ = [
    "AttentionMapLoss",
    "MiniLMAttention",
    "AttentionTransfer",
    "FeatureLossError",
    "HiddenStateMSE",
    "Hint",
    "SimilarityPreserving",
]


class FeatureLossError(LeanKDError, ValueError):
    """A feature loss got features it cannot use (shapes that do not pair up, missing attention probabilities).
    A ValueError, and a LeanKDError so the CLI shows the message without a traceback."""


# helpers ---------------------------------------------------------------------------------------------------------
def _check_pairs(pairs: Iterable, who: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs or []:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(n, str) and n for n in pair):
            raise FeatureLossError(f"{who}: each pair must be (student_module, teacher_module) as two non-empty "
                                   f"module paths, got {pair!r}")
        out.append((pair[0], pair[1]))
    if not out:
        raise FeatureLossError(f"{who} needs at least one (student_module, teacher_module) pair")
    return out


def _key(student: str, teacher: str) -> str:
    """ModuleDict key for a pair: module paths contain dots, which module names cannot."""
    return f"{student}__{teacher}".replace(".", "_")


def _fp32(device: torch.device):
    """Autocast off, so adapters and reductions really run in fp32 even inside the loop's autocast region."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()


def _feature(features: dict, name: str, side: str, who: str) -> Any:
    if name not in features:
        raise FeatureLossError(f"{who}: no {side} feature for module {name!r} (have {sorted(features)}); the "
                               f"training loop must hook the loss's {side}_taps()")
    return features[name]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) → (B, C, *size): average pooling when shrinking (keeps all the signal, like strided
    downsampling in the network), bilinear interpolation when growing or when one side grows and one shrinks."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{s}->{t}" for s, t in pairs)


class _PairLoss(Loss):
    """Shared plumbing: pairs, taps, feature lookup."""

    needs_teacher = True
    name = "feature"

    def __init__(self, pairs: list[tuple[str, str]]):
        super().__init__()
        self.pairs = _check_pairs(pairs, type(self).__name__)

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.pairs))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t for _, t in self.pairs))

    def _features(self, inputs_s: dict, inputs_t: dict, s: str, t: str) -> tuple[Any, Any]:
        who = type(self).__name__
        return _feature(inputs_s, s, "student", who), _feature(inputs_t, t, "teacher", who)

    def describe(self) -> str:
        return f"{self.name}({_pairs_text(self.pairs)})"


class _AdaptedPairLoss(_PairLoss):
    """A pair loss with one trainable adapter per pair, created by `build` from a probe batch."""

    def __init__(self, pairs: list[tuple[str, str]]):
        super().__init__(pairs)
        self.adapters = nn.ModuleDict()

    def _make_adapter(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def _check(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> None:  # pragma: no cover
        raise NotImplementedError

    def build(self, student_features: dict, teacher_features: dict) -> None:
        """Create the missing adapters (fp32, on the student feature's device). Existing ones are kept, so a
        resumed run rebuilds nothing and its loaded adapter weights stay."""
        for s_name, t_name in self.pairs:
            key = _key(s_name, t_name)
            if key in self.adapters:
                continue
            s_raw, t_raw = self._features(student_features, teacher_features, s_name, t_name)
            s, t = first_tensor(s_raw), first_tensor(t_raw)
            self._check(s, t, (s_name, t_name))
            adapter = self._make_adapter(s, t, (s_name, t_name))
            self.adapters[key] = adapter.to(device=s.device, dtype=torch.float32)

    def _adapter(self, s_name: str, t_name: str) -> nn.Module:
        key = _key(s_name, t_name)
        if key not in self.adapters:
            raise RuntimeError(f"{type(self).__name__}: build() must run first — it creates the adapter for "
                               f"{s_name}->{t_name} from one batch of features (the training loop calls "
                               "loss.build(student_features, teacher_features) before creating the optimizer)")
        return self.adapters[key]

    def compute(self, inputs: LossInputs) -> Tensor:
        """Mean over pairs of MSE(adapter(student), teacher); adapted conv maps are resized to the teacher's H x W."""
        values = []
        for s_name, t_name in self.pairs:
            adapter = self._adapter(s_name, t_name)
            s_raw, t_raw = self._features(inputs.student_features, inputs.teacher_features, s_name, t_name)
            s, t = first_tensor(s_raw).float(), first_tensor(t_raw).float()
            self._check(s, t, (s_name, t_name))
            with _fp32(s.device):
                mapped = adapter(s)
                if mapped.dim() == 4:
                    mapped = _resize(mapped, tuple(t.shape[-2:]))
                values.append(F.mse_loss(mapped, t))
        return torch.stack(values).mean()


def _linear_adapter(width_in: int, width_out: int) -> nn.Linear:
    """Linear map to the teacher's width; the identity when the widths agree (the student starts where it is)."""
    linear = nn.Linear(width_in, width_out)
    if width_in == width_out:
        _identity_init_(linear.weight)
        nn.init.zeros_(linear.bias)
    return linear


def _identity_init_(weight: Tensor) -> None:
    """Make a square Linear weight or 1×1 conv weight (out, in[, 1, 1]) the identity."""
    with torch.no_grad():
        weight.zero_()
        eye = torch.eye(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
        weight.view(weight.shape[0], weight.shape[1]).copy_(eye)


# FitNets -----------------------------------------------------------------------------------------------------------
class Hint(_AdaptedPairLoss):
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    Why: a thin student cannot output the teacher's channels, so a small trained regressor (the adapter) maps the
    student's map to the teacher's width and the student learns to make that easy: loss = mean over pairs of
    MSE(adapter(student), teacher).

    Adapter per pair (created by `build`):
    - 4-D maps (B, C, H, W): 1×1 Conv2d without bias followed by BatchNorm2d — the `ConvReg` of mdistiller's
      FitNet reproduction (RepDistiller adds a ReLU; we do not, teacher maps may be pre-activation). The BN
      absorbs the scale/offset gap between the two networks, which a bare 1×1 conv learns slowly.
      `batchnorm=False` gives the bare 1×1 conv (with bias). When spatial sizes differ, the adapted student
      map is resized to the teacher's H×W (average pooling if larger, bilinear if smaller).
    - sequences (B, L, H) and vectors (B, H): a Linear on the last dimension. Sequence lengths must match.
    Equal widths still get an adapter (the student need not live in the teacher's basis), initialised to the
    identity: conv/Linear weight = I (so a Linear adapter starts as exactly the identity; with BatchNorm the
    conv adapter starts as per-channel standardisation of the student map).
    """

    name = "hint"

    def __init__(self, pairs: list[tuple[str, str]], batchnorm: bool = True):
        super().__init__(pairs)
        self.batchnorm = bool(batchnorm)

    def _check(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> None:
        where = f"Hint pair {pair[0]}->{pair[1]}"
        if s.dim() != t.dim() or s.dim() not in (2, 3, 4):
            raise FeatureLossError(f"{where}: student feature {tuple(s.shape)} and teacher feature "
                                   f"{tuple(t.shape)} must both be (B, C, H, W) maps, (B, L, H) sequences or "
                                   "(B, H) vectors")
        if s.shape[0] != t.shape[0]:
            raise FeatureLossError(f"{where}: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
        if s.dim() == 3 and s.shape[1] != t.shape[1]:
            raise FeatureLossError(f"{where}: sequence lengths differ (student {s.shape[1]}, teacher "
                                   f"{t.shape[1]}); pick layers with the same number of tokens")

    def _make_adapter(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> nn.Module:
        if s.dim() == 4:
            cs, ct = s.shape[1], t.shape[1]
            conv = nn.Conv2d(cs, ct, kernel_size=1, bias=not self.batchnorm)
            if cs == ct:
                _identity_init_(conv.weight)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            return nn.Sequential(conv, nn.BatchNorm2d(ct)) if self.batchnorm else conv
        return _linear_adapter(s.shape[-1], t.shape[-1])


    def describe(self) -> str:
        return f"hint({_pairs_text(self.pairs)})"


# Attention transfer -----------------------------------------------------------------------------------------------
def _attention_map(x: Tensor, p: float) -> Tensor:
    """(B, C, H, W) → (B, H, W): mean over channels of |x|^p (the paper's F^p_mean)."""
    return x.abs().pow(p).mean(dim=1)


class AttentionTransfer(_PairLoss):
    """Activation-based attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    Why: where a network looks (which spatial positions carry large activations) transfers between architectures
    of any width, with no adapter. a(F) = mean over channels of |F|^p, flattened and L2-normalised per sample;
    loss = mean over pairs of mean((a_s − a_t)²) — exactly the authors' `at_loss`,
    `(at(x) - at(y)).pow(2).mean()` with `at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))`.
    If the spatial sizes differ, the student's attention map is resized to the teacher's (average pooling if
    larger, bilinear if smaller) before normalising. No trainable parameters.

    The paper weights this term by β = 1000 (β/2 per pair in their code); that weight is the caller's:
    `CE() + 1000 * AttentionTransfer(pairs)`.
    """

    name = "at"

    def __init__(self, pairs: list[tuple[str, str]], p: float = 2.0):
        super().__init__(pairs)
        if p <= 0:
            raise FeatureLossError(f"AttentionTransfer p must be > 0, got {p}")
        self.p = float(p)

    def compute(self, inputs: LossInputs) -> Tensor:
        values = []
        for s_name, t_name in self.pairs:
            s_raw, t_raw = self._features(inputs.student_features, inputs.teacher_features, s_name, t_name)
            s, t = first_tensor(s_raw).float(), first_tensor(t_raw).float()
            if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
                raise FeatureLossError(f"AttentionTransfer pair {s_name}->{t_name}: needs two (B, C, H, W) maps "
                                       f"with the same batch size, got {tuple(s.shape)} and {tuple(t.shape)}")
            with _fp32(s.device):
                a_s = _attention_map(s, self.p)
                a_t = _attention_map(t, self.p)
                if a_s.shape[-2:] != a_t.shape[-2:]:
                    a_s = _resize(a_s.unsqueeze(1), tuple(a_t.shape[-2:])).squeeze(1)
                a_s = F.normalize(a_s.flatten(1), dim=1)
                a_t = F.normalize(a_t.flatten(1), dim=1)
                values.append((a_s - a_t).pow(2).mean())
        return torch.stack(values).mean()

    def describe(self) -> str:
        p = "" if self.p == 2.0 else f"p={self.p:g}; "
        return f"at({p}{_pairs_text(self.pairs)})"


# Similarity preserving ---------------------------------------------------------------------------------------------
class SimilarityPreserving(_PairLoss):
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

    Why: inputs the teacher finds alike should look alike to the student; comparing b×b similarity matrices needs
    no adapter and works across widths and spatial sizes. With Q the (b, ·) flattened features of a batch,
    G = row-L2-normalise(Q Qᵀ); loss = ‖G_s − G_t‖²_F / b², averaged over pairs (the paper sums over pairs and
    weights by γ = 3000 — that weight is the caller's `*`). Matches RepDistiller's `Similarity` loss. Scale
    invariant per sample set: scaling all student features by a constant leaves G_s unchanged. No parameters.
    """

    name = "sp"

    def compute(self, inputs: LossInputs) -> Tensor:
        values = []
        for s_name, t_name in self.pairs:
            s_raw, t_raw = self._features(inputs.student_features, inputs.teacher_features, s_name, t_name)
            s, t = first_tensor(s_raw).float(), first_tensor(t_raw).float()
            if s.shape[0] != t.shape[0]:
                raise FeatureLossError(f"SimilarityPreserving pair {s_name}->{t_name}: batch sizes differ "
                                       f"({s.shape[0]} vs {t.shape[0]})")
            b = s.shape[0]
            with _fp32(s.device):
                q_s, q_t = s.reshape(b, -1), t.reshape(b, -1)
                g_s = F.normalize(q_s @ q_s.t(), dim=1)
                g_t = F.normalize(q_t @ q_t.t(), dim=1)
                values.append((g_s - g_t).pow(2).sum() / (b * b))
        return torch.stack(values).mean()


# TinyBERT ----------------------------------------------------------------------------------------------------------
class HiddenStateMSE(_AdaptedPairLoss):
    """TinyBERT hidden-state loss (Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding",
    Findings of EMNLP 2020): MSE(H_s W_h, H_t), with W_h a trained Linear(Hs → Ht) per pair.

    Why: a narrower transformer cannot produce the teacher's hidden width; TinyBERT learns W_h jointly with the
    student. Reads transformer layers / embeddings (`bert.encoder.layer.3`, `bert.embeddings`); their outputs may
    be tuples, `first_tensor` takes the hidden states. Features are (B, L, H) with equal L.

    The attention mask is not part of `LossInputs`, so the mean runs over all positions, padding included —
    as TinyBERT's own code does (its `MSELoss` over the full hidden states). Equal widths still get W_h,
    initialised to the identity.
    """

    name = "hidden_mse"

    def _check(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> None:
        where = f"HiddenStateMSE pair {pair[0]}->{pair[1]}"
        if s.dim() < 2 or s.dim() != t.dim() or s.shape[:-1] != t.shape[:-1]:
            raise FeatureLossError(f"{where}: student hidden states {tuple(s.shape)} and teacher {tuple(t.shape)} "
                                   "must agree in every dimension but the last (batch, sequence length); pick "
                                   "layers with the same number of tokens")

    def _make_adapter(self, s: Tensor, t: Tensor, pair: tuple[str, str]) -> nn.Module:
        return _linear_adapter(s.shape[-1], t.shape[-1])



_EAGER_HINT = ('build the model with attn_implementation="eager" (e.g. AutoConfig/BertConfig(..., '
               'attn_implementation="eager") or from_pretrained(..., attn_implementation="eager")): the default '
               'sdpa/flash attention never materialises the attention probabilities')


def _attention_probs(output: Any, name: str, side: str) -> Tensor:
    """The (B, heads, L, L) attention probabilities in an attention module's raw output: index 1 of the tuple a
    Hugging Face attention module returns (`(attn_output, attn_weights)`), or the output itself if it is 4-D."""
    if isinstance(output, Tensor):
        probs = output
    elif isinstance(output, (tuple, list)):
        if len(output) < 2:
            raise FeatureLossError(f"AttentionMapLoss: {side} module {name!r} returned a {len(output)}-tuple; "
                                   "expected (attn_output, attn_weights) — tap the attention module itself "
                                   "(e.g. bert.encoder.layer.0.attention.self)")
        probs = output[1]
        if probs is None:
            raise FeatureLossError(f"AttentionMapLoss: {side} module {name!r} returned no attention weights; "
                                   + _EAGER_HINT)
    else:
        raise FeatureLossError(f"AttentionMapLoss: cannot read attention maps from the {side} output of {name!r} "
                               f"(a {type(output).__name__})")
    if not isinstance(probs, Tensor) or probs.dim() != 4:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise FeatureLossError(f"AttentionMapLoss: {side} module {name!r} gave {shape} where (B, heads, L, L) "
                               "attention maps were expected; tap the attention module itself")
    return probs


def _attention_pair(loss: _PairLoss, inputs: LossInputs, s_name: str, t_name: str) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's attention probabilities of one pair, in fp32."""
    s_raw, t_raw = loss._features(inputs.student_features, inputs.teacher_features, s_name, t_name)
    return (_attention_probs(s_raw, s_name, "student").float(), _attention_probs(t_raw, t_name, "teacher").float())


class AttentionMapLoss(_PairLoss):
    """TinyBERT attention loss (Jiao et al. 2020): MSE between student and teacher attention maps, per pair.

    Why: self-attention patterns carry much of what a transformer learned about syntax and co-reference, and they
    have no width, so no adapter is needed. We compare the attention *probabilities* (what Hugging Face attention
    modules return as `attn_weights`, index 1 of their output; a plain 4-D output is taken as the maps). TinyBERT
    compared pre-softmax scores with masked entries zeroed; probabilities are bounded, need no masking trick
    (masked keys get probability 0 on both sides in eval mode) and are what the modules expose. Only eager attention
    returns them: with sdpa/flash the weights are None and this loss says to use attn_implementation="eager".
    Caveat: Hugging Face returns the weights AFTER attention dropout, so a student training with
    `attention_probs_dropout_prob > 0` compares dropped-out maps (zeros and 1/(1-p) scaling) with the teacher's clean
    ones, which pulls its attention towards uniform: build the student with `attention_probs_dropout_prob=0`.

    If head counts differ, both sides are averaged over heads first (as MiniLM does for mismatched heads) and the
    head-mean maps are compared; sequence lengths must match. Padding query rows are included in the mean.
    """

    name = "attention_mse"

    def needs_attention_maps(self) -> bool:
        return True

    def compute(self, inputs: LossInputs) -> Tensor:
        values = []
        for s_name, t_name in self.pairs:
            a_s, a_t = _attention_pair(self, inputs, s_name, t_name)
            if a_s.shape[0] != a_t.shape[0] or a_s.shape[-2:] != a_t.shape[-2:]:
                raise FeatureLossError(f"AttentionMapLoss pair {s_name}->{t_name}: attention maps "
                                       f"{tuple(a_s.shape)} and {tuple(a_t.shape)} differ in batch or sequence "
                                       "length")
            with _fp32(a_s.device):
                if a_s.shape[1] != a_t.shape[1]:
                    a_s, a_t = a_s.mean(dim=1, keepdim=True), a_t.mean(dim=1, keepdim=True)
                values.append(F.mse_loss(a_s, a_t))
        return torch.stack(values).mean()


def _kl_rows(target: Tensor, student: Tensor, key_mask: Tensor) -> Tensor:
    """Mean over (batch, head, valid query) rows of KL(target_row || student_row); masked keys (probability 0 on
    both sides) contribute nothing, and log 0 is never taken."""
    log_s = student.clamp_min(1e-30).log()
    kl = torch.xlogy(target, target) - target * log_s  # [B, H, L, L]; 0 * log 0 := 0
    rows = kl.sum(-1)  # [B, H, L]
    valid = key_mask[:, None, :].to(rows.dtype)  # padded query rows are left out
    return (rows * valid).sum() / (valid.sum() * rows.shape[1]).clamp_min(1)


def _value_relation(values: Tensor, heads: int, key_mask: Tensor) -> Tensor:
    """softmax(V V^T / sqrt(d_head)) per head over valid keys: MiniLM's value relation, (B, heads, L, L)."""
    b, length, width = values.shape
    if width % heads:
        raise FeatureLossError(f"MiniLM value relation: value width {width} does not split into {heads} heads")
    v = values.float().view(b, length, heads, width // heads).transpose(1, 2)
    scores = v @ v.transpose(-1, -2) / (width // heads) ** 0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


class MiniLMAttention(_PairLoss):
    """MiniLM's deep self-attention transfer (Wang et al. 2020): for each (student, teacher) pair of self-attention
    modules, KL between the teacher's and the student's attention distributions plus KL between their value
    relations softmax(V V^T / sqrt(d)), per head, averaged over heads and valid query positions.

    Why: both are (L x L) per head, so a student of another hidden size needs no adapter (the paper distils only
    the last layer). Pairs name the self-attention modules (BERT: `...encoder.layer.5.attention.self`); the values
    are read from their `value` projection (`<module>.value`). Head counts must match (the value relation splits
    by heads). Padded keys are found from the teacher's attention (probability 0 for every query) and masked in
    the value relation; padded query rows are left out. Attention weights come only from eager attention, which the
    training loop switches on for the duration of the distillation."""

    name = "minilm"

    def needs_attention_maps(self) -> bool:
        return True

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(n for s, _ in self.pairs for n in (s, f"{s}.value")))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(n for _, t in self.pairs for n in (t, f"{t}.value")))

    def compute(self, inputs: LossInputs) -> Tensor:
        values = []
        for s_name, t_name in self.pairs:
            a_s, a_t = _attention_pair(self, inputs, s_name, t_name)
            if a_s.shape != a_t.shape:
                raise FeatureLossError(f"MiniLM pair {s_name}->{t_name}: attention maps {tuple(a_s.shape)} and "
                                       f"{tuple(a_t.shape)} differ; MiniLM needs the same number of heads")
            v_s, v_t = self._features(inputs.student_features, inputs.teacher_features, f"{s_name}.value",
                                      f"{t_name}.value")
            with _fp32(a_s.device):
                key_mask = a_t.detach().sum(dim=(1, 2)) > 0  # [B, L]: keys some query attends to
                heads = a_t.shape[1]
                attention = _kl_rows(a_t.detach(), a_s, key_mask)
                relation = _kl_rows(_value_relation(v_t.detach(), heads, key_mask),
                                    _value_relation(v_s, heads, key_mask), key_mask)
                values.append(attention + relation)
        return torch.stack(values).mean()
