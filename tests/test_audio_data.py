"""Audio clips for keyword spotting: loading (folder / tar, wav / flac, resampling, pad / trim, cache), the
speaker-disjoint split and keyword targets. Synthetic data is written with soundfile into tmp_path."""
import math
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from leankd.data.audio import (
    STANDARD_LABELS,
    kws_targets,
    load_clips,
    resample,
    speaker_of,
    speaker_split,
)
from leankd.errors import DataError

REAL_TAR = Path(__file__).parents[2] / "shared/datasets/speech_commands_v0.02_test12.tar"
SR = 16000


def _int16(n: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n,) if channels == 1 else (n, channels)
    return rng.integers(-20000, 20000, size=shape, dtype=np.int16)


def _write(path: Path, data: np.ndarray, sr: int = SR) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="PCM_16")
    return data


@pytest.fixture
def dataset(tmp_path):
    """A Speech-Commands-style folder: (root, {relative file: int16 data written}), clips in sorted order."""
    root = tmp_path / "ds"
    written = {
        "_silence_/0.wav": _write(root / "_silence_/0.wav", _int16(24000, 0)),  # long: centre-trimmed
        "_unknown_/sheila_dddd4444_nohash_0.wav": _write(root / "_unknown_/sheila_dddd4444_nohash_0.wav",
                                                         _int16(8000, 1)),  # short: padded
        "no/aaaa1111_nohash_0.flac": _write(root / "no/aaaa1111_nohash_0.flac", _int16(8000, 2), sr=8000),
        "no/cccc3333_nohash_1.wav": _write(root / "no/cccc3333_nohash_1.wav", _int16(SR, 3, channels=2)),
        "yes/aaaa1111_nohash_0.wav": _write(root / "yes/aaaa1111_nohash_0.wav", _int16(SR, 4)),
        "yes/bbbb2222_nohash_0.flac": _write(root / "yes/bbbb2222_nohash_0.flac", _int16(SR, 5)),
    }
    _write(root / "_background_noise_/white.wav", _int16(2 * SR, 6))
    (root / "README.md").write_text("not audio")
    return root, written


def _tar(root: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(root, arcname="speech_commands_x")  # one wrapping folder, as in the real archive
    return dest


def test_load_folder(dataset, tmp_path):
    root, written = dataset
    clips = load_clips(root, cache_dir=False)
    assert clips.files == sorted(written) and len(clips) == 6
    assert clips.labels == ["_silence_", "_unknown_", "no", "no", "yes", "yes"]
    assert clips.waveforms.dtype == torch.int16 and clips.waveforms.shape == (6, SR)
    w = {f: clips.waveforms[i] for i, f in enumerate(clips.files)}
    # 16 kHz mono int16 round-trips exactly
    assert torch.equal(w["yes/aaaa1111_nohash_0.wav"], torch.from_numpy(written["yes/aaaa1111_nohash_0.wav"]))
    assert torch.equal(w["yes/bbbb2222_nohash_0.flac"], torch.from_numpy(written["yes/bbbb2222_nohash_0.flac"]))
    # long: the centre 16000 of 24000 samples
    assert torch.equal(w["_silence_/0.wav"], torch.from_numpy(written["_silence_/0.wav"][4000:20000]))
    # short: zero-padded at the end
    short = w["_unknown_/sheila_dddd4444_nohash_0.wav"]
    assert torch.equal(short[:8000], torch.from_numpy(written["_unknown_/sheila_dddd4444_nohash_0.wav"]))
    assert not short[8000:].any()
    # stereo: the mean of both channels (within rounding)
    stereo = written["no/cccc3333_nohash_1.wav"].astype(np.float64).mean(axis=1)
    assert (w["no/cccc3333_nohash_1.wav"].double() - torch.from_numpy(stereo)).abs().max() <= 0.5
    # 8 kHz for 1 s: resampled to 16000 samples, no padding needed
    assert w["no/aaaa1111_nohash_0.flac"][-100:].any()
    info = clips.info
    assert (info["resampled"], info["downmixed"], info["padded"], info["trimmed"]) == (1, 1, 1, 1)
    assert info["num_clips"] == 6 and info["label_counts"]["yes"] == 2 and info["source"].startswith("folder:")
    assert len(info["fingerprint"]) == 64 and clips.fingerprint == info["fingerprint"]
    # background noise: float32 at the target rate, kept whole, not a clip
    assert info["noise_files"] == ["white.wav"] and len(clips.noise) == 1
    assert clips.noise[0].dtype == torch.float32 and clips.noise[0].shape == (2 * SR,)


def test_tar_gz_equals_folder(dataset, tmp_path):
    root, _ = dataset
    folder = load_clips(root, cache_dir=False)
    packed = load_clips(_tar(root, tmp_path / "ds.tar.gz"), cache_dir=False)
    assert packed.files == folder.files and packed.labels == folder.labels
    assert torch.equal(packed.waveforms, folder.waveforms) and torch.equal(packed.noise[0], folder.noise[0])
    assert packed.fingerprint == folder.fingerprint and packed.info["source"].startswith("tar:")


def test_other_rate_and_length(dataset):
    root, _ = dataset
    clips = load_clips(root, sample_rate=8000, clip_samples=4000, cache_dir=False)
    assert clips.waveforms.shape == (6, 4000)
    # only the 8 kHz file is not resampled; the 0.5 s clip is now exactly 4000 samples, every other one is longer
    assert clips.info["resampled"] == 5 and clips.info["trimmed"] == 5 and clips.info["padded"] == 0


def test_cache_is_reused_and_invalidated(dataset, tmp_path, monkeypatch):
    root, _ = dataset
    cache = tmp_path / "cache"
    first = load_clips(root, cache_dir=cache)
    assert len(list(cache.glob("audio-*.safetensors"))) == 1

    calls = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: calls.append(1) or real_read(*a, **k))
    second = load_clips(root, cache_dir=cache)
    assert not calls, "decoded although the cache should have been used"
    assert torch.equal(second.waveforms, first.waveforms) and second.files == first.files
    assert second.labels == first.labels and second.info == first.info
    assert torch.equal(second.noise[0], first.noise[0])
    # a changed file changes the source identity: the next load decodes again
    _write(root / "yes/bbbb2222_nohash_0.flac", _int16(SR, 99))
    third = load_clips(root, cache_dir=cache)
    assert len(calls) == 7 and not torch.equal(third.waveforms, first.waveforms)
    # another clip length is another cache entry
    load_clips(root, clip_samples=8000, cache_dir=cache)
    assert len(list(cache.glob("audio-*.safetensors"))) == 3


def test_errors_name_the_problem(tmp_path, dataset):
    with pytest.raises(DataError, match="does not exist"):
        load_clips(tmp_path / "nope", cache_dir=False)
    (tmp_path / "empty" / "yes").mkdir(parents=True)
    with pytest.raises(DataError, match="no audio files"):
        load_clips(tmp_path / "empty", cache_dir=False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a tar"):
        load_clips(tmp_path / "notes.txt", cache_dir=False)
    root, _ = dataset
    (root / "yes" / "broken_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataError, match=r"yes/broken_nohash_0\.wav"):
        load_clips(root, cache_dir=False)
    packed = _tar(root, tmp_path / "broken.tar.gz")
    with pytest.raises(DataError, match=r"broken\.tar\.gz:speech_commands_x/yes/broken_nohash_0\.wav"):
        load_clips(packed, cache_dir=False)
    loose = tmp_path / "loose"
    _write(loose / "clip.wav", _int16(100, 0))
    _write(loose / "yes" / "a.wav", _int16(100, 0))
    with pytest.raises(DataError, match="label folder"):
        load_clips(loose, cache_dir=False)


def test_split_lists_are_read(dataset):
    root, _ = dataset
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.flac\n")
    (root / "testing_list.txt").write_text("no/cccc3333_nohash_1.wav\n\n")
    clips = load_clips(root, cache_dir=False)
    assert clips.split_lists == {"val": ["yes/bbbb2222_nohash_0.flac"], "test": ["no/cccc3333_nohash_1.wav"]}
    split = speaker_split(clips.files, clips.labels, 0.0, 0.0, split_lists=clips.split_lists)
    assert [clips.files[i] for i in split["val"]] == ["yes/bbbb2222_nohash_0.flac"]
    assert [clips.files[i] for i in split["test"]] == ["no/cccc3333_nohash_1.wav"]


# ------------------------------------------------------------------------------------------------ resampling
def test_resample_sine_matches_analytic():
    n = torch.arange(8000, dtype=torch.float64)
    sine8k = torch.sin(2 * math.pi * 440 * n / 8000).float()
    up = resample(sine8k, 8000, 16000)
    m = torch.arange(16000, dtype=torch.float64)
    expected = torch.sin(2 * math.pi * 440 * m / 16000)
    assert up.shape == (16000,) and up.dtype == torch.float32
    assert (up.double() - expected)[200:-200].abs().max() < 2e-3
    down = resample(up, 16000, 8000)
    assert (down.double() - sine8k.double())[100:-100].abs().max() < 2e-3
    sine441 = torch.sin(2 * math.pi * 440 * torch.arange(44100, dtype=torch.float64) / 44100).float()
    assert (resample(sine441, 44100, 16000).double() - expected)[200:-200].abs().max() < 2e-3


def test_resample_identity_and_shapes():
    x = torch.randn(3, 2, 1000)
    assert torch.equal(resample(x, SR, SR), x)
    assert resample(x, 8000, 16000).shape == (3, 2, 2000)
    assert resample(x[0, 0], 16000, 11025).shape == (math.ceil(1000 * 11025 / 16000),)
    assert resample(torch.ones(10, dtype=torch.int16), 8000, 16000).dtype == torch.float32


# ------------------------------------------------------------------------------------------ split / targets
def test_speaker_of():
    assert speaker_of("yes/0a7c2a8d_nohash_0.flac") == "0a7c2a8d"
    assert speaker_of("_unknown_/sheila_0a7c2a8d_nohash_12.wav") == "0a7c2a8d"
    assert speaker_of("0a7c2a8d_nohash_3") == "0a7c2a8d"
    assert speaker_of("_silence_/1024.flac") is None
    assert speaker_of("_background_noise_/white_noise.wav") is None


def _synthetic_names(n_speakers=300, seed=0):
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for s in range(n_speakers):
        spk = f"{s * 2654435761 % 2**32:08x}"
        for k in range(int(rng.integers(1, 40))):
            word = ["yes", "no", "up", "sheila", "marvin"][k % 5]
            if word in ("sheila", "marvin"):
                files.append(f"_unknown_/{word}_{spk}_nohash_{k}.flac")
                labels.append("_unknown_")
            else:
                files.append(f"{word}/{spk}_nohash_{k}.flac")
                labels.append(word)
    files += [f"_silence_/{i}.flac" for i in range(200)]
    labels += ["_silence_"] * 200
    return files, labels


def _check_disjoint(split, files):
    seen = {}
    for name, idx in split.items():
        for i in idx.tolist():
            spk = speaker_of(files[i])
            if spk is not None:
                assert seen.setdefault(spk, name) == name, f"speaker {spk} in {seen[spk]} and {name}"
    assert sorted(torch.cat(list(split.values())).tolist()) == list(range(len(files)))


@pytest.mark.parametrize("balanced", [True, False])
def test_speaker_split_is_disjoint_and_deterministic(balanced):
    files, labels = _synthetic_names()
    split = speaker_split(files, labels, 0.1, 0.2, seed=0, balanced=balanced)
    _check_disjoint(split, files)
    fractions = {k: len(v) / len(files) for k, v in split.items()}
    tol = 0.01 if balanced else 0.06
    assert fractions["val"] == pytest.approx(0.1, abs=tol) and fractions["test"] == pytest.approx(0.2, abs=tol)
    again = speaker_split(list(files), list(labels), 0.1, 0.2, seed=0, balanced=balanced)
    assert all(torch.equal(split[k], again[k]) for k in split)
    other = speaker_split(files, labels, 0.1, 0.2, seed=1, balanced=balanced)
    assert not torch.equal(split["test"], other["test"])
    assert all(v.dtype == torch.int64 for v in split.values())


def test_speaker_split_is_stable_when_data_is_added():
    files, labels = _synthetic_names()
    more_files, more_labels = _synthetic_names(n_speakers=330)  # the same 300 speakers plus 30 new ones
    assert more_files[:len(files) - 200] == files[:-200]
    for balanced, allowed in ((False, 0.0), (True, 0.05)):
        before = speaker_split(files, labels, balanced=balanced)
        after = speaker_split(more_files, more_labels, balanced=balanced)
        where_after = {more_files[i]: k for k, v in after.items() for i in v.tolist()}
        moved = sum(where_after[files[i]] != k for k, v in before.items() for i in v.tolist())
        assert moved <= allowed * len(files)


def test_split_lists_win_and_pull_speakers():
    files, labels = _synthetic_names(50)
    spk_val, spk_test = speaker_of(files[0]), speaker_of(files[100])
    lists = {"val": [files[0]], "test": [files[100]]}
    split = speaker_split(files, labels, 0.1, 0.2, split_lists=lists)
    _check_disjoint(split, files)
    where = {files[i]: k for k, v in split.items() for i in v.tolist()}
    assert all(where[f] == "val" for f in files if speaker_of(f) == spk_val)
    assert all(where[f] == "test" for f in files if speaker_of(f) == spk_test)
    only_lists = speaker_split(files, labels, 0.0, 0.0, split_lists=lists)  # the official protocol
    assert {speaker_of(files[i]) for i in only_lists["val"]} == {spk_val}
    with pytest.raises(DataError, match="'val' and/or 'test'"):
        speaker_split(files, labels, split_lists={"validation": []})
    with pytest.raises(DataError, match="sum"):
        speaker_split(files, labels, 0.5, 0.5)


def test_kws_targets():
    labels = list(STANDARD_LABELS)[::-1]
    files = [f"{lab}/0000000{i % 10}_nohash_0.wav" for i, lab in enumerate(labels)]
    targets, names = kws_targets(labels, files)
    assert names == list(STANDARD_LABELS) and targets.tolist() == list(range(12))[::-1]
    targets, names = kws_targets(["dog", "cat", "dog"], ["a", "b", "c"])
    assert names == ["cat", "dog"] and targets.tolist() == [1, 0, 1]

    labels = ["yes", "no", "_unknown_", "_unknown_", "_silence_"]
    files = ["yes/aaaa1111_nohash_0.wav", "no/aaaa1111_nohash_0.wav", "_unknown_/sheila_bbbb2222_nohash_0.wav",
             "_unknown_/marvin_bbbb2222_nohash_0.wav", "_silence_/3.wav"]
    targets, names = kws_targets(labels, files, keyword="yes")
    assert names == ["other", "yes"] and targets.tolist() == [1, 0, 0, 0, 0] and targets.dtype == torch.int64
    targets, names = kws_targets(labels, files, keyword="sheila")
    assert names == ["other", "sheila"] and targets.tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(DataError, match="available words: _silence_, marvin, no, sheila, yes"):
        kws_targets(labels, files, keyword="alexa")


# ------------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not REAL_TAR.is_file(), reason=f"real Speech Commands test tar not found at {REAL_TAR}")
def test_real_speech_commands_tar():
    start = time.perf_counter()
    clips = load_clips(REAL_TAR, cache_dir=False)
    seconds = time.perf_counter() - start
    assert clips.waveforms.shape == (4890, 16000) and clips.waveforms.dtype == torch.int16
    assert sorted(set(clips.labels)) == sorted(STANDARD_LABELS)
    assert clips.info["resampled"] == clips.info["padded"] == clips.info["trimmed"] == 0
    targets, names = kws_targets(clips.labels, clips.files)
    assert names == list(STANDARD_LABELS) and torch.bincount(targets).min() >= 390
    assert int(kws_targets(clips.labels, clips.files, keyword="sheila")[0].sum()) == 17
    split = speaker_split(clips.files, clips.labels)
    _check_disjoint(split, clips.files)
    report = []
    for name, idx in split.items():
        speakers = {speaker_of(clips.files[i]) for i in idx.tolist()} - {None}
        report.append(f"{name} {len(idx)} clips ({len(idx) / len(clips):.1%}), {len(speakers)} speakers")
    print(f"decoded {len(clips)} clips in {seconds:.1f} s; " + "; ".join(report))
    assert len(split["val"]) / len(clips) == pytest.approx(0.1, abs=0.02)
    assert len(split["test"]) / len(clips) == pytest.approx(0.2, abs=0.02)
