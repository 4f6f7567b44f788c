"""PyTorch-side compression: dynamic int8 (Linear/LSTM/GRU) and fp16/bf16 wrappers. Tolerances were measured
on CPU with torch 2.14.1 (numbers in the comments) and the asserted bounds leave roughly a 5-10x margin."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import leankd.compress.quantize as quantize_mod
from leankd.compress import (
    EMBEDDING_NOT_SUPPORTED,
    NOT_COVERED,
    CastInputs,
    CompressionError,
    artifact_size_bytes,
    load_half,
    load_quantized,
    quantize_dynamic_int8,
    save_half,
    save_quantized,
    to_precision,
)
from leankd.errors import LeanKDError
from leankd.train.checkpoint import save_weights

# ------------------------------------------------------------------------------------------------ test models


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(16, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


class Seq2Seq(nn.Module):
    """LSTM encoder-decoder (teacher forcing): embedding -> 2-layer LSTM encoder -> 2-layer LSTM decoder -> vocab."""

    def __init__(self, vocab: int = 50, d: int = 32, h: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.LSTM(d, h, 2, batch_first=True)
        self.dec = nn.LSTM(d, h, 2, batch_first=True)
        self.out = nn.Linear(h, vocab)

    def forward(self, src, tgt):
        _, state = self.enc(self.emb(src))
        y, _ = self.dec(self.emb(tgt), state)
        return self.out(y)


class HandTiedDecoder(nn.Module):
    """Output projection tied to the embedding by hand: `out` keeps only its bias, its weight is None. Dynamic int8
    cannot quantize `out` ("'NoneType' object has no attribute 'numel'"), but the model itself works."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 32)
        self.rnn = nn.LSTM(32, 32, batch_first=True)
        self.out = nn.Linear(32, 40)
        self.out.register_parameter("weight", None)

    def forward(self, ids):
        y, _ = self.rnn(self.emb(ids))
        return F.linear(y, self.emb.weight, self.out.bias)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def trained_bn_cnn(seed: int = 0, input_scale: float = 1.0) -> nn.Sequential:
    """A CNN whose BatchNorm running stats come from inputs of the given scale (a few train-mode forwards)."""
    torch.manual_seed(seed)
    m = small_cnn().train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(32, 3, 16, 16) * input_scale)
    return m.eval()


@pytest.fixture(autouse=True)
def _no_warning_leaks():
    """The deprecation warnings of torch.ao.quantization are silenced inside leankd; none may leak out."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        yield


# ------------------------------------------------------------------------------------------------ int8 dynamic


def test_int8_gru_classifier_close_to_fp32():
    torch.manual_seed(0)
    model = GRUClassifier().eval()
    x = torch.randn(8, 12, 16)
    result = quantize_dynamic_int8(model)
    assert result.scheme == "int8-dynamic"
    assert result.quantized == ["gru", "head"]
    assert result.skipped == {}
    assert type(result.model.gru).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert isinstance(model.gru, nn.GRU)  # the original model is untouched
    with torch.no_grad():
        diff = (model(x) - result.model(x)).abs().max().item()
    # measured: 0.0026-0.0033 max abs logit diff over seeds 0-4 (logits ~0.1-0.3)
    assert diff < 0.02


def test_int8_lstm_seq2seq_close_to_fp32_embedding_included():
    torch.manual_seed(0)
    model = Seq2Seq().eval()
    src, tgt = torch.randint(0, 50, (4, 10)), torch.randint(0, 50, (4, 7))
    result = quantize_dynamic_int8(model, example_inputs=(src, tgt), forward=lambda m, inp: m(*inp))
    assert result.quantized == ["emb", "enc", "dec", "out"]
    assert result.skipped == {}
    # without example inputs nothing checks that no code reads emb.weight as a tensor: the embedding stays float
    assert quantize_dynamic_int8(model).skipped == {"emb": EMBEDDING_NOT_SUPPORTED}
    with torch.no_grad():
        diff = (model(src, tgt) - result.model(src, tgt)).abs().max().item()
    # measured: 0.0017-0.0024 max abs logit diff over seeds 0-4
    assert diff < 0.02
    assert result.max_abs_diff == pytest.approx(diff, rel=1e-5)


def test_int8_mlp_artifact_is_4x_smaller_than_fp32_safetensors(tmp_path):
    torch.manual_seed(0)
    model = mlp().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "fp32.safetensors"))
    result = quantize_dynamic_int8(model)
    assert result.quantized == ["0", "2", "4"]
    save_quantized(tmp_path / "int8.pt", result)
    fp32, int8 = artifact_size_bytes(tmp_path / "fp32.safetensors"), artifact_size_bytes(tmp_path / "int8.pt")
    # measured: 3,152,320 vs 797,693 bytes = 3.95x (int8 weights, fp32 biases, per-tensor scales, zip overhead)
    assert fp32 / int8 >= 3.5
    assert artifact_size_bytes(tmp_path) == fp32 + int8  # a directory counts all its files


def test_int8_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = Seq2Seq().eval()
    result = quantize_dynamic_int8(model)
    save_quantized(tmp_path / "s2s.pt", result.model)
    loaded = load_quantized(tmp_path / "s2s.pt", Seq2Seq, result.quantized)
    src, tgt = torch.randint(0, 50, (3, 9)), torch.randint(0, 50, (3, 6))
    with torch.no_grad():
        assert torch.equal(result.model(src, tgt), loaded(src, tgt))
    # a model instance works as the "factory" too, and the result itself carries the names
    loaded2 = load_quantized(tmp_path / "s2s.pt", Seq2Seq(), result)
    with torch.no_grad():
        assert torch.equal(result.model(src, tgt), loaded2(src, tgt))


def test_int8_load_errors_are_user_errors(tmp_path):
    result = quantize_dynamic_int8(GRUClassifier())
    save_quantized(tmp_path / "q.pt", result)
    with pytest.raises(LeanKDError, match="does not exist"):
        load_quantized(tmp_path / "missing.pt", GRUClassifier, result.quantized)
    with pytest.raises(LeanKDError, match="no module"):
        load_quantized(tmp_path / "q.pt", GRUClassifier, ["gru", "nope"])
    with pytest.raises(LeanKDError, match="does not match"):
        load_quantized(tmp_path / "q.pt", mlp, ["0"])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(LeanKDError, match="not a readable"):
        load_quantized(tmp_path / "junk.pt", GRUClassifier, result.quantized)


def test_int8_module_that_cannot_be_quantized_is_named_and_kept_float():
    torch.manual_seed(0)
    model = HandTiedDecoder().eval()
    ids = torch.randint(0, 40, (2, 6))
    result = quantize_dynamic_int8(model)  # must not raise
    assert result.quantized == ["rnn"]
    assert result.skipped["out"].startswith("failed: AttributeError")
    assert "NoneType" in result.skipped["out"]
    assert result.skipped["emb"] == EMBEDDING_NOT_SUPPORTED
    assert type(result.model.out) is nn.Linear  # left in float ...
    with torch.no_grad():  # ... and the model still runs
        assert (model(ids) - result.model(ids)).abs().max().item() < 0.05


def test_int8_failure_of_any_module_is_contained(monkeypatch):
    """Whatever the exception, the failing module is named, the others are quantized, the forward works."""
    real = quantize_mod._to_dynamic_int8

    def flaky(module):
        if isinstance(module, nn.GRU):
            raise RuntimeError("simulated backend failure\nsecond line")
        return real(module)

    monkeypatch.setattr(quantize_mod, "_to_dynamic_int8", flaky)
    model = GRUClassifier().eval()
    result = quantize_dynamic_int8(model)
    assert result.quantized == ["head"]
    assert result.skipped == {"gru": "failed: RuntimeError: simulated backend failure"}
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert result.model(x).shape == (2, 5)


def test_int8_module_that_breaks_the_forward_is_put_back_with_example_inputs(monkeypatch):
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("quantized kernel rejects this input")

    real = quantize_mod._to_dynamic_int8
    monkeypatch.setattr(quantize_mod, "_to_dynamic_int8", lambda m: Broken() if isinstance(m, nn.GRU) else real(m))
    model = GRUClassifier().eval()
    x = torch.randn(2, 5, 16)
    result = quantize_dynamic_int8(model, example_inputs=x)
    assert result.quantized == ["head"]
    assert result.skipped["gru"] == "failed at forward: ValueError: quantized kernel rejects this input"
    assert isinstance(result.model.gru, nn.GRU)
    assert result.max_abs_diff is not None and result.max_abs_diff < 0.05


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_int8_rnns_pytorch_gets_wrong_are_kept_float_with_a_reason():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.LSTM(8, 16, batch_first=True, proj_size=4)  # quantized LSTM would drop the projection
            self.nobias = nn.GRU(4, 8, batch_first=True, bias=False)  # "mod.bias must be True"
            self.ok = nn.LSTM(8, 8, batch_first=True)

        def forward(self, x):
            return self.nobias(self.proj(x)[0])[0] + self.ok(x)[0]

    model = Model().eval()
    result = quantize_dynamic_int8(model)
    assert result.quantized == ["ok"]
    assert "proj_size" in result.skipped["proj"]
    assert "bias=False" in result.skipped["nobias"]
    with torch.no_grad():
        assert result.model(torch.randn(2, 5, 8)).shape == (2, 5, 8)


def test_int8_convolutions_are_listed_as_skipped_and_aggregated():
    from leankd.models import create_model

    result = quantize_dynamic_int8(create_model("resnet20", num_classes=10))
    assert result.quantized == ["classifier"]
    conv_keys = [k for k in result.skipped if k.startswith("Conv2d x ")]
    assert len(conv_keys) == 1 and int(conv_keys[0].split(" x ")[1]) >= 19
    assert result.skipped[conv_keys[0]] == NOT_COVERED
    assert any(k.startswith("BatchNorm2d x ") for k in result.skipped)
    # few modules of a type are listed by path
    small = quantize_dynamic_int8(small_cnn())
    assert small.skipped["0"] == NOT_COVERED and small.skipped["1"] == NOT_COVERED
    assert small.quantized == ["8"]


def test_int8_handles_tied_modules_bare_rnns_and_parametrized_weights():
    shared = nn.Linear(8, 8)
    tied = nn.Sequential(shared, nn.ReLU(), shared).eval()
    r = quantize_dynamic_int8(tied)
    assert r.quantized == ["0"] and r.model[0] is r.model[2]

    bare = quantize_dynamic_int8(nn.LSTM(8, 8))
    assert bare.quantized == ["(model)"]
    assert bare.model(torch.randn(3, 2, 8))[0].shape == (3, 2, 8)

    wn = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))).eval()
    x = torch.randn(4, 8)
    r = quantize_dynamic_int8(wn)
    assert r.quantized == ["0"]
    with torch.no_grad():
        assert (wn(x) - r.model(x)).abs().max().item() < 0.05

    with warnings.catch_warnings():  # the hook-based weight_norm itself is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        old_style = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(8, 8)))
    with pytest.raises(CompressionError, match="remove_weight_norm"):
        quantize_dynamic_int8(old_style)
    with pytest.raises(CompressionError, match="unknown module type"):
        quantize_dynamic_int8(nn.Linear(2, 2), module_types=("Conv2d",))


def test_int8_transformer_layers_linears_are_named_not_broken():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    result = quantize_dynamic_int8(model)
    assert "TransformerEncoderLayer" in result.skipped["layers.0.linear1"]
    assert "MultiheadAttention" in result.skipped["layers.0.self_attn.out_proj"]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x))


# ------------------------------------------------------------------------------------------------ fp16 / bf16

# measured on trained_bn_cnn seeds 0-4 (|logits| <= ~0.12): fp16 max abs diff 7.8e-5..9.7e-5, bf16 5.1e-4..6.9e-4
HALF_TOL = {"fp16": 1e-3, "bf16": 5e-3}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_wrapper_fp32_in_fp32_out_close_to_fp32(precision):
    model = trained_bn_cnn()
    x = torch.randn(8, 3, 16, 16)
    wrapped = to_precision(model, precision)
    assert isinstance(wrapped, CastInputs) and not wrapped.training
    assert wrapped.inner[0].weight.dtype == wrapped.dtype
    assert wrapped.inner[1].weight.dtype == torch.float32  # norms kept in fp32 (see precision.py)
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    with torch.no_grad():
        out, ref = wrapped(x), model(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < HALF_TOL[precision]
    assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_save_load_round_trip_and_half_size(tmp_path, precision):
    model = trained_bn_cnn()
    wrapped = to_precision(model, precision)
    save_weights(tmp_path / "fp32.safetensors", model)
    save_half(tmp_path / f"{precision}.safetensors", wrapped)
    half_bytes = artifact_size_bytes(tmp_path / f"{precision}.safetensors")
    ratio = half_bytes / artifact_size_bytes(tmp_path / "fp32.safetensors")
    # measured: 0.517 for both (fp32 norm parameters/statistics and the JSON header keep it a bit above 0.5)
    assert 0.45 < ratio < 0.56
    loaded = load_half(tmp_path / f"{precision}.safetensors", small_cnn)
    assert loaded.precision == precision
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(wrapped(x), loaded(x))
    with pytest.raises(LeanKDError, match="save_half"):
        load_half(tmp_path / "fp32.safetensors", small_cnn)


def test_fp16_batchnorm_overflow_collapses_unless_norms_stay_fp32():
    """running_var > 65504 (fp16 max) happens with un-normalized inputs: in fp16 it is inf, BN outputs its bias
    for every sample, and every input gets the same logits. Norms kept in fp32 avoid it."""
    model = trained_bn_cnn(input_scale=2000.0)
    assert model[1].running_var.min().item() > 65504
    x = torch.randn(16, 3, 16, 16) * 2000.0
    with torch.no_grad():
        ref = model(x)
        all_half = to_precision(model, "fp16", keep_norms_fp32=False)(x)
        kept = to_precision(model, "fp16")(x)
    # measured: fp32 logits differ across inputs (std 0.014), all-fp16 logits are identical for every input
    # (max abs diff to fp32 0.40); fp16 with fp32 norms stays within 2.8e-4 of fp32
    assert (ref - ref[0]).abs().max().item() > 0.01
    assert (all_half - all_half[0]).abs().max().item() == 0.0
    assert (all_half - ref).abs().max().item() > 0.1
    assert (kept - ref).abs().max().item() < 3e-3


def test_cast_inputs_casts_only_floating_tensors_in_containers():
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lin = nn.Linear(4, 3)

        def forward(self, batch, scale=None):
            assert batch["ids"].dtype == torch.long and batch["feats"].dtype == torch.bfloat16
            assert scale.dtype == torch.bfloat16
            h = self.emb(batch["ids"]).mean(1) + batch["feats"]
            return {"logits": self.lin(h) * scale, "ids": batch["ids"]}

    wrapped = to_precision(DictModel(), "bf16")
    out = wrapped({"ids": torch.randint(0, 10, (2, 5)), "feats": torch.randn(2, 4)}, scale=torch.tensor(2.0))
    assert out["logits"].dtype == torch.float32 and out["ids"].dtype == torch.long
    with pytest.raises(LeanKDError, match="unknown precision"):
        to_precision(DictModel(), "int4")


# ------------------------------------------------------------------------------------------------ int8 embeddings


class BagOfWords(nn.Module):
    """A text student that is mostly embedding: 5,000 x 64 table (320,000 weights) and a 64 -> 4 head (260)."""

    def __init__(self, padding_idx=0):
        super().__init__()
        self.embed = nn.Embedding(5000, 64, padding_idx=padding_idx)
        self.head = nn.Linear(64, 4)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


class _IdsTask:
    """What the int8 targets ask of a task: typical inputs, a model's part of them, a forward (+ ONNX's batch axis)."""

    def example_inputs(self, n):
        return torch.randint(0, 5000, (n, 12), generator=torch.Generator().manual_seed(n))

    def model_inputs(self, model, inputs):
        return inputs

    def forward(self, model, inputs):
        return model(inputs)

    def dynamic_dims(self):
        return {0: "batch"}


def test_int8_dynamic_target_quantizes_a_big_embedding_and_says_so(tmp_path):
    from leankd.compress.targets import build_artifact

    torch.manual_seed(0)
    model = BagOfWords().eval()
    save_weights(tmp_path / "fp32.safetensors", model)
    art = build_artifact("int8-dynamic", model, _IdsTask(), tmp_path / "out")
    assert art.quantized == ["embed", "head"] and not art.left_in_float
    fp32, int8 = artifact_size_bytes(tmp_path / "fp32.safetensors"), artifact_size_bytes(art.path)
    # measured: 1,281,296 vs 364,091 bytes = 3.52x (a byte per weight + 8 bytes of scale and zero point per 64-d
    # row: 72 vs 256 bytes); with the embedding left in float the int8 file was about as big as the fp32 one
    assert fp32 / int8 >= 3.3
    assert any(n.startswith("Embedding embed (5,000 x 64, 100% of the parameters) is int8") for n in art.notes)
    assert any(n.startswith(f"file {int8:,} bytes against 1,281,040 bytes of fp32 tensors") for n in art.notes)
    ids = torch.randint(0, 5000, (32, 12))
    with torch.no_grad():
        ref, out = model(ids), art.runnable(ids)
    # per-row uint8: error <= scale / 2 = (max - min) / 510 per weight; N(0, 1) rows span ~5 -> ~0.01, averaged
    assert (ref - out).abs().max().item() < 0.02
    assert torch.equal(ref.argmax(1), out.argmax(1))
    loaded = load_quantized(art.path, BagOfWords, art.quantized)  # the artifact loads back as saved
    with torch.no_grad():
        assert torch.equal(loaded(ids), out)


def test_int8_embedding_padding_row_stays_zero():
    model = BagOfWords(padding_idx=0).eval()
    result = quantize_dynamic_int8(model, example_inputs=torch.randint(0, 5000, (2, 12)))
    assert "embed" in result.quantized
    with torch.no_grad():
        assert torch.equal(result.model.embed(torch.zeros(1, 3, dtype=torch.long)), torch.zeros(1, 3, 64))


class ExpandedTokenTypes(nn.Module):
    """BERT's embedding sum in small: with no token_type_ids passed, Hugging Face BERT / MiniLM look the token-type
    table up with a buffer row `expand()`ed over the batch (stride 0: not contiguous); the bag gets a strided view."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(5000, 64)
        self.token_type = nn.Embedding(2, 64)
        self.bag = nn.EmbeddingBag(5000, 64, mode="sum")
        self.register_buffer("type_ids", torch.zeros(1, 512, dtype=torch.long), persistent=False)
        self.head = nn.Linear(64, 4)

    def forward(self, ids):
        types = self.type_ids[:, :ids.shape[1]].expand(ids.shape[0], -1)
        every_other = ids[:, ::2]
        assert not types.is_contiguous() and not every_other.is_contiguous()
        return self.head((self.words(ids) + self.token_type(types)).mean(1) + self.bag(every_other) / 6)


def test_int8_embeddings_take_non_contiguous_indices(tmp_path):
    """MiniLM's token_type_embeddings stayed float ("failed at forward: ... Expect weight, indices, and offsets to be
    contiguous"): PyTorch's int8 embedding kernels refuse the expanded index tensor the float lookup takes."""
    from leankd.compress.targets import build_artifact

    torch.manual_seed(0)
    model = ExpandedTokenTypes().eval()
    art = build_artifact("int8-dynamic", model, _IdsTask(), tmp_path / "out")
    assert art.quantized == ["words", "token_type", "bag", "head"]
    assert any(n.startswith("Embedding token_type (2 x 64, 0% of the parameters) is int8") for n in art.notes)
    ids = torch.randint(0, 5000, (32, 12))
    with torch.no_grad():
        ref, out = model(ids), art.runnable(ids)
    # per-row uint8 as above, but the token-type row is added un-averaged and the head's input is quantized too:
    # measured 0.034
    assert (ref - out).abs().max().item() < 0.05
    loaded = load_quantized(art.path, ExpandedTokenTypes, art.quantized)
    with torch.no_grad():
        assert torch.equal(loaded(ids), out)


def test_embeddings_int8_cannot_reproduce_are_left_float_and_named():
    class Bags(nn.Module):
        def __init__(self):
            super().__init__()
            self.total = nn.EmbeddingBag(300, 16, mode="sum")
            self.mean = nn.EmbeddingBag(300, 16, mode="mean")
            self.padded = nn.EmbeddingBag(300, 16, mode="sum", padding_idx=0)
            self.normed = nn.Embedding(300, 16, max_norm=1.0)

        def forward(self, ids):
            return self.total(ids) + self.mean(ids) + self.padded(ids) + self.normed(ids).sum(1)

    torch.manual_seed(0)
    model = Bags().eval()
    ids = torch.randint(0, 300, (4, 9))
    ids[:, 0] = 0  # padding entries, which a float bag with padding_idx leaves out
    result = quantize_dynamic_int8(model, example_inputs=ids)
    assert result.quantized == ["total"]
    assert "always sums" in result.skipped["mean"] and "mode='mean'" in result.skipped["mean"]
    assert "padding entries" in result.skipped["padded"]
    assert "max_norm" in result.skipped["normed"]
    with torch.no_grad():  # the int8 sum bag matches float; the three kept in float keep the model right
        assert (model(ids) - result.model(ids)).abs().max().item() < 0.05
    notes = quantize_mod.embedding_notes(result, model)
    assert notes[0].startswith("EmbeddingBag total (300 x 16, 25% of the parameters) is int8")
    assert notes[1].startswith("EmbeddingBag mean (300 x 16, 25% of the parameters) stays in float: EmbeddingBag "
                               "with mode='mean'")


def test_embedding_read_as_a_tensor_elsewhere_is_put_back_in_float():
    torch.manual_seed(0)
    model = HandTiedDecoder().eval()
    ids = torch.randint(0, 40, (2, 6))
    result = quantize_dynamic_int8(model, example_inputs=ids)
    assert result.quantized == ["rnn"]
    assert result.skipped["emb"].startswith("kept in float: other code reads this module's weights as tensors")
    with torch.no_grad():
        assert (model(ids) - result.model(ids)).abs().max().item() < 0.05


def test_onnx_int8_says_when_the_embedding_lookup_stays_float(tmp_path):
    """ORT's dynamic int8 (MatMul/Gemm/LSTM/Attention) leaves Gather - the embedding - in fp32: the note says how
    much of the file that is, instead of a silent 1.0x."""
    pytest.importorskip("onnxruntime")
    from leankd.compress.targets import build_artifact

    torch.manual_seed(0)
    art = build_artifact("onnx-int8-dynamic", BagOfWords(padding_idx=None).eval(), _IdsTask(), tmp_path)
    notes = [n for n in art.notes if "Gather stay fp32" in n]
    # 1,280,000 of 1,281,040 bytes of weights (the head's 64 x 4 int8 weights are smaller still): 100 %
    assert len(notes) == 1 and notes[0].startswith("1 embedding table(s) looked up by Gather stay fp32 in "
                                                   "int8-dynamic.onnx") \
        and "about 100% of its weight bytes" in notes[0]
