"""Keyword-spotting audio: `load_clips(source)` turns a folder of `<label>/<clip>.wav|flac` (Google Speech Commands
layout) or a tar of one into a fixed-length int16 tensor in memory, cached on disk after the first decode. Also the
speaker-disjoint split (a speaker's voice in both train and test inflates accuracy) and keyword-spotting targets."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leankd.data.cache import load_cached, save_cached
from leankd.data.layout import is_hidden
from leankd.data.lines import split_lines
from leankd.data.readers import _clean_member_name, file_identity, is_tar_path
from leankd.data.tarstream import read_tar
from leankd.errors import DataError

__all__ = ["STANDARD_LABELS", "AudioClips", "kws_targets", "load_clips", "resample", "speaker_of", "speaker_split",
           "speakers_of", "split_statement"]

AUDIO_EXTENSIONS = (".wav", ".flac")
NOISE_FOLDER = "_background_noise_"
SPLIT_LIST_FILES = {"validation_list.txt": "val", "testing_list.txt": "test"}  # full Speech Commands release
STANDARD_LABELS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_")
AUDIO_CACHE_VERSION = 1  # bump when the decoded result for the same key could change
_NAME = re.compile(r"^(?:(?P<word>.+)_)?(?P<speaker>[^_]+)_nohash_\d+$")  # [<word>_]<speakerhash>_nohash_<n>
# file-name layouts whose speaker leankd finds without a data.audio.speaker_pattern (matched on the file's stem)
SPEECH_COMMANDS_LAYOUT = "Speech Commands (<speaker>_nohash_<n>)"
SPEAKER_LAYOUTS = {
    SPEECH_COMMANDS_LAYOUT: _NAME,
    "Free Spoken Digit Dataset (<digit>_<speaker>_<n>)":
        re.compile(r"^\d+_(?P<speaker>[A-Za-z][A-Za-z0-9-]*)_\d+$"),
}


@dataclass
class AudioClips:
    """Clips as int16 [N, clip_samples] (half the bytes of float, so whole datasets sit on the device); `files` are
    paths relative to the dataset root (`yes/abc_nohash_0.flac`), which carry the speaker for the split.
    `split_lists` holds the official val/test file lists when the source ships them (see `speaker_split`)."""

    waveforms: Tensor
    labels: list[str]
    files: list[str]
    noise: list[Tensor] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    split_lists: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.waveforms.shape[0])

    @property
    def fingerprint(self) -> str:
        return self.info.get("fingerprint", "")


def load_clips(source: str | os.PathLike, sample_rate: int = 16000, clip_samples: int = 16000,
               cache_dir: str | os.PathLike | None | bool = None) -> AudioClips:
    """Load every clip under `source` (a folder or a .tar/.tar.gz of one; labels are the clip's folder names).

    Stereo is averaged to mono, other sample rates are resampled (never rejected), short clips are zero-padded at
    the end and long ones centre-trimmed to `clip_samples`. Decoded tensors are cached under `cache_dir` (default
    ~/.cache/leankd; False disables) and reused while the source is unchanged (path, sizes, mtimes)."""
    if not (isinstance(sample_rate, int) and sample_rate > 0 and isinstance(clip_samples, int) and clip_samples > 0):
        raise DataError(f"sample_rate and clip_samples must be positive integers, got {sample_rate!r} and "
                        f"{clip_samples!r}; e.g. 16000 and 16000 for one-second clips at 16 kHz.")
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        reader: _Reader = _FolderReader(path)
    elif path.is_file() and is_tar_path(path):
        reader = _TarReader(path)
    elif path.is_file():
        raise DataError(f"audio source {path} is a file but not a tar archive; give a folder of <label>/<clip>.wav "
                        f"or .flac files, or a .tar/.tar.gz of one.")
    else:
        raise DataError(f"audio source {os.fspath(source)!r} does not exist (looked for {path.absolute()}); give a "
                        f"folder of <label>/<clip>.wav|.flac files or a .tar/.tar.gz of one.")
    if cache_dir is False:
        return _decode_all(reader, sample_rate, clip_samples)
    cache_dir = Path.home() / ".cache" / "leankd" if cache_dir in (None, True) else Path(cache_dir).expanduser()
    key = hashlib.sha256(json.dumps(["audio", AUDIO_CACHE_VERSION, reader.identity(), sample_rate,
                                     clip_samples]).encode()).hexdigest()
    cache_path = cache_dir / f"audio-{key[:32]}.safetensors"
    hit = load_cached(cache_path, key)
    if hit is not None:
        meta, t = hit
        noise = [t[f"noise_{i}"] for i in range(int(meta["num_noise"]))]
        return AudioClips(t["waveforms"], json.loads(meta["labels"]), json.loads(meta["files"]), noise,
                          json.loads(meta["info"]), json.loads(meta["split_lists"]))
    clips = _decode_all(reader, sample_rate, clip_samples)
    tensors = {"waveforms": clips.waveforms, **{f"noise_{i}": n for i, n in enumerate(clips.noise)}}
    meta = {"labels": json.dumps(clips.labels), "files": json.dumps(clips.files), "info": json.dumps(clips.info),
            "split_lists": json.dumps(clips.split_lists), "num_noise": str(len(clips.noise))}
    try:
        save_cached(cache_path, key, meta, tensors)
    except OSError as e:  # the clips are loaded; a read-only cache dir only costs the next run a re-decode
        warnings.warn(f"cannot write the audio cache {cache_path} ({e}); continuing without it. Pick a writable "
                      f"cache_dir.")
    return clips


# ---------------------------------------------------------------------------------------------------- reading
class _Reader:
    """A folder or a tar of one: `identity()` is cheap (what the cache is keyed on, no decoding); `entries()` reads."""

    where: str
    origin: str

    def identity(self) -> str:
        raise NotImplementedError

    def entries(self) -> dict[str, Callable[[], bytes | bytearray]]:
        """Relative path -> its bytes (lazily), for audio files and the split-list text files."""
        raise NotImplementedError

    def show(self, rel: str) -> str:
        """How error messages name one member: `archive.tar:dir/file.flac` or `/data/dir/file.flac`."""
        return f"{self.where}:{rel}"


def _wanted(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return not is_hidden(rel) and (name.lower().endswith(AUDIO_EXTENSIONS) or name in SPLIT_LIST_FILES)


class _FolderReader(_Reader):
    def __init__(self, root: Path):
        self.root, self.where, self.origin = root, str(root), f"folder:{root.resolve()}"
        self.paths, stats = [], []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for name in sorted(filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if _wanted(rel):
                    st = os.stat(os.path.join(dirpath, name))
                    self.paths.append(rel)
                    stats.append((rel, st.st_size, st.st_mtime_ns))
        self._stats = hashlib.sha256(json.dumps(stats).encode()).hexdigest()

    def identity(self) -> str:
        return json.dumps(["folder", str(self.root.resolve()), self._stats])

    def show(self, rel: str) -> str:
        return str(self.root / rel)

    def entries(self) -> dict[str, Callable[[], bytes | bytearray]]:
        return {rel: (lambda p=self.root / rel: _read_file(p)) for rel in self.paths}


class _TarReader(_Reader):
    """Members are read into memory in one streaming pass; nothing is extracted to disk."""

    def __init__(self, path: Path):
        self.path, self.where, self.origin = path, str(path), f"tar:{path.resolve()}"

    def identity(self) -> str:
        return file_identity(self.path)

    def entries(self) -> dict[str, Callable[[], bytes | bytearray]]:
        try:
            members = read_tar(self.path, want=lambda n: _wanted(_clean_member_name(n)))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"cannot read tar archive {self.path} ({e.__class__.__name__}: {e}); check that it is a "
                            f"complete .tar/.tar.gz (re-copy or re-create it).") from None
        return {_clean_member_name(n): (lambda d=data: d) for n, is_dir, data in members
                if not is_dir and data is not None}


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read audio file {path} ({e.strerror or e}); check that it exists and is "
                        f"readable.") from None


def _layout(paths: Iterable[str], where: str) -> tuple[str, list[str], list[str], dict[str, str]]:
    """(root prefix, clip paths, noise paths, split-list paths by split). The root is where the label folders are:
    the top level, or inside wrapping folders (a tar of `speech_commands/<label>/...`)."""
    audio = sorted(p for p in paths if p.lower().endswith(AUDIO_EXTENSIONS))
    if not audio:
        raise DataError(f"{where}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found. Expected "
                        f"<root>/<label>/<clip>.wav|.flac, e.g. yes/0a7c2a8d_nohash_0.wav.")
    prefix = ""
    while all(p.count("/") >= 2 for p in audio) and len({p.split("/", 1)[0] for p in audio}) == 1:
        top = audio[0].split("/", 1)[0] + "/"
        prefix += top
        audio = [p[len(top):] for p in audio]
    bad = [p for p in audio if p.count("/") != 1]
    if bad:
        raise DataError(f"{where}: audio file {prefix + bad[0]!r} is not directly inside a label folder; lay clips "
                        f"out as <root>/<label>/<clip> (one folder per label, no deeper nesting).")
    clips = [p for p in audio if not p.startswith(NOISE_FOLDER + "/")]
    if not clips:
        raise DataError(f"{where}: only {NOISE_FOLDER}/ audio found; add label folders with clips.")
    noise = [p for p in audio if p.startswith(NOISE_FOLDER + "/")]
    lists = {split: prefix + name for name, split in SPLIT_LIST_FILES.items()}
    return prefix, clips, noise, {split: p for split, p in lists.items() if p in paths}


# --------------------------------------------------------------------------------------------------- decoding
def _decode_all(reader: _Reader, sample_rate: int, clip_samples: int) -> AudioClips:
    entries = reader.entries()
    prefix, clip_paths, noise_paths, list_paths = _layout(entries.keys(), reader.where)

    def decode(rel: str) -> tuple[Tensor, dict[str, bool]]:
        import soundfile as sf  # looked up at call time, so tests can check that a cache hit decodes nothing

        name = reader.show(prefix + rel)
        try:
            x, sr = sf.read(io.BytesIO(entries[prefix + rel]()), dtype="float32", always_2d=True)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - libsndfile reports corrupt data in several exception types
            raise DataError(f"cannot decode audio file {name} ({e.__class__.__name__}: {e}); re-export it as WAV or "
                            f"FLAC, or remove it.") from None
        if x.shape[0] == 0:
            raise DataError(f"audio file {name} has no samples; remove it or replace it with a real recording.")
        wave = torch.from_numpy(np.ascontiguousarray(x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]))
        if sr != sample_rate:
            wave = resample(wave, sr, sample_rate)
        return wave, {"resampled": sr != sample_rate, "downmixed": x.shape[1] > 1}

    def clip(rel: str) -> tuple[Tensor, dict[str, bool]]:
        """Decode to int16 [clip_samples] in the worker, so only the small int16 copy of each clip is kept."""
        wave, flags = decode(rel)
        n = wave.shape[0]
        start = max(0, (n - clip_samples) // 2)
        wave = F.pad(wave[start:start + clip_samples], (0, max(0, clip_samples - n)))
        return wave.mul(32768.0).round_().clamp_(-32768, 32767).to(torch.int16), \
            {**flags, "padded": n < clip_samples, "trimmed": n > clip_samples}

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # libsndfile releases the GIL
        waveforms = torch.empty(len(clip_paths), clip_samples, dtype=torch.int16)
        counts = dict.fromkeys(("resampled", "downmixed", "padded", "trimmed"), 0)
        for i, (wave, flags) in enumerate(pool.map(clip, clip_paths)):
            waveforms[i] = wave
            for k in counts:
                counts[k] += flags[k]
        noise = [w.float().contiguous() for w, _ in pool.map(decode, noise_paths)]
    labels = [p.split("/", 1)[0] for p in clip_paths]
    split_lists = {split: _read_list(entries[p](), p, reader.where) for split, p in list_paths.items()}
    info = {"source": reader.origin, "sample_rate": sample_rate, "clip_samples": clip_samples,
            "num_clips": len(clip_paths), "label_counts": {lab: labels.count(lab) for lab in sorted(set(labels))},
            **counts, "noise_files": [p.split("/", 1)[1] for p in noise_paths],
            "split_lists": {s: len(v) for s, v in split_lists.items()}}
    info["fingerprint"] = _fingerprint(waveforms, labels, clip_paths, noise, split_lists, sample_rate)
    return AudioClips(waveforms, labels, clip_paths, noise, info, split_lists)


def _read_list(data: bytes, name: str, where: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: {name} is not UTF-8 text; it should list one clip path per line.") from None
    return [line.strip() for line in split_lines(text) if line.strip()]


def _fingerprint(waveforms: Tensor, labels: list[str], files: list[str], noise: list[Tensor],
                 split_lists: dict, sample_rate: int) -> str:
    """sha256 of the decoded content and names (names decide splits and keywords): equal for a folder and its tar."""
    h = hashlib.sha256(json.dumps([sample_rate, list(waveforms.shape), labels, files, split_lists]).encode())
    h.update(waveforms.contiguous().numpy().data)
    for n in noise:
        h.update(n.contiguous().numpy().data)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- resampling
def resample(wave: Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> Tensor:
    """Band-limited resampling of `wave` [..., T] along the last axis: a Hann-windowed sinc, polyphase over the
    gcd-reduced rates (the same kernel as torchaudio's `sinc_interp_hann`, which is not installable here).
    Output length is ceil(T * new_sr / orig_sr); integer input is treated as float32."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if not wave.is_floating_point():
        wave = wave.float()
    if orig_sr == new_sr:
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff)
    shape = wave.shape
    x = F.pad(wave.reshape(-1, 1, shape[-1]), (width, width + orig))
    y = F.conv1d(x, kernel.to(device=wave.device, dtype=wave.dtype), stride=orig)  # [B, new, frames]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :math.ceil(new * shape[-1] / orig)]
    return y.reshape(*shape[:-1], y.shape[-1])


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zeros: int, rolloff: float) -> tuple[Tensor, int]:
    """[new, 1, K] filter bank: row j holds the lowpass sinc sampled at output phase j (built in float64)."""
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / cutoff)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * (cutoff / orig)).float(), width


# ------------------------------------------------------------------------------------------- splits / targets
def speaker_of(file: str, pattern: str | re.Pattern | None = None) -> str | None:
    """The speaker of a clip, else None. With `pattern` (a regex with a named group `speaker`, e.g.
    `data.audio.speaker_pattern`): searched in the clip's relative path. Without: the stem of a Speech Commands name
    (`[<word>_]<hash>_nohash_<n>`) or of a Free Spoken Digit Dataset name (`<digit>_<speaker>_<n>`)."""
    return speakers_of([file], pattern)[0][0]


def speakers_of(files: list[str], pattern: str | re.Pattern | None = None) -> tuple[list[str | None], list[str]]:
    """(speaker of each clip or None, how they were found: the names of the layouts that matched, or the pattern;
    empty if no clip has one). Per clip the first known layout that matches wins, so a folder that mixes the two
    still splits by voice."""
    if pattern is not None:
        rx = re.compile(pattern)
        found = [(m.group("speaker") or None) if (m := rx.search(f)) else None for f in files]
        return found, [f"data.audio.speaker_pattern {rx.pattern!r}"] if any(found) else []
    found: list[str | None] = []
    used: list[str] = []
    for f in files:
        stem = Path(f).stem
        for name, rx in SPEAKER_LAYOUTS.items():
            if m := rx.match(stem):
                found.append(m.group("speaker"))
                if name not in used:
                    used.append(name)
                break
        else:
            found.append(None)
    return found, used


def split_statement(files: list[str], idx: Mapping[str, Tensor], pattern: str | re.Pattern | None = None,
                    official_lists: bool = False) -> dict:
    """How `speaker_split` split these clips, for the report (`report.schema.SplitMethod`): by speaker with the
    count of speakers per split, or by clip with a warning when no clip names a speaker."""
    speakers, how = speakers_of(files, pattern)
    examples = {name: len(i) for name, i in idx.items()}
    if not how:
        where = (f"data.audio.speaker_pattern {pattern!r} matched no clip" if pattern is not None else
                 "no clip name matched a known speaker layout (Speech Commands <speaker>_nohash_<n>, FSDD "
                 "<digit>_<speaker>_<n>)")
        return {"method": "by clip", "unit": "clips", "examples": examples, "detail": where,
                "leak_warning": "no speaker or group id was found, so each clip was split on its own: one voice can be "
                                "in train and test, which inflates test accuracy. Set data.audio.speaker_pattern "
                                "(a regex with a named group 'speaker') if the file names carry one."}
    groups = {name: len({speakers[j] for j in i.tolist() if speakers[j] is not None}) for name, i in idx.items()}
    detail = "speakers from " + " and ".join(how) + ("" if pattern is not None else " file names")
    with_speaker = sum(s is not None for s in speakers)
    if with_speaker < len(files):
        detail += f"; {len(files) - with_speaker} of {len(files)} clips name no speaker and were split one by one"
    if official_lists:
        detail += "; val/test from the source's validation_list.txt / testing_list.txt"
    return {"method": "by speaker", "unit": "speakers", "groups": groups, "examples": examples, "detail": detail}


def _word_of(file: str, label: str) -> str:
    m = _NAME.match(Path(file).stem)
    return m.group("word") if m and m.group("word") else label


def _bucket(seed: int, key: str) -> float:
    """A stable number in [0, 1) for (seed, key): same on every machine and independent of the other files."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big") / 2.0**64


def speaker_split(files: list[str], labels: list[str], val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0, split_lists: Mapping[str, Iterable[str]] | None = None,
                  balanced: bool = True, speaker_pattern: str | re.Pattern | None = None) -> dict[str, Tensor]:
    """Indices of train / val / test (sorted int64) with no speaker in two splits, so test accuracy is measured on
    unseen voices. Clips with no speaker (`_silence_/12.flac`) are units of their own.

    Units are ordered by a stable hash of (seed, unit), like Speech Commands' `which_set`. `balanced=False` puts
    each unit in the bucket its hash falls in: adding clips never moves existing ones, but with a few hundred
    speakers of very unequal size the clip fractions drift by several points. `balanced=True` (default) instead
    cuts the same hash order where the *clip* count reaches the fractions: close to the fractions, and adding
    clips only moves speakers that sit near a cut. `split_lists` ({"val": [...], "test": [...]}, e.g.
    `AudioClips.split_lists`) wins for the files it names and pulls their speakers' other clips along; for the
    official Speech Commands protocol (everything unlisted is training) pass val_fraction=test_fraction=0.
    `speaker_pattern` says where the speaker is when the names follow no known layout (see `speakers_of`)."""
    if len(files) != len(labels):
        raise DataError(f"speaker_split got {len(files)} files but {len(labels)} labels; pass the same clips' lists.")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction!r} and test_fraction={test_fraction!r} must be >= 0 with a sum "
                        f"below 1, e.g. 0.1 and 0.2.")
    named: dict[str, str] = {}
    for split, names in (split_lists or {}).items():
        if split not in ("val", "test"):
            raise DataError(f"split_lists keys must be 'val' and/or 'test', got {split!r}.")
        named.update((n, split) for n in names)
    speakers, _ = speakers_of(files, speaker_pattern)
    units = [f"speaker:{spk}" if spk is not None else f"file:{f}" for f, spk in zip(files, speakers)]
    fixed: dict[str, str] = {}
    for f, unit in sorted(zip(files, units), key=lambda fu: named.get(fu[0]) != "test"):  # in both lists: test
        if f in named:
            fixed.setdefault(unit, named[f])
    sizes: dict[str, int] = {}
    for unit in units:
        if unit not in fixed:
            sizes[unit] = sizes.get(unit, 0) + 1
    position = {u: _bucket(seed, u) for u in sizes}  # where each free unit falls in [0, 1)
    if balanced and sizes:  # re-measure the same order in clips: a unit sits at the middle of its clip range
        total, done = sum(sizes.values()), 0
        for u in sorted(sizes, key=position.__getitem__):
            position[u] = (done + sizes[u] / 2) / total
            done += sizes[u]
    cuts = (val_fraction, val_fraction + test_fraction)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, (f, unit) in enumerate(zip(files, units)):
        if f in named:
            split = named[f]
        elif unit in fixed:
            split = fixed[unit]
        else:
            split = "val" if position[unit] < cuts[0] else "test" if position[unit] < cuts[1] else "train"
        out[split].append(i)
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in out.items()}


def kws_targets(labels: list[str], files: list[str], keyword: str | None = None,
                where: str = "the audio data") -> tuple[Tensor, list[str]]:
    """(int64 targets, class names). No keyword: the 12-class Speech Commands task in its standard order when the
    labels are exactly those, else the sorted label names. With `keyword`: binary ["other", keyword], where the
    keyword is a label folder or a word inside `_unknown_` (recognised by the `<word>_<hash>_nohash_<n>` name)."""
    if len(files) != len(labels):
        raise DataError(f"kws_targets got {len(files)} files but {len(labels)} labels; pass the same clips' lists.")
    if keyword is None:
        names = list(STANDARD_LABELS) if set(labels) == set(STANDARD_LABELS) else sorted(set(labels))
        if len(names) < 2:
            raise DataError(f"{where}: one label folder ({names[0]}/); keyword spotting needs at least two: add "
                            "a folder of clips per label (<root>/<label>/<clip>.wav), or set data.audio.keyword to "
                            "a word inside _unknown_")
        index = {n: i for i, n in enumerate(names)}
        return torch.tensor([index[lab] for lab in labels], dtype=torch.int64), names
    words = [_word_of(f, lab) for f, lab in zip(files, labels)]
    if keyword not in set(words):
        raise DataError(f"keyword {keyword!r} is not in this dataset; available words: "
                        f"{', '.join(sorted(set(words)))}.")
    if all(w == keyword for w in words):
        raise DataError(f"{where}: every clip is the keyword {keyword!r}, so there is nothing to tell it from: add "
                        "clips of other words (other label folders or _unknown_/)")
    return torch.tensor([w == keyword for w in words], dtype=torch.int64), ["other", keyword]
