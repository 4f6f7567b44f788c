"""Waveform augmentation for keyword spotting, batched on the training device: a random time shift with zero fill
and background noise mixed in at a random signal-to-noise ratio. Every draw comes from the generator the task
passes in, which is seeded from (seed, epoch): an epoch is reproducible on its own, so `--resume` still equals an
uninterrupted run."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class WaveAugment:
    """`__call__(wave [B, L] float, generator) -> [B, L]`.

    `noise_bank`: one long 1-D float tensor (background recordings, or the training split's silence clips, end to
    end) from which a random L-sample segment is cut per clip. The noise is scaled to a random SNR in
    `snr_db` relative to the clip's own RMS; a (near-)silent clip gets the noise at the bank's own level so the
    `_silence_` class still sees varied noise."""

    def __init__(self, shift_samples: int = 1600, noise_bank: Optional[Tensor] = None, noise_prob: float = 0.8,
                 snr_db: tuple[float, float] = (5.0, 20.0)):
        self.shift = int(shift_samples)
        self.noise_bank = noise_bank if noise_bank is not None and noise_bank.numel() else None
        self.noise_prob = noise_prob if self.noise_bank is not None else 0.0
        self.snr_db = snr_db

    def to(self, device: torch.device) -> "WaveAugment":
        if self.noise_bank is not None:
            self.noise_bank = self.noise_bank.to(device)
        return self

    def describe(self) -> str:
        parts = [f"time shift +-{self.shift} samples"]
        if self.noise_bank is not None:
            parts.append(f"noise p={self.noise_prob} at {self.snr_db[0]:g}-{self.snr_db[1]:g} dB SNR "
                         f"({self.noise_bank.numel()} noise samples)")
        return ", ".join(parts)

    def __call__(self, wave: Tensor, generator: torch.Generator) -> Tensor:
        b, length = wave.shape
        dev = wave.device
        if self.shift > 0:
            offsets = torch.randint(-self.shift, self.shift + 1, (b, 1), device=dev, generator=generator)
            src = torch.arange(length, device=dev).unsqueeze(0) - offsets  # sample j comes from j - offset
            valid = (src >= 0) & (src < length)
            wave = torch.gather(wave, 1, src.clamp(0, length - 1)) * valid
        if self.noise_prob > 0:
            bank = self.noise_bank
            starts = torch.randint(0, max(1, bank.numel() - length), (b, 1), device=dev, generator=generator)
            idx = (starts + torch.arange(length, device=dev).unsqueeze(0)).clamp(max=bank.numel() - 1)
            noise = bank[idx]
            lo, hi = self.snr_db
            snr = lo + (hi - lo) * torch.rand((b, 1), device=dev, generator=generator)
            signal_rms = wave.pow(2).mean(1, keepdim=True).sqrt()
            noise_rms = noise.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-8)
            gain = torch.where(signal_rms > 1e-4, signal_rms / (noise_rms * 10 ** (snr / 20)),
                               torch.rand((b, 1), device=dev, generator=generator))
            use = torch.rand((b, 1), device=dev, generator=generator) < self.noise_prob
            wave = (wave + noise * gain * use).clamp(-1.0, 1.0)
        return wave
