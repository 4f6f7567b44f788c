"""The keyword-spotting kind's data section (`data.audio`): declared on its TaskKind (keyword_spotting.py), kept
in this module of its own so the task code (leankd.tasks.kws) and the recipe's old import path can read the model
without importing the kind's builders."""
from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from ...core.params import Strict


class AudioConfig(Strict):
    """Keyword spotting (`data.task: keyword_spotting`): clips, log-mel features computed on the training device,
    and waveform augmentation. Defaults follow the KWS course our users come from (16 kHz, 25 ms windows, 10 ms hop,
    40 mel bands)."""

    sample_rate: int = Field(16000, gt=0, description="clips of other rates are resampled to this")
    clip_seconds: float = Field(1.0, gt=0, description="clips are zero-padded or centre-trimmed to this length")
    n_mels: int = Field(40, ge=1)
    n_fft: int = Field(400, ge=8)
    win_length: int = Field(400, ge=8)
    hop_length: int = Field(160, ge=1)
    keyword: Optional[str] = Field(None, description="set -> binary keyword-vs-rest task (a label folder or a word "
                                                      "inside _unknown_, e.g. sheila); unset -> every label a class")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="speakers held out for the test split")
    time_shift_ms: float = Field(100.0, ge=0, description="random shift of each training clip (zero fill)")
    noise_prob: float = Field(0.8, ge=0, le=1, description="chance a training clip gets background noise mixed in")
    noise_snr_db: tuple[float, float] = Field((5.0, 20.0), description="SNR range of the mixed-in noise")
    far_target: float = Field(0.01, gt=0, lt=1, description="binary task: report the false-rejection rate here")
    speaker_pattern: Optional[str] = Field(
        None, description="regex with a named group 'speaker', searched in each clip's path relative to the data "
                          "root (e.g. '^[^/]+/\\d+_(?P<speaker>[a-z]+)_\\d+\\.wav$'); unset: Speech Commands "
                          "(<speaker>_nohash_<n>) and FSDD (<digit>_<speaker>_<n>) names are recognised")

    @field_validator("speaker_pattern")
    @classmethod
    def _speaker_regex(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"speaker_pattern {v!r} is not a valid regular expression ({e}); e.g. "
                             "'(?P<speaker>[a-z]+)_\\d+\\.wav$'") from None
        if "speaker" not in compiled.groupindex:
            raise ValueError(f"speaker_pattern {v!r} has no named group 'speaker'; mark the speaker id with "
                             "(?P<speaker>...), e.g. '_(?P<speaker>[a-z]+)_\\d+\\.wav$'")
        return v

    @field_validator("keyword", mode="before")
    @classmethod
    def _keyword_not_yaml_bool(cls, v: Any) -> Any:
        """YAML 1.1 reads yes/no/on/off as booleans, and all four are Speech Commands words."""
        if isinstance(v, bool):
            raise ValueError(f"keyword is the boolean {v}: YAML reads yes/no/on/off as true/false, so quote the "
                             "word (keyword: 'yes', or --set \"data.audio.keyword='yes'\")")
        return v

    @model_validator(mode="after")
    def _windows(self) -> "AudioConfig":
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.n_fft > self.sample_rate * self.clip_seconds:
            raise ValueError("n_fft is longer than a clip: lower n_fft or raise clip_seconds")
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError("noise_snr_db is [low, high] with low <= high")
        return self
