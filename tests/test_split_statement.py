"""Splits never leak silently: speakers are found in FSDD-style names or by `data.audio.speaker_pattern`, the split
is speaker-disjoint, and the report states how every split was made (with counts), or that no grouping was found."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from leankd.data.audio import speaker_of, speaker_split, speakers_of, split_statement
from leankd.errors import DataError
from leankd.core.fingerprint import fingerprint
from leankd.stages import _data_settings
from leankd.recipe import AudioConfig, DataConfig
from leankd.report.markdown import render_markdown
from leankd.report.schema import build_report
from leankd.tasks import build_task

SR = 8000
SPEAKERS = ["jackson", "nicolas", "theo", "yweweler", "george", "lucas"]


def make_fsdd(root: Path, digits=("0", "1", "2"), takes: int = 3, name=lambda d, s, k: f"{d}_{s}_{k}.wav") -> Path:
    """`<digit>/<digit>_<speaker>_<take>.wav`: the Free Spoken Digit Dataset sorted into one folder per label."""
    rng = np.random.default_rng(0)
    for d in digits:
        (root / d).mkdir(parents=True, exist_ok=True)
        for s in SPEAKERS:
            for k in range(takes):
                wave = 0.1 * rng.standard_normal(SR // 4).astype(np.float32)
                sf.write(root / d / name(d, s, k), wave, SR, subtype="PCM_16")
    return root


def _cfg(root: Path, tmp: Path, **audio) -> DataConfig:
    return DataConfig(task="keyword_spotting", source=str(root), val_fraction=0.2, cache_dir=str(tmp / "cache"),
                      audio=AudioConfig(sample_rate=SR, clip_seconds=0.25, n_fft=256, win_length=256, hop_length=80,
                                        n_mels=16, test_fraction=0.3, **audio))


def _speakers_per_split(files, idx, pattern=None):
    spk, _ = speakers_of(files, pattern)
    return {name: {spk[j] for j in i.tolist()} for name, i in idx.items()}


def test_fsdd_names_are_recognised():
    assert speaker_of("3/3_jackson_12.wav") == "jackson"
    assert speaker_of("yes/0a7c2a8d_nohash_0.wav") == "0a7c2a8d"  # Speech Commands still first
    assert speaker_of("3/take12.wav") is None
    assert speaker_of("a/bob-7.wav", r"/(?P<speaker>[a-z]+)-\d+\.wav$") == "bob"


def test_fsdd_folder_gives_a_speaker_disjoint_split_and_the_report_says_so(tmp_path):
    root = make_fsdd(tmp_path / "fsdd")
    task = build_task(_cfg(root, tmp_path), torch.device("cpu"), seed=0)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.wav"))
    labels = [f.split("/")[0] for f in files]
    idx = speaker_split(files, labels, val_fraction=0.2, test_fraction=0.3, seed=0)
    by_split = _speakers_per_split(files, idx)
    assert by_split["train"] & by_split["test"] == set() and by_split["train"] & by_split["val"] == set()
    assert by_split["val"] & by_split["test"] == set()
    assert sum(len(s) for s in by_split.values()) == 6  # every speaker in exactly one split
    # the task split the same way and recorded it with counts
    info = task.describe()
    split = info["split_method"]
    assert split["method"] == "by speaker" and split["unit"] == "speakers"
    assert split["groups"] == {k: len(v) for k, v in by_split.items()}
    assert split["examples"] == {k: len(v) for k, v in idx.items()}
    assert task.split_size("test") == len(idx["test"])
    assert "Free Spoken Digit Dataset" in split["detail"] and info["split"] == "speaker-disjoint"
    # earlier versions split these clips one by one: the data fingerprint changes so old stages are not reused
    from leankd.data.audio import load_clips

    clips = load_clips(root, sample_rate=SR, clip_samples=SR // 4, cache_dir=tmp_path / "cache")
    old = clips.info["fingerprint"]
    assert info["fingerprint"] != old and info["fingerprint"].startswith(old)

    report = build_report({"name": "fsdd", "dataset": info}, {})
    md = render_markdown(report)
    g, e = split["groups"], split["examples"]
    assert (f"- **Split:** by speaker: train {e['train']} ({g['train']} speakers), val {e['val']} ({g['val']} "
            f"speakers), test {e['test']} ({g['test']} speakers)") in md


def test_unknown_layout_is_split_by_clip_with_a_warning_and_a_pattern_fixes_it(tmp_path):
    root = make_fsdd(tmp_path / "custom", digits=("0", "1"), takes=2, name=lambda d, s, k: f"{s}-take{k}.wav")
    plain = build_task(_cfg(root, tmp_path), torch.device("cpu"), seed=0).describe()
    assert plain["split_method"]["method"] == "by clip" and plain["split"] == "clip-level (no speaker found)"
    assert "speaker_pattern" in plain["split_method"]["leak_warning"]
    md = render_markdown(build_report({"name": "x", "dataset": plain}, {}))
    assert "- **Split:** by clip:" in md and "- **Warning:** no speaker or group id was found" in md

    pattern = r"/(?P<speaker>[a-z]+)-take\d+\.wav$"
    grouped = build_task(_cfg(root, tmp_path, speaker_pattern=pattern), torch.device("cpu"), seed=0).describe()
    split = grouped["split_method"]
    assert split["method"] == "by speaker" and sum(split["groups"].values()) == 6
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.wav"))
    idx = speaker_split(files, [f.split("/")[0] for f in files], 0.2, 0.3, seed=0, speaker_pattern=pattern)
    by_split = _speakers_per_split(files, idx, pattern)
    assert by_split["train"].isdisjoint(by_split["test"]) and by_split["train"].isdisjoint(by_split["val"])
    assert split["examples"] == {k: len(v) for k, v in idx.items()}


def test_a_pattern_that_matches_nothing_is_a_data_error(tmp_path):
    root = make_fsdd(tmp_path / "fsdd", digits=("0", "1"), takes=1)
    with pytest.raises(DataError, match=r"speaker_pattern .*matches none of the 12 clip paths \(e\.g\. '0/0_"):
        build_task(_cfg(root, tmp_path, speaker_pattern=r"(?P<speaker>spk\d+)"), torch.device("cpu"), seed=0)


def test_split_statement_counts_clips_without_speaker():
    files = ["yes/aa_nohash_0.wav", "yes/bb_nohash_0.wav", "_silence_/1.wav", "_silence_/2.wav"]
    idx = {"train": torch.tensor([0, 2]), "val": torch.tensor([1]), "test": torch.tensor([3])}
    s = split_statement(files, idx)
    assert s["groups"] == {"train": 1, "val": 1, "test": 0}
    assert s["examples"] == {"train": 2, "val": 1, "test": 1}
    assert "2 of 4 clips name no speaker" in s["detail"]


def test_speaker_pattern_left_out_of_the_fingerprint_at_its_default():
    base = DataConfig(task="keyword_spotting", source="x", audio=AudioConfig())
    old = base.model_dump()
    old["audio"].pop("speaker_pattern")  # what a run made before the setting existed fingerprinted
    assert fingerprint(_data_settings(base.model_dump(), 0)) == fingerprint(_data_settings(old, 0))
    custom = DataConfig(task="keyword_spotting", source="x", audio=AudioConfig(speaker_pattern="(?P<speaker>a)"))
    assert fingerprint(_data_settings(custom.model_dump(), 0)) != fingerprint(_data_settings(base.model_dump(), 0))


def test_image_split_is_stated_as_by_example(tmp_path):
    cfg = DataConfig(source="demo", limit_train=60, limit_test=30, val_fraction=0.2, cache_dir=str(tmp_path))
    info = build_task(cfg, torch.device("cpu"), seed=0).describe()
    split = info["split_method"]
    assert split["method"] == "by example (stratified)"
    # 60 images of 10 classes: 6 per class, round(6 * 0.2) = 1 per class held out -> 10 val, 50 train
    assert split["examples"] == {"train": 50, "val": 10, "test": 30}
    assert "the test split is the source's own" in split["detail"]
    md = render_markdown(build_report({"name": "x", "dataset": info}, {}))
    assert "- **Split:** by example (stratified): train 50, val 10, test 30" in md
