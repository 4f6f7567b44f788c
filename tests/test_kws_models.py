"""Keyword spotting: log-mel front end against hand-computed HTK filters, CRNN/DS-CNN presets and costs, and
streaming that must reproduce the whole-clip output exactly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leankd.data.melspec import LogMel, hz_to_mel, mel_filterbank, mel_to_hz
from leankd.errors import ModelError
from leankd.models import create_model, infer_num_classes, list_models
from leankd.models.crnn import CRNN
from leankd.models.streaming import StreamingKWS, chunk_latency

SR = 16000
FRAMES = 98  # 1 s at hop 160, n_fft 400, center=False
KWS_PRESETS = ["crnn", "crnn_large", "crnn_small", "crnn_tiny", "dscnn", "dscnn_s", "dscnn_m", "dscnn_l"]
STUDENTS = ["crnn_small", "crnn_tiny"]


def macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------ LogMel


def test_htk_mel_scale_round_trips_and_known_values() -> None:
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # HTK: 1 kHz is ~1000 mel
    assert mel_to_hz(hz_to_mel(3210.0)) == pytest.approx(3210.0)


def test_filterbank_peaks_at_htk_centres() -> None:
    # n_fft = 16000 -> 1 Hz bins; two filters over 0..8 kHz: points at mel 0, M/3, 2M/3, M (M = mel(8 kHz))
    fb = mel_filterbank(n_freqs=8001, sample_rate=SR, n_mels=2, f_min=0.0, f_max=8000.0)
    assert fb.shape == (2, 8001)
    top = hz_to_mel(8000.0)
    centres = [mel_to_hz(top / 3), mel_to_hz(2 * top / 3)]
    # by hand: M = 2595 * log10(1 + 8000/700) = 2840.02; 700 * (10 ** (M/3 / 2595) - 1) = 921.46, at 2M/3: 3055.88
    assert centres == pytest.approx([921.46, 3055.88], abs=0.01)
    for m, centre in enumerate(centres):
        assert int(fb[m].argmax()) in (math.floor(centre), math.ceil(centre))  # a bin either side of the apex
        assert float(fb[m].max()) == pytest.approx(1.0, abs=2e-3)
    # triangles: zero at the neighbouring points, never negative
    assert float(fb[0, 0]) == 0.0 and float(fb[0, round(centres[1]) + 1]) == 0.0
    assert float(fb.min()) == 0.0


def test_logmel_shape_and_frame_count() -> None:
    fe = LogMel()
    assert fe.mel_fb.shape == (40, 201)
    for samples in (400, 559, 560, 16000, 12345):
        out = fe(torch.randn(2, samples))
        assert out.shape == (2, 40, 1 + (samples - 400) // 160) == (2, 40, fe.num_frames(samples))
    assert fe.num_frames(16000) == FRAMES
    assert fe.num_frames(399) == 0
    assert fe(torch.randn(16000)).shape == (40, FRAMES)  # unbatched in, unbatched out


def test_logmel_matches_framewise_numpy_reference() -> None:
    np = pytest.importorskip("numpy")
    fe, audio = LogMel(), _clip(0.1, seed=9)
    x = audio.double().numpy()
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    frames = np.stack([x[i * 160:i * 160 + 400] * window for i in range(fe.num_frames(x.size))], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    ref = np.log(np.maximum(fe.mel_fb.double().numpy() @ power, 1e-9))
    assert torch.allclose(fe(audio), torch.from_numpy(ref).float(), atol=1e-4)


def test_sine_energy_lands_in_nearest_band() -> None:
    fe = LogMel()
    t = torch.arange(SR) / SR
    out = fe(torch.sin(2 * math.pi * 1000.0 * t))
    band = int(out.mean(dim=1).argmax())
    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), 42)[1:-1]
    centres = torch.tensor([mel_to_hz(float(m)) for m in mels])
    assert band == int((centres - 1000.0).abs().argmin())


def test_logmel_silence_is_finite_and_fp32_under_autocast() -> None:
    fe = LogMel()
    out = fe(torch.zeros(1, 16000))
    assert torch.isfinite(out).all() and float(out.max()) == pytest.approx(math.log(1e-9))
    x = torch.randn(2, 16000, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fe(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, fe(x.float()))


@pytest.mark.parametrize("kwargs,match", [
    ({"win_length": 512}, "win_length"),
    ({"f_max": 9000.0}, "f_max"),
    ({"f_min": 5000.0, "f_max": 4000.0}, "f_min"),
    ({"n_mels": 0}, "n_mels"),
    ({"eps": 0.0}, "eps"),
])
def test_logmel_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LogMel(**kwargs)


def test_logmel_rejects_short_and_integer_audio() -> None:
    with pytest.raises(ValueError, match="n_fft"):
        LogMel()(torch.randn(1, 300))
    with pytest.raises(ValueError, match="float"):
        LogMel()(torch.zeros(1, 16000, dtype=torch.int16))


# ------------------------------------------------------------------------------------------------ models


def test_presets_registered() -> None:
    assert set(KWS_PRESETS) <= set(list_models())


@pytest.mark.parametrize("name", KWS_PRESETS)
def test_preset_output_shape_and_contract(name: str) -> None:
    model = create_model(name, num_classes=12).eval()
    x = torch.randn(2, 40, FRAMES)
    with torch.no_grad():
        logits = model(x)
        split = model.forward_head(model.forward_features(x))
    assert logits.shape == (2, 12)
    assert torch.allclose(logits, split)
    assert isinstance(model.classifier, nn.Linear) and infer_num_classes(model) == 12


def test_crnn_base_size_and_students_are_10x_cheaper() -> None:
    x = torch.randn(1, 40, FRAMES)
    base = create_model("crnn", num_classes=35)
    assert 60_000 <= sum(p.numel() for p in base.parameters()) <= 80_000
    base_macs = macs(base, x)
    assert base_macs == base.macs(FRAMES)  # on CPU the counter sees the GRU's matmuls
    base_params = sum(p.numel() for p in base.parameters())
    for name in STUDENTS:
        student = create_model(name, num_classes=35)
        assert macs(student, x) == student.macs(FRAMES)
        assert base_macs >= 10 * macs(student, x), name
        assert base_params >= 10 * sum(p.numel() for p in student.parameters()), name


def test_crnn_forward_is_the_exposed_pieces() -> None:
    torch.manual_seed(0)
    model = CRNN(10, conv_norm_act=True).eval()
    x = torch.randn(3, 40, FRAMES)
    with torch.no_grad():
        cols = model.conv_frames(x)
        assert cols.shape == (3, 1 + (FRAMES - 20) // 8, 8 * 18)
        out, _ = model.gru(cols)
        assert torch.equal(model.classifier(model.pool(out)), model(x))


@pytest.mark.parametrize("kwargs", [{"attention": False}, {"bidirectional": True}, {"bidirectional": True,
                                                                                     "attention": False}])
def test_crnn_variants(kwargs: dict) -> None:
    model = create_model("crnn", num_classes=5, **kwargs).eval()
    assert model(torch.randn(2, 40, FRAMES)).shape == (2, 5)


@pytest.mark.parametrize("name", ["crnn", "dscnn_s"])
def test_wrong_input_rank_names_expected_shape(name: str) -> None:
    model = create_model(name, num_classes=4)
    with pytest.raises(ValueError, match=r"\[B, n_mels, T\]"):
        model(torch.randn(2, 1, 40, FRAMES))
    with pytest.raises(ValueError, match="n_mels=40"):
        model(torch.randn(2, 64, FRAMES))


def test_bad_model_arguments() -> None:
    with pytest.raises(ModelError, match="kernel_size"):
        create_model("crnn", num_classes=4, kernel_size=(5,))
    with pytest.raises(ModelError, match="channels"):
        create_model("dscnn", num_classes=4, channels=0)
    assert create_model("crnn", num_classes=4, kernel_size=[5, 10], stride=[2, 5]).kernel_size == (5, 10)


# ------------------------------------------------------------------------------------------------ streaming


def _clip(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(int(SR * seconds), generator=torch.Generator().manual_seed(seed))


def _stream(streamer: StreamingKWS, audio: torch.Tensor, chunk: int) -> list:
    return [streamer.step(audio[i:i + chunk]) for i in range(0, audio.numel(), chunk)]


def _whole(fe: LogMel, model: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model.eval()(fe(audio.unsqueeze(0))), dim=-1)[0]


@pytest.fixture
def crnn_model() -> CRNN:
    torch.manual_seed(0)
    return CRNN(12, conv_norm_act=True).eval()


@pytest.mark.parametrize("chunk", [1600, 1000, 160, 7])
def test_streaming_crnn_matches_whole_clip(crnn_model: CRNN, chunk: int) -> None:
    fe, audio = LogMel(), _clip()
    streamer = StreamingKWS(fe, crnn_model)
    assert streamer.mode == "incremental"
    outs = _stream(streamer, audio, chunk)
    assert outs[0] is None or chunk > streamer.first_output_samples
    assert streamer.first_output_samples == 400 + 19 * 160
    assert torch.allclose(outs[-1], _whole(fe, crnn_model, audio), atol=1e-5)
    assert streamer._outputs.shape[1] == 1 + (FRAMES - 20) // 8


def test_streaming_matches_at_every_chunk_boundary(crnn_model: CRNN) -> None:
    fe, audio = LogMel(), _clip(0.7, seed=3)
    streamer = StreamingKWS(fe, crnn_model)
    for end in range(1600, audio.numel() + 1, 1600):
        probs = streamer.step(audio[end - 1600:end])
        if fe.num_frames(end) >= 20:
            assert torch.allclose(probs, _whole(fe, crnn_model, audio[:end]), atol=1e-5)


def test_streaming_stride_larger_than_kernel() -> None:
    torch.manual_seed(1)
    model = CRNN(6, kernel_size=(5, 6), stride=(2, 9), hidden_size=16, gru_num_layers=1).eval()
    fe, audio = LogMel(), _clip(seed=4)
    streamer = StreamingKWS(fe, model)
    assert torch.allclose(_stream(streamer, audio, 700)[-1], _whole(fe, model, audio), atol=1e-5)


def test_streaming_reset_repeats_first_pass(crnn_model: CRNN) -> None:
    streamer = StreamingKWS(LogMel(), crnn_model)
    audio = _clip(seed=1)
    first = _stream(streamer, audio, 1600)
    streamer.reset()
    second = _stream(streamer, audio, 1600)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(first, second))


def test_streaming_window_limits_pooling(crnn_model: CRNN) -> None:
    fe, audio = LogMel(), _clip(2.0, seed=2)
    streamer = StreamingKWS(fe, crnn_model, window_frames=FRAMES)
    probs = _stream(streamer, audio, 1600)[-1]
    assert streamer._outputs.shape[1] == 1 + (FRAMES - 20) // 8
    assert probs.shape == (12,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_window_fallback_on_dscnn_matches_whole_clip() -> None:
    torch.manual_seed(0)
    model = create_model("dscnn_s", num_classes=12).eval()
    fe, audio = LogMel(), _clip(seed=5)
    streamer = StreamingKWS(fe, model)  # default window: 1 s = 98 frames, the whole clip
    assert streamer.mode == "window"
    outs = _stream(streamer, audio, 1000)
    assert outs[0] is None
    assert torch.allclose(outs[-1], _whole(fe, model, audio), atol=1e-5)
    # a longer stream keeps only the last window, on the stream's hop grid
    longer = torch.cat([_clip(0.5, seed=6), audio])
    streamer.reset()
    last = _stream(streamer, longer, 1600)[-1]
    assert torch.allclose(last, _whole(fe, model, longer[8000:]), atol=1e-5)


def test_bidirectional_crnn_uses_window_fallback() -> None:
    torch.manual_seed(0)
    model = create_model("crnn", num_classes=3, bidirectional=True).eval()
    fe, audio = LogMel(), _clip(seed=7)
    streamer = StreamingKWS(fe, model)
    assert streamer.mode == "window"
    assert torch.allclose(_stream(streamer, audio, 1600)[-1], _whole(fe, model, audio), atol=1e-5)


def test_chunk_latency_reports_real_time_factor(crnn_model: CRNN) -> None:
    streamer = StreamingKWS(LogMel(), crnn_model)
    stats = chunk_latency(streamer, 1600, runs=5, warmup=2)
    assert stats["chunk_ms"] == pytest.approx(100.0)
    assert 0 < stats["median_ms"] <= stats["p90_ms"]
    assert stats["real_time_factor"] == pytest.approx(stats["median_ms"] / 100.0)
    assert streamer._probs is None  # left reset
