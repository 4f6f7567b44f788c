"""Measurement: quality, parameters/size/MACs, latency, memory and energy, by the same code for every model."""
from .cost import count_flops, count_parameters, serialized_size_bytes
from .devices import cpu_fp32_copy, to_device
from .energy import EnergyMeter, find_rapl_zones
from .latency import interleaved_latency, measure_latency
from .memory import PeakMemory, inference_peak_memory, tensor_memory
from .profile import profile_model
from .quality import classification_metrics
from .runner import default_forward, inference

__all__ = [
    "EnergyMeter",
    "interleaved_latency",
    "PeakMemory",
    "classification_metrics",
    "count_flops",
    "count_parameters",
    "cpu_fp32_copy",
    "default_forward",
    "find_rapl_zones",
    "inference",
    "inference_peak_memory",
    "measure_latency",
    "profile_model",
    "serialized_size_bytes",
    "tensor_memory",
    "to_device",
]
