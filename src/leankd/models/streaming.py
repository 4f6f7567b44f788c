"""Streaming keyword spotting: feed audio chunk by chunk, get class probabilities after each chunk.

Two paths, chosen from the model:

* **incremental** (a CRNN with a unidirectional GRU): each step does only the new work. It keeps the audio
  tail not yet covered by a whole STFT frame (`LogMel(center=False)` frames never look outside their own
  samples, so they equal the whole clip's frames), the feature frames that do not yet complete a conv window
  (the conv has no time padding), the GRU hidden state, and the GRU outputs the pooling sees. After the last
  chunk of a clip the probabilities equal `softmax(model(features(clip)))` up to float rounding
  (`window_frames=None`).
* **window** (anything else: DS-CNN, a bidirectional CRNN, whose backward direction needs the future): keeps the
  last `window_frames` feature frames' worth of audio, aligned to the hop grid, and re-runs features + model
  on it whenever a new frame arrives. Cost per step is a whole-window forward.

`window_frames` is counted in feature frames (hop-sized steps) on both paths, so a window of 1 s means the same
audio for both: the incremental path pools over the GRU outputs whose conv windows lie in the last
`window_frames` frames (the GRU state itself still carries all history since `reset()`); `None` keeps every
output since `reset()`. On the window path `None` means 1 s (`features.num_frames(sample_rate)`).

`step` returns None until the first output exists (incremental: one conv window of frames =
`n_fft + (kt - 1) * hop` samples; window: a full window). A chunk that completes no new frame returns the
previous probabilities. Batch of one stream; everything runs under `torch.inference_mode()`; the model is put
in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from leankd.data.melspec import LogMel
from leankd.errors import ModelError

__all__ = ["StreamingKWS", "chunk_latency"]


def _is_incremental(model: nn.Module) -> bool:
    gru = getattr(model, "gru", None)
    return (isinstance(gru, nn.GRU) and not gru.bidirectional and gru.batch_first
            and all(hasattr(model, a) for a in ("conv_frames", "pool", "classifier", "kernel_size", "stride")))


class StreamingKWS:
    """Run `model` on `features(audio)` as the audio arrives; `step(chunk)` -> probabilities `[num_classes]`."""

    def __init__(self, features: LogMel, model: nn.Module, window_frames: int | None = None) -> None:
        if not isinstance(features, LogMel):
            raise TypeError(f"StreamingKWS needs a leankd LogMel front end, got {type(features).__name__}")
        if features.center:
            raise ValueError("StreamingKWS needs LogMel(center=True) off: centred frames read padding that a "
                             "stream does not have, so streamed frames would differ from the clip's")
        if window_frames is not None and (isinstance(window_frames, bool) or not isinstance(window_frames, int)
                                          or window_frames < 1):
            raise ValueError(f"window_frames must be a positive integer or None, got {window_frames!r}")
        self.features = features
        self.model = model.eval()
        self.mode = "incremental" if _is_incremental(model) else "window"
        self.hop = features.hop_length
        if self.mode == "incremental":
            self.kt, self.st = int(model.kernel_size[1]), int(model.stride[1])
            if window_frames is not None and window_frames < self.kt:
                raise ModelError(f"window_frames={window_frames} is shorter than the model's conv time kernel "
                                 f"({self.kt} frames)")
            # GRU outputs whose conv windows fit in the last `window_frames` frames
            self.window_steps = None if window_frames is None else 1 + (window_frames - self.kt) // self.st
            self.window_frames = window_frames
        else:
            self.window_frames = window_frames or features.num_frames(features.sample_rate)
            self.window_steps = None
        self.reset()

    @property
    def first_output_samples(self) -> int:
        """Samples after `reset()` before `step` returns probabilities (the rest of the latency is compute)."""
        frames = self.kt if self.mode == "incremental" else self.window_frames
        return self.features.n_fft + (frames - 1) * self.hop

    def reset(self) -> None:
        """Forget the stream: audio tail, pending frames, GRU state, stored outputs, last probabilities."""
        self._audio = torch.zeros(0, device=self.features.mel_fb.device)
        self._feats: torch.Tensor | None = None  # [1, n_mels, pending frames]
        self._hidden: torch.Tensor | None = None
        self._outputs: torch.Tensor | None = None  # [1, steps kept, H]
        self._probs: torch.Tensor | None = None
        self._skip = 0  # frames still to discard before the next conv window starts

    def step(self, chunk: torch.Tensor) -> torch.Tensor | None:
        """Append `chunk` (`[samples]`, float) and return the newest probabilities, or None before the first."""
        chunk = torch.as_tensor(chunk)
        if chunk.dim() != 1:
            raise ValueError(f"StreamingKWS.step expects one stream's chunk [samples], got {tuple(chunk.shape)}")
        with torch.inference_mode():
            audio = torch.cat([self._audio, chunk.to(self._audio.device, torch.float32)])
            if self.mode == "incremental":
                self._audio = self._incremental(audio)
            else:
                self._audio = self._window(audio)
        return self._probs

    def _new_frames(self, audio: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Log-mels of the complete frames in `audio` and the audio left for later frames."""
        n = self.features.num_frames(audio.numel())
        if n == 0:
            return None, audio
        used = self.features.n_fft + (n - 1) * self.hop
        return self.features(audio[:used].unsqueeze(0)), audio[n * self.hop:]

    def _incremental(self, audio: torch.Tensor) -> torch.Tensor:
        new, audio = self._new_frames(audio)
        if new is None:
            return audio
        param = next(self.model.parameters())
        new = new.to(param.device, param.dtype)
        if self._skip:  # stride > kernel: frames between conv windows are never used
            dropped = min(self._skip, new.shape[2])
            new, self._skip = new[:, :, dropped:], self._skip - dropped
        feats = new if self._feats is None else torch.cat([self._feats, new], dim=2)
        cols = 0 if feats.shape[2] < self.kt else 1 + (feats.shape[2] - self.kt) // self.st
        if cols == 0:
            self._feats = feats
            return audio
        model = self.model
        x = model.conv_frames(feats[:, :, : (cols - 1) * self.st + self.kt])
        self._feats = feats[:, :, cols * self.st:]
        self._skip = max(0, cols * self.st - feats.shape[2])
        out, self._hidden = model.gru(x, self._hidden)
        outs = out if self._outputs is None else torch.cat([self._outputs, out], dim=1)
        if self.window_steps is not None:
            outs = outs[:, -self.window_steps:]
        self._outputs = outs
        self._probs = torch.softmax(model.classifier(model.pool(outs)).float(), dim=-1)[0]
        return audio

    def _window(self, audio: torch.Tensor) -> torch.Tensor:
        before = self.features.num_frames(self._audio.numel())
        n = self.features.num_frames(audio.numel())
        if n == before:  # no new frame: the window's features, and so the output, are unchanged
            return audio
        if n > self.window_frames:  # drop whole hops from the front: the hop grid stays the stream's
            audio = audio[(n - self.window_frames) * self.hop:]
            n = self.window_frames
        if n == self.window_frames:
            param = next(self.model.parameters())
            feats = self.features(audio.unsqueeze(0)).to(param.device, param.dtype)
            self._probs = torch.softmax(self.model(feats).float(), dim=-1)[0]
        return audio


def chunk_latency(streamer: StreamingKWS, chunk_samples: int, runs: int = 100, warmup: int = 10, rounds: int = 3,
                  round_s: float = 0.2) -> dict:
    """Compute time per `step` on random audio, CPU wall clock, by the shared timer (`measure.timing`:
    `blocked_autorange` in rounds, robust figure, noise check).

    Returns `{"median_ms", "p90_ms", "min_ms", "pooled_median_ms", "spread", "round_spread", "runs", "chunk_ms",
    "real_time_factor", "reliable", "noise", "load_avg", "threads", ...}`; `median_ms` is the robust figure,
    real_time_factor = median_ms / chunk duration (< 1: faster than real time). Warm-up runs at least `warmup`
    chunks and until the streamer produces probabilities, so the timed steps are steady-state ones; timed steps
    cycle through `warmup + runs` chunks of random audio. Resets the streamer before and after. The incremental
    path with `window_frames=None` pools over a growing history; set a window to time a long-running stream.
    """
    from ..measure.timing import machine_state, noise_reasons, summarize_rounds, time_interleaved

    if chunk_samples < 1 or runs < 1 or warmup < 0:
        raise ValueError(f"need chunk_samples >= 1, runs >= 1, warmup >= 0; got {chunk_samples}, {runs}, {warmup}")
    gen = torch.Generator().manual_seed(0)
    chunks = 0.1 * torch.randn(warmup + runs, chunk_samples, generator=gen)
    streamer.reset()
    max_warm = warmup + streamer.first_output_samples // chunk_samples + 1
    i = 0
    while i < warmup or (streamer._probs is None and i < max_warm):
        streamer.step(chunks[i % len(chunks)])
        i += 1
    position = [i]

    def step():
        streamer.step(chunks[position[0] % len(chunks)])
        position[0] += 1

    stats = summarize_rounds(time_interleaved({"stream": step}, calls=runs, rounds=max(1, min(rounds, runs)),
                                              warmup=0, round_s=round_s)["stream"])
    streamer.reset()
    stats.pop("round_ms")
    stats.pop("mean_ms")
    chunk_ms = 1e3 * chunk_samples / streamer.features.sample_rate
    reasons = noise_reasons(stats, "streaming chunk")
    return {**stats, "chunk_ms": chunk_ms, "real_time_factor": stats["median_ms"] / chunk_ms,
            "reliable": not reasons, "noise": reasons, **machine_state()}
