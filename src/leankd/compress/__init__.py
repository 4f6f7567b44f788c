"""Compression of a trained model into a shippable artifact: half precision (fp16/bf16) and dynamic int8 in
PyTorch (`precision`, `quantize`); ONNX export and ONNX Runtime int8 (`onnx`)."""
from .errors import CompressionError
from .precision import (
    NORM_TYPES,
    PRECISIONS,
    CastInputs,
    load_half,
    save_half,
    to_precision,
)
from .quantize import (
    EMBEDDING_NOT_SUPPORTED,
    NOT_COVERED,
    QUANTIZABLE_TYPES,
    QuantizationResult,
    artifact_size_bytes,
    load_quantized,
    quantize_dynamic_int8,
    save_quantized,
    select_quantized_engine,
)

__all__ = [
    "EMBEDDING_NOT_SUPPORTED",
    "NORM_TYPES",
    "NOT_COVERED",
    "PRECISIONS",
    "QUANTIZABLE_TYPES",
    "CastInputs",
    "CompressionError",
    "QuantizationResult",
    "artifact_size_bytes",
    "load_half",
    "load_quantized",
    "quantize_dynamic_int8",
    "save_half",
    "save_quantized",
    "select_quantized_engine",
    "to_precision",
]
