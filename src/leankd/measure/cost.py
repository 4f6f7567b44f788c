"""Static and per-call cost of a model: parameter count, the size of the file a user would ship, and FLOPs.
These are counts, not timings, so they are identical on every machine."""
from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .runner import Forward, inference, resolve_forward


def count_parameters(model: nn.Module) -> dict:
    """`{"params": int, "trainable_params": int}`; parameters shared between modules are counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already de-duplicates tied parameters
    return {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }


def serialized_size_bytes(model: nn.Module) -> int:
    """Byte length of `safetensors.torch.save(model.state_dict())`: the size of the weights file a user ships.

    Includes buffers (e.g. BatchNorm running stats) because they ship too. safetensors refuses tensors that share
    storage, so a tensor whose storage was already seen (tied weights) is cloned; tied weights therefore count
    once per state_dict key, as they would in a plain state_dict file.
    """
    seen: set[tuple[str, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # a fresh CPU copy never shares storage
        else:
            key = (t.device.type, t.untyped_storage().data_ptr())
            if key in seen or not t.is_contiguous():
                t = t.contiguous().clone()
            seen.add(key)
        tensors[name] = t
    return len(safetensors_save(tensors))


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """One LSTM layer and direction in oneDNN's fused kernel (what nn.LSTM runs on x86 CPUs): for every time step
    and sequence, the input and recurrent projections of all gates, [G*H, I] and [G*H, H] matrix-vector products."""
    steps_times_batch = input_shape[0] * input_shape[1]
    return 2 * steps_times_batch * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


def _custom_formulas() -> dict:
    """FLOP formulas FlopCounterMode lacks: without this an LSTM on the CPU counts as 0 FLOPs (GRUs decompose
    into counted matmuls; LSTMs run as one fused oneDNN op)."""
    rnn_layer = getattr(torch.ops.aten, "mkldnn_rnn_layer", None)
    return {rnn_layer: _mkldnn_rnn_layer_flops} if rnn_layer is not None else {}


def count_flops(model: nn.Module, inputs: Any, forward: Forward | None = None) -> dict:
    """`{"flops": int, "macs": int}` for one forward pass on `inputs` (the whole batch, not per sample).

    Counted by `torch.utils.flop_counter.FlopCounterMode`, which covers matmul/linear, convolution and
    attention (scaled-dot-product) work, plus our formula for CPU LSTM layers; bias adds, normalisation,
    activations, gate nonlinearities and pooling are not counted. `macs = flops // 2` (one multiply-accumulate =
    2 FLOPs).
    """
    forward = resolve_forward(forward)
    counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
    with inference(model), counter:
        forward(model, inputs)
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}
