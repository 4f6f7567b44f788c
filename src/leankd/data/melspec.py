"""Log-mel front end for keyword spotting, built on torch.stft (torchaudio has no build for our torch).

The filterbank is torchaudio's `MelSpectrogram` default (HTK mel scale, triangular filters, no area
normalisation), so features and checkpoints carry over from torchaudio-based code up to float rounding.

`center=False` is the default on purpose: frame `i` covers exactly samples `[i*hop, i*hop + n_fft)`, so
`frames = 1 + (samples - n_fft) // hop` and no frame depends on padding at the clip's edges. A streaming front
end that receives audio chunk by chunk therefore computes exactly the frames the whole clip would give
(see `leankd.models.streaming`). With `center=True` the first and last frames would see reflected audio that a
stream never has.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..errors import DataError

__all__ = ["LogMel", "hz_to_mel", "mel_filterbank", "mel_to_hz"]


def hz_to_mel(hz: float) -> float:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """`[n_mels, n_freqs]` triangular HTK filters, as torchaudio's `melscale_fbanks(norm=None, mel_scale="htk")`.

    Filter `m` rises from mel point `m` to a peak of 1 at point `m + 1` and falls to 0 at point `m + 2`, the
    `n_mels + 2` points spaced evenly in mel between `f_min` and `f_max`. Computed in float64, stored in fp32.
    """
    freqs = torch.linspace(0.0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    points = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    widths = points[1:] - points[:-1]  # [n_mels + 1]
    slopes = points.unsqueeze(0) - freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    return fb.T.contiguous().to(torch.float32)


class LogMel(nn.Module):
    """Waveform `[B, samples]` (or `[samples]`) -> log-mel energies `[B, n_mels, frames]`, always in fp32.

    `log(clamp(mel_fb @ |stft|^2, min=eps))` with a periodic Hann window. The computation leaves autocast
    off and casts the input to fp32: in fp16 the energies of quiet frames underflow and their log is -inf.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: int | None = 400,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        center: bool = False,
        eps: float = 1e-9,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        f_max = sample_rate / 2 if f_max is None else f_max
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("win_length", win_length),
                            ("hop_length", hop_length), ("n_mels", n_mels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"LogMel {name} must be a positive integer, got {value!r}")
        if win_length > n_fft:
            raise DataError(f"LogMel win_length ({win_length}) must be <= n_fft ({n_fft})")
        if not 0.0 <= f_min < f_max:
            raise DataError(f"LogMel needs 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}")
        if f_max > sample_rate / 2:
            raise DataError(f"LogMel f_max ({f_max}) must be <= sample_rate / 2 ({sample_rate / 2}), the Nyquist "
                            f"frequency")
        if not eps > 0:
            raise DataError(f"LogMel eps must be > 0 (it keeps log away from -inf), got {eps}")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.f_min, self.f_max, self.center, self.eps = n_mels, float(f_min), float(f_max), center, eps
        fb = mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, self.f_min, self.f_max)
        empty = (fb.amax(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            warnings.warn(f"LogMel: mel filters {empty} are all zero (n_mels={n_mels} is too many for n_fft={n_fft}); "
                          f"those bands will be constant log(eps)", stacklevel=2)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        self.register_buffer("mel_fb", fb, persistent=False)

    def num_frames(self, samples: int) -> int:
        """Frames produced from `samples` samples (0 when fewer than one frame's worth)."""
        if self.center:
            return 1 + samples // self.hop_length
        return 0 if samples < self.n_fft else 1 + (samples - self.n_fft) // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() not in (1, 2):
            raise ValueError(f"LogMel expects a waveform [B, samples] or [samples], got shape {tuple(waveform.shape)}")
        if not (waveform.is_floating_point()):
            raise ValueError(f"LogMel expects a float waveform (e.g. in [-1, 1]), got dtype {waveform.dtype}")
        squeeze = waveform.dim() == 1
        x = waveform.unsqueeze(0) if squeeze else waveform
        if not self.center and x.shape[-1] < self.n_fft:
            raise DataError(f"LogMel needs at least n_fft={self.n_fft} samples for one frame, got {x.shape[-1]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.float32)
            spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window.to(torch.float32), center=self.center, pad_mode="reflect",
                              return_complex=True)
            power = torch.view_as_real(spec).pow(2).sum(-1)  # |X|^2: [B, n_freqs, frames]
            mel = torch.matmul(self.mel_fb.to(torch.float32), power)
            out = torch.log(torch.clamp(mel, min=self.eps))
        return out.squeeze(0) if squeeze else out

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, win_length={self.win_length}, "
                f"hop_length={self.hop_length}, n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, "
                f"center={self.center}")
