"""Keyword spotting: 1 s clips held as int16 waveforms on the training device; each batch is augmented (time shift,
background noise) and turned into log-mel features there, so the CPU never sits in a DataLoader and teacher and
student see the very same features. Models take `[B, n_mels, frames]`.

Two task shapes from one folder of clips per label: every label a class (Speech Commands' 12 classes), or a
binary keyword-vs-rest task (`data.audio.keyword`), whose report adds the false-alarm / false-rejection metrics.
Train / val / test are speaker-disjoint (a speaker's clips never straddle splits)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..data.audio import SPEECH_COMMANDS_LAYOUT, kws_targets, load_clips, speaker_split, speakers_of, split_statement
from ..data.audio_augment import WaveAugment
from ..data.melspec import LogMel
from ..errors import DataError
from ..measure.devices import cpu_fp32_copy
from ..recipe import DataConfig
from .base import Task, TensorTask
from .kinds.audio_config import AudioConfig

STREAM_CHUNK_MS = 100  # the report's streaming latency is per 100 ms of audio


class KeywordSpottingTask(TensorTask):
    kind = "keyword_spotting"

    def __init__(self, splits: dict, class_names: list[str], features: LogMel, augment: WaveAugment,
                 audio: AudioConfig, device: torch.device, info: dict, keyword: Optional[str]):
        self.features = features.to(device)
        self.augment = augment.to(device)
        self.audio = audio
        self.keyword = keyword
        super().__init__(splits, len(class_names), class_names, transform=self._transform, device=device, info=info)

    def _transform(self, raw: Tensor, generator: Optional[torch.Generator], train: bool) -> Tensor:
        wave = raw.float() / 32768.0
        if train:
            wave = self.augment(wave, generator)
        return self.features(wave)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        if self.keyword is None:
            return super().metrics(logits, targets)
        from ..measure.kws import binary_kws_metrics

        return binary_kws_metrics(logits, targets, self.class_names, far=self.audio.far_target)

    def primary_metric(self) -> dict:
        """Keyword mode: false rejections at the target false-alarm rate (lower is better), with the FA/FR AUC beside
        it; accuracy is meaningless there (answering 'other' always scores the share of non-keyword clips)."""
        if self.keyword is None:
            return super().primary_metric()
        return {"name": "frr_at_far", "higher_is_better": False, "also": ["fa_fr_auc"],
                "label": f"false rejections at {100 * self.audio.far_target:g}% false alarms"}

    def model_defaults(self) -> dict:
        return {"n_mels": self.audio.n_mels}

    def extra_measurements(self, model: nn.Module) -> dict:
        """Streaming inference on the CPU: latency per 100 ms chunk and the real-time factor."""
        from ..models.streaming import StreamingKWS, chunk_latency

        clip_frames = self.features.num_frames(int(round(self.audio.sample_rate * self.audio.clip_seconds)))
        # pooling over the last clip's worth of frames: a steady state, as a deployed spotter runs
        streamer = StreamingKWS(cpu_fp32_copy(self.features), cpu_fp32_copy(model).eval(), window_frames=clip_frames)
        chunk = int(self.audio.sample_rate * STREAM_CHUNK_MS / 1000)
        lat = chunk_latency(streamer, chunk)
        return {"streaming": {"chunk_ms": STREAM_CHUNK_MS, "mode": getattr(streamer, "mode", None), **lat}}


def build_kws_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> Task:
    audio = cfg.audio or AudioConfig()
    if cfg.limit_test is not None:
        raise DataError("data.limit_test is for image data; keyword-spotting test splits are used whole")
    clip_samples = int(round(audio.sample_rate * audio.clip_seconds))
    clips = load_clips(cfg.source, sample_rate=audio.sample_rate, clip_samples=clip_samples, cache_dir=cfg.cache_dir)
    targets, class_names = kws_targets(clips.labels, clips.files, keyword=audio.keyword, where=str(cfg.source))
    # full Speech Commands releases carry validation_list.txt / testing_list.txt: then those lists ARE the val/test
    # splits (the official protocol) and every other clip trains
    notes = []
    lists = clips.split_lists or None
    val_fraction = 0.0 if lists and lists.get("val") else cfg.val_fraction
    test_fraction = 0.0 if lists and lists.get("test") else audio.test_fraction
    if lists:
        notes.append("val/test splits from the source's validation_list.txt / testing_list.txt (official protocol)")
    speakers, found_by = speakers_of(clips.files, audio.speaker_pattern)
    if audio.speaker_pattern is not None and not found_by:
        raise DataError(f"data.audio.speaker_pattern {audio.speaker_pattern!r} matches none of the {len(clips.files)} "
                        f"clip paths (e.g. {clips.files[0]!r}); it is searched in the path relative to the data root, "
                        "so fix the pattern or remove it to use the known layouts")
    idx = speaker_split(clips.files, clips.labels, val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, split_lists=lists, speaker_pattern=audio.speaker_pattern)
    split_method = split_statement(clips.files, idx, audio.speaker_pattern, official_lists=bool(lists))
    train_idx = idx["train"]
    if cfg.limit_train is not None and cfg.limit_train < len(train_idx):
        g = torch.Generator().manual_seed(seed)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=g)[:cfg.limit_train]].sort().values
        notes.append(f"train split limited to {len(train_idx)} clips (data.limit_train)")
    if len(idx[cfg.eval_split]) == 0:
        raise DataError(f"data.eval_split is {cfg.eval_split!r} but that split is empty (data.val_fraction / "
                        "data.audio.test_fraction is 0): give it a fraction above 0 or evaluate on the other split")
    if audio.keyword is not None:  # a binary task needs keyword clips in every split it scores
        counts = {name: int((targets[i] == 1).sum()) for name, i in idx.items() if len(i)}
        if counts.get(cfg.eval_split, 0) == 0:
            raise DataError(f"keyword {audio.keyword!r} has no clips in the {cfg.eval_split} split ({counts}): "
                            "use a more frequent keyword, another seed, or larger val/test fractions")
        if min(counts.values()) < 20:
            notes.append(f"few keyword clips per split {counts}: FA/FR figures on so few positives are coarse")
    splits = {"train": (clips.waveforms[train_idx], targets[train_idx])}
    for name in ("val", "test"):
        if len(idx[name]):
            splits[name] = (clips.waveforms[idx[name]], targets[idx[name]])

    noise_bank = _noise_bank(clips, train_idx)
    if noise_bank is None and audio.noise_prob > 0:
        notes.append("no background noise (_background_noise_ folder or _silence_ training clips): noise "
                     "augmentation is off")
    augment = WaveAugment(shift_samples=int(audio.sample_rate * audio.time_shift_ms / 1000),
                          noise_bank=noise_bank, noise_prob=audio.noise_prob,
                          snr_db=tuple(audio.noise_snr_db))
    features = LogMel(sample_rate=audio.sample_rate, n_fft=audio.n_fft, win_length=audio.win_length,
                      hop_length=audio.hop_length, n_mels=audio.n_mels)
    fingerprint = clips.info.get("fingerprint")
    if audio.speaker_pattern is None and set(found_by) - {SPEECH_COMMANDS_LAYOUT}:
        # speakers found in names that earlier versions split clip by clip: the split changed, so must the stages
        fingerprint = f"{fingerprint}:speakers={'+'.join(sorted(found_by))}"
    info = {"fingerprint": fingerprint, "source": cfg.source, "sample_rate": audio.sample_rate,
            "features": f"log-mel {audio.n_mels} bands, window {audio.win_length}, hop {audio.hop_length}, "
                        f"{features.num_frames(clip_samples)} frames per clip",
            "augmentation": augment.describe(),
            "split": "speaker-disjoint" if split_method["method"] == "by speaker" else "clip-level (no speaker found)",
            "split_method": split_method, "preprocessing": _preprocessing(clips.info, audio, augment),
            **({"keyword": audio.keyword} if audio.keyword else {})}
    task = KeywordSpottingTask(splits, class_names, features, augment, audio, device, info, audio.keyword)
    task.eval_split = cfg.eval_split
    task.notes = notes + [
        "MACs and latency are for the model on log-mel features; the feature extraction (STFT + mel filterbank) is the "
        "same for every model and not included. The streaming rows include it."]
    return task


def _preprocessing(clip_info: dict, audio: AudioConfig, augment: WaveAugment) -> list[dict]:
    """What loading and training did to the clips (report.schema.PreprocessingStep), from the loader's counts."""
    n = clip_info.get("num_clips")
    steps = []
    for key, what in (("resampled", f"resampled to {audio.sample_rate} Hz"), ("downmixed", "stereo averaged to mono"),
                      ("padded", f"zero-padded at the end to {audio.clip_seconds:g} s"),
                      ("trimmed", f"centre-trimmed to {audio.clip_seconds:g} s")):
        if clip_info.get(key):
            steps.append({"what": f"{clip_info[key]} of {n} clips {what}"})
    steps.append({"what": f"training augmentation: {augment.describe()}",
                  "by_default": not {"time_shift_ms", "noise_prob"} & audio.model_fields_set})
    return steps


def _noise_bank(clips, train_idx: Tensor) -> Optional[Tensor]:
    """Background recordings if the source has them, else the training split's `_silence_` clips end to end
    (never the val/test clips: that would leak their noise into training)."""
    if clips.noise:
        return torch.cat([n.flatten().float() for n in clips.noise])
    silence = [i for i in train_idx.tolist() if clips.labels[i] == "_silence_"]
    if not silence:
        return None
    return (clips.waveforms[silence].float() / 32768.0).flatten()

