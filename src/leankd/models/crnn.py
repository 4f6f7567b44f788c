"""CRNN keyword spotter: one strided conv over the log-mel image, a GRU over its columns, attention pooling.

This is the architecture of the KWS course our users come from (`crnn` = its ~70k-parameter base): conv ->
flatten (channel-major) -> GRU -> attention -> `classifier`. The conv has no time padding and the GRU is causal
when unidirectional, which is what lets `leankd.models.streaming` run it on audio chunk by chunk: `forward` is
exactly `classifier(pool(gru(conv_frames(x))))`, and those pieces are exposed for the streamer.

Presets with 35 classes (Speech Commands v2) on `[1, 40, 98]` = 1 s at hop 160 with `center=False`. MACs by
`FlopCounterMode` on CPU, where the GRU runs as `addmm` ops and is counted (cuDNN's fused RNN op has no FLOP
formula, so the report always counts on an fp32 CPU copy; `CRNN.macs(frames)` gives the same count by hand). Activations:
peak live activation storage of one fp32 forward at batch 1 (`measure.memory.tensor_memory`); memory =
4 * params + activations (the 15.7 KB input, the same for every preset, excluded).

    preset      params   MACs     activations  memory    vs crnn (MACs, memory)
    crnn_large  338,508  3.735M   51.8 KB      1406 KB   4.5x, 4.7x more (teacher: 24 ch, hidden 128)
    crnn         72,588  833.0k    9.3 KB       300 KB   base teacher (the course model)
    crnn_small    5,068   74.5k    4.3 KB      24.6 KB   11.2x, 12.2x fewer (4 ch, stride (4, 8), hidden 20)
    crnn_tiny     3,353   40.8k    2.6 KB      16.0 KB   20.4x, 18.7x fewer (3 ch, stride (4, 10), hidden 16)

The students use one GRU layer and BatchNorm + ReLU after the conv (`conv_norm_act`); the base keeps the course's
plain conv. With 12 classes the params are 71,093 / 4,585 / 2,962 for crnn / small / tiny.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from leankd.errors import ModelError
from leankd.models.registry import register_model


def _pair(name: str, value: object) -> tuple[int, int]:
    """Recipes give lists; accept any two positive ints as (freq, time)."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return int(value[0]), int(value[1])
    raise ModelError(f"CRNN {name} must be two positive integers (freq, time), got {value!r}")


class AttentionPool(nn.Module):
    """Softmax-weighted sum over time of the GRU outputs, the weights from a small MLP (course layout)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, H]
        alpha = torch.softmax(self.energy(x), dim=1)
        return (x * alpha).sum(dim=1)


class CRNN(nn.Module):
    """`[B, n_mels, T]` log-mels -> Conv2d (no padding) -> GRU over time -> pooling -> `classifier`.

    `conv_norm_act` adds BatchNorm + ReLU after the conv (the course had a plain conv, i.e. False): without a
    nonlinearity the conv is only a factorisation of the GRU's input weights.
    """

    def __init__(
        self,
        num_classes: int,
        n_mels: int = 40,
        cnn_out_channels: int = 8,
        kernel_size: Sequence[int] = (5, 20),
        stride: Sequence[int] = (2, 8),
        hidden_size: int = 64,
        gru_num_layers: int = 2,
        bidirectional: bool = False,
        attention: bool = True,
        dropout: float = 0.1,
        conv_norm_act: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        for name, value in (("n_mels", n_mels), ("cnn_out_channels", cnn_out_channels),
                            ("hidden_size", hidden_size), ("gru_num_layers", gru_num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"CRNN {name} must be a positive integer, got {value!r}")
        if self.kernel_size[0] > n_mels:
            raise ModelError(f"CRNN kernel_size[0] (freq) = {self.kernel_size[0]} exceeds n_mels = {n_mels}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"CRNN dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.n_mels = n_mels
        self.conv_out_freq = (n_mels - self.kernel_size[0]) // self.stride[0] + 1
        self.conv = nn.Conv2d(1, cnn_out_channels, kernel_size=self.kernel_size, stride=self.stride)
        self.conv_post: nn.Module = (nn.Sequential(nn.BatchNorm2d(cnn_out_channels), nn.ReLU())
                                     if conv_norm_act else nn.Identity())
        self.gru = nn.GRU(input_size=cnn_out_channels * self.conv_out_freq, hidden_size=hidden_size,
                          num_layers=gru_num_layers, batch_first=True,
                          dropout=dropout if gru_num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.num_features = hidden_size * (2 if bidirectional else 1)
        self.attention: nn.Module | None = AttentionPool(self.num_features) if attention else None
        self.classifier = nn.Linear(self.num_features, num_classes)

    @property
    def min_frames(self) -> int:
        """Shortest input (feature frames) that gives one GRU step: the conv's time receptive field."""
        return self.kernel_size[1]

    def conv_frames(self, feats: torch.Tensor) -> torch.Tensor:
        """Front end: `[B, n_mels, T]` -> `[B, T', C * F']`, T' = 1 + (T - kt) // st; column j sees frames
        `[j * st, j * st + kt)` only, so columns can be computed chunk by chunk."""
        if not is_fx_symbolic_tracing():  # torch.fx (BatchNorm folding for QAT) cannot trace shape checks
            if feats.dim() != 3:
                raise ModelError(f"CRNN expects log-mel features [B, n_mels, T] (n_mels={self.n_mels}), "
                                 f"got shape {tuple(feats.shape)}")
            if feats.shape[1] != self.n_mels:
                raise ModelError(f"CRNN expects [B, n_mels, T] with n_mels={self.n_mels}, got shape "
                                 f"{tuple(feats.shape)}")
            if feats.shape[2] < self.min_frames:
                raise ModelError(f"CRNN needs at least {self.min_frames} frames (its conv's time kernel), "
                                 f"got shape {tuple(feats.shape)}")
        x = self.conv_post(self.conv(feats.unsqueeze(1)))  # [B, C, F', T']
        return x.flatten(1, 2).transpose(1, 2)

    def pool(self, gru_outputs: torch.Tensor) -> torch.Tensor:
        """`[B, T', H]` -> `[B, H]`: attention over time, or the last step (a bidirectional GRU's backward
        direction ends at step 0, so that half is taken from there)."""
        if self.attention is not None:
            return self.attention(gru_outputs)
        if self.gru.bidirectional:
            h = self.gru.hidden_size
            return torch.cat([gru_outputs[:, -1, :h], gru_outputs[:, 0, h:]], dim=1)
        return gru_outputs[:, -1]

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """GRU outputs `[B, T', H]` (the per-step features a KD loss can match)."""
        out, _ = self.gru(self.conv_frames(feats))
        return out

    def forward_head(self, gru_outputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(gru_outputs))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(feats))

    def macs(self, frames: int) -> int:
        """Multiply-accumulates of one forward on `[1, n_mels, frames]`, counted by hand the way
        `FlopCounterMode` counts on CPU (conv, GRU matmuls, attention and classifier Linears; no bias adds,
        gates or softmax). Use it where the counter misses the GRU (cuDNN on CUDA)."""
        kf, kt = self.kernel_size
        steps = (frames - kt) // self.stride[1] + 1
        total = self.conv.out_channels * self.conv_out_freq * steps * kf * kt
        dirs = 2 if self.gru.bidirectional else 1
        h, size = self.gru.hidden_size, self.gru.input_size
        for _ in range(self.gru.num_layers):
            total += dirs * steps * 3 * h * (size + h)
            size = h * dirs
        if self.attention is not None:
            total += steps * (self.num_features * self.num_features + self.num_features)
        return total + self.num_features * self.num_classes


@register_model
def crnn(
    num_classes: int = 35,
    n_mels: int = 40,
    cnn_out_channels: int = 8,
    kernel_size: Sequence[int] = (5, 20),
    stride: Sequence[int] = (2, 8),
    hidden_size: int = 64,
    gru_num_layers: int = 2,
    bidirectional: bool = False,
    attention: bool = True,
    dropout: float = 0.1,
    conv_norm_act: bool = False,
) -> CRNN:
    """The course's base CRNN (~70k parameters); every knob can be overridden."""
    return CRNN(num_classes, n_mels=n_mels, cnn_out_channels=cnn_out_channels, kernel_size=kernel_size,
                stride=stride, hidden_size=hidden_size, gru_num_layers=gru_num_layers, bidirectional=bidirectional,
                attention=attention, dropout=dropout, conv_norm_act=conv_norm_act)


@register_model
def crnn_large(num_classes: int = 35, n_mels: int = 40, dropout: float = 0.1) -> CRNN:
    """A stronger teacher: 24 channels, hidden 128, 2 GRU layers (~4.5x the base's MACs)."""
    return CRNN(num_classes, n_mels=n_mels, cnn_out_channels=24, kernel_size=(5, 20), stride=(2, 8),
                hidden_size=128, gru_num_layers=2, dropout=dropout, conv_norm_act=True)


@register_model
def crnn_small(num_classes: int = 35, n_mels: int = 40) -> CRNN:
    """Student at ~1/11 of `crnn`'s MACs: 4 channels, freq stride 4, hidden 20, one GRU layer."""
    return CRNN(num_classes, n_mels=n_mels, cnn_out_channels=4, kernel_size=(5, 20), stride=(4, 8),
                hidden_size=20, gru_num_layers=1, dropout=0.0, conv_norm_act=True)


@register_model
def crnn_tiny(num_classes: int = 35, n_mels: int = 40) -> CRNN:
    """Student at ~1/20 of `crnn`'s MACs: 3 channels, strides (4, 10), hidden 16, one GRU layer."""
    return CRNN(num_classes, n_mels=n_mels, cnn_out_channels=3, kernel_size=(5, 20), stride=(4, 10),
                hidden_size=16, gru_num_layers=1, dropout=0.0, conv_norm_act=True)
