"""ONNX export of a sequence-to-sequence model as two graphs — the encoder and ONE decoder step — and the ONNX
Runtime model that runs them under leankd's own decoding loop (greedy / beam search stay in Python, the same
code as for the PyTorch model).

Why two graphs: a decoding loop with a data-dependent number of steps does not export as one static graph, and an
edge runtime wants exactly this split (encode once, then call the step until EOS). Both graphs have a dynamic
batch (and source length); the step's state tensors go in and come out, so any runtime can drive the loop.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CompressionError
from ..io import atomic_path
from ..measure.devices import cpu_fp32_copy

ENCODER_OUTPUTS = ["memory", "keys", "mask", "h", "c"]
STEP_INPUTS = ["token", "memory", "keys", "mask", "h", "c"]
STEP_OUTPUTS = ["logits", "h_out", "c_out"]


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src, src_len):
        return self.model.encode(src, src_len)


class _Step(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, token, memory, keys, mask, h, c):
        return self.model.step(token, memory, keys, mask, h, c)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    """The TorchScript exporter: the dynamo exporter specialized the source-length axis of these graphs to the
    example's length on some models (measured on the G2P student), the traced export keeps it dynamic."""
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(tmp), dynamo=False, input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes, opset_version=17)
        except Exception as e:
            raise CompressionError(f"ONNX export of the {path.stem} failed: {type(e).__name__}: {str(e)[:400]}") from e


def export_seq2seq_onnx(model: nn.Module, src: torch.Tensor, src_len: torch.Tensor, out_dir: Path,
                        prefix: str = "fp32") -> tuple[Path, Path]:
    """Write `<prefix>-encoder.onnx` and `<prefix>-decoder-step.onnx` for a model with `encode` / `step`."""
    if not (hasattr(model, "encode") and hasattr(model, "step")):
        raise CompressionError(f"{type(model).__name__} has no encode/step methods: the seq2seq ONNX export needs "
                               "a decodable model (leankd.models.seq2seq.Seq2SeqRNN)")
    model = cpu_fp32_copy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src, src_len = src.cpu(), src_len.cpu()
    with torch.no_grad():
        state = model.encode(src, src_len)
    encoder, step = out_dir / f"{prefix}-encoder.onnx", out_dir / f"{prefix}-decoder-step.onnx"
    b, bs = {0: "batch"}, {0: "batch", 1: "source"}
    _export(_Encoder(model), (src, src_len), encoder, ["src", "src_len"], ENCODER_OUTPUTS,
            {"src": bs, "src_len": b, "memory": bs, "keys": bs, "mask": bs, "h": {1: "batch"}, "c": {1: "batch"}})
    token = torch.full((src.shape[0],), 1, dtype=torch.long)
    _export(_Step(model), (token, *state), step, STEP_INPUTS, STEP_OUTPUTS,
            {"token": b, "memory": bs, "keys": bs, "mask": bs, "h": {1: "batch"}, "c": {1: "batch"}, "logits": b,
             "h_out": {1: "batch"}, "c_out": {1: "batch"}})
    return encoder, step


class OnnxSeq2Seq(nn.Module):
    """Encoder + decoder-step ONNX Runtime sessions behind the `encode` / `step` calls leankd's decoding uses;
    `forward(src, src_len, tgt_in)` is teacher forcing, step by step (for comparing outputs with PyTorch)."""

    def __init__(self, encoder: str | os.PathLike, step: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.paths = (str(encoder), str(step))
        self.threads = threads or torch.get_num_threads()
        self._open()

    def _open(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        self._encoder = ort.InferenceSession(self.paths[0], opts, providers=["CPUExecutionProvider"])
        self._step = ort.InferenceSession(self.paths[1], opts, providers=["CPUExecutionProvider"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_encoder", None)
        state.pop("_step", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __deepcopy__(self, memo: dict) -> "OnnxSeq2Seq":
        return OnnxSeq2Seq(*self.paths, threads=self.threads)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        outs = self._encoder.run(None, {"src": self._np(src), "src_len": self._np(src_len)})
        return tuple(torch.from_numpy(o) for o in outs)

    def step(self, token, memory, keys, mask, h, c):
        feed = dict(zip(STEP_INPUTS, (self._np(t) for t in (token, memory, keys, mask, h, c))))
        return tuple(torch.from_numpy(o) for o in self._step.run(None, feed))

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, keys, mask, h, c = self.encode(src, src_len)
        logits = []
        for t in range(tgt_in.shape[1]):
            out, h, c = self.step(tgt_in[:, t], memory, keys, mask, h, c)
            logits.append(out)
        return torch.stack(logits, dim=1)


def quantize_seq2seq_onnx(encoder: Path, step: Path, out_dir: Path) -> tuple[Path, Path]:
    """ONNX Runtime dynamic int8 (weights int8, activations quantized on the fly) of both graphs: it covers
    LSTM, MatMul and Gemm (not GRU, which stays float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    outs = []
    for src in (encoder, step):
        dst = Path(out_dir) / src.name.replace("fp32-", "int8-dynamic-")
        with atomic_path(dst) as tmp:
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
        outs.append(dst)
    return outs[0], outs[1]
