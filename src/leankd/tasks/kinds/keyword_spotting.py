"""keyword_spotting: audio clips in label folders, log-mel features on the training device (data.audio)."""
from __future__ import annotations

from ...core.taskkind import TaskKind, register_kind
from .audio_config import AudioConfig


def build(cfg, device, seed: int, channels_last: bool):
    from ..kws import build_kws_task

    return build_kws_task(cfg, device, seed, channels_last=channels_last)


def model_defaults(cfg) -> dict:
    return {"n_mels": cfg.audio.n_mels}


KIND = register_kind(TaskKind(
    "keyword_spotting", build, model_defaults=model_defaults, data_sections={"audio": AudioConfig},
    refusals={"augment": "images and audio augment through data.augment"},
    summary="audio clips in label folders (data.audio); accuracy, a binary keyword's FRR at a FAR"))
