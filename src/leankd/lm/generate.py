"""Token generation for causal LMs (the same code for teacher, students and their int8 copies) and its CPU latency.

`generate` drives a `leankd.models.lm.CausalLM` through its Hugging Face model with a KV cache (one new position per
step) by its own loop over the cache (transformers 5.25 calls it `cache`; `past_key_values` is deprecated), not
`hf.generate`: the loop forces exactly `new_tokens` tokens (no EOS stop, no generation-config warnings about missing
pad/eos ids), samples with one seeded `torch.Generator` whatever the path, and costs less per token. Measured on 1
thread, greedy, 32 new tokens, same tokens out: lm_tiny 0.80 ms/token vs hf.generate's 0.99 at batch 1 (0.90 vs
1.12 at batch 8), lm_small 1.88 vs 2.46.

Any other module obeying the causal-LM contract (`forward(input_ids [B, T]) -> logits [B, T, V]`) is run on the
whole window every step, cropped to its `context` when it has one. Once a sequence would outgrow the context, the
cached path switches to that window recompute too, so both paths make the same greedy choices at any length (tested).

Generation runs under `torch.no_grad()`, not `inference_mode`: on-policy distillation feeds the generated tokens to a
training forward pass, and inference tensors cannot be saved for backward (an embedding saves its indices). The
model is put in eval mode (no dropout while sampling) and given back in the mode it had.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..models.causal import CausalLM

Runnable = Union[nn.Module, Callable[[Tensor], Tensor]]  # token ids [B, T] -> logits [B, T, V]


def _check(prompt_ids: Tensor, new_tokens: int, temperature: float, top_k: Optional[int]) -> None:
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1 \
            or prompt_ids.dtype not in (torch.int64, torch.int32):
        shape = tuple(prompt_ids.shape) if isinstance(prompt_ids, Tensor) else type(prompt_ids).__name__
        raise ModelError(f"generate: prompt_ids must be integer token ids of shape [batch, prompt length >= 1], got "
                         f"{shape}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
        raise ModelError(f"generate: new_tokens must be a whole number >= 0, got {new_tokens!r}")
    if not temperature > 0:
        raise ModelError(f"generate: temperature must be > 0 (use greedy=True for the most likely token), got "
                         f"{temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ModelError(f"generate: top_k must be a positive integer or None, got {top_k!r}")


def _picker(greedy: bool, temperature: float, top_k: Optional[int], seed: int) -> Callable[[Tensor], Tensor]:
    """logits [B, V] -> next tokens [B, 1]: argmax, or a draw from softmax(logits / temperature) restricted to the
    top k, from one generator seeded once (so a seed fixes the whole sequence)."""
    generators: dict[torch.device, torch.Generator] = {}

    def pick(logits: Tensor) -> Tensor:
        logits = logits.float()
        if greedy:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        g = generators.get(logits.device)
        if g is None:
            g = generators[logits.device] = torch.Generator(device=logits.device).manual_seed(seed)
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)

    return pick


def _window_logits(model: Runnable, tokens: Tensor) -> Tensor:
    """Next-token logits from the whole sequence, cropped to the model's context."""
    context = getattr(model, "context", None)
    window = tokens if context is None else tokens[:, -int(context):]
    return model(window)[:, -1]


def _kv_cache(out) -> tuple[str, object]:
    """(the keyword the model takes its KV cache back by, the cache) of a forward's output. transformers 5.25 calls it
    `cache`; earlier 5.x releases (5.17, on the GPU machines we are lent) only `past_key_values`, and would silently
    ignore a `cache=` keyword (it lands in **kwargs), restarting every step at position 0."""
    cache = getattr(out, "cache", None)
    return ("cache", cache) if cache is not None else ("past_key_values", out.past_key_values)


def _run(model: Runnable, prompt: Tensor, new_tokens: int, pick: Callable[[Tensor], Tensor],
         use_cache: bool) -> Tensor:
    tokens = prompt
    if new_tokens == 0:
        return tokens
    cached = use_cache and isinstance(model, CausalLM)
    past, name = None, "cache"
    if cached:
        out = model.hf(input_ids=prompt[:, -model.context:], use_cache=True, logits_to_keep=1)
        name, past = _kv_cache(out)
        logits = model.trim_logits(out.logits[:, -1])
    else:
        logits = _window_logits(model, tokens)
    for step in range(new_tokens):
        nxt = pick(logits)
        tokens = torch.cat([tokens, nxt], dim=1)
        if step == new_tokens - 1:
            break
        if past is not None and tokens.shape[1] <= model.context:
            out = model.hf(input_ids=nxt, use_cache=True, **{name: past})
            logits, past = model.trim_logits(out.logits[:, -1]), _kv_cache(out)[1]
        else:  # no cache, or the context is full: the window slides, so every position moves
            past = None
            logits = _window_logits(model, tokens)
    return tokens


def generate(model: Runnable, prompt_ids: Tensor, new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, seed: int = 0, greedy: bool = False, use_cache: bool = True) -> Tensor:
    """`prompt_ids` [B, P] followed by exactly `new_tokens` generated tokens: [B, P + new_tokens]. Greedy (argmax) or
    sampled at `temperature` from the `top_k` most likely tokens, reproducibly for a `seed`. A `CausalLM` uses its KV
    cache unless `use_cache=False` (the window recompute every other module gets)."""
    _check(prompt_ids, new_tokens, temperature, top_k)
    module = isinstance(model, nn.Module)  # else a runnable (e.g. an ONNX Runtime session) taking CPU token ids
    device = next((p.device for p in model.parameters()), prompt_ids.device) if module else torch.device("cpu")
    was_training = module and model.training
    if module:
        model.eval()
    try:
        with torch.no_grad():
            return _run(model, prompt_ids.long().to(device), new_tokens, _picker(greedy, temperature, top_k, seed),
                        use_cache)
    finally:
        if module:
            model.train(was_training)


def token_latency(models: dict[str, Runnable], prompt_ids: Tensor, batch_sizes: Sequence[int] = (1, 8),
                  new_tokens: int = 32, runs: int = 6, warmup: int = 1, rounds: int = 3,
                  round_s: float = 0.05) -> dict:
    """CPU wall time of greedy generation with the KV cache, for every model in `models` (role -> model), by the
    shared timer (`measure.timing`): interleaved rounds of `blocked_autorange`, the first model rotating, so a
    slower moment of the machine lands on all of them alike. One row per batch size: `median_ms` (the robust figure
    for the whole call: the prompt's pass plus exactly `new_tokens` steps, no early stop) and `ms_per_token` =
    median_ms / new_tokens (the latency of one generated token of every sequence in the batch). Prompts are rows of
    `prompt_ids`, repeated to fill a batch. A role gets `reliable: false` and the reasons in `noise` when its blocks
    spread widely or its rounds disagree; the machine load and thread settings are recorded."""
    from ..measure.devices import cpu_fp32_copy
    from ..measure.timing import machine_state, noise_reasons, summarize_rounds, time_interleaved

    _check(prompt_ids, new_tokens, 1.0, None)
    if new_tokens < 1:
        raise ModelError("token_latency: new_tokens must be >= 1 (it times generated tokens)")
    prepared = {}
    for role, model in models.items():
        if isinstance(model, nn.Module):
            if any(p.device.type != "cpu" for p in model.parameters()):
                model = cpu_fp32_copy(model)
            model.eval()
        prepared[role] = model
    roles = list(prepared)
    prompt_ids = prompt_ids.cpu()
    rows: dict[str, list[dict]] = {role: [] for role in roles}
    reasons: dict[str, list[str]] = {role: [] for role in roles}
    for b in batch_sizes:
        x = prompt_ids[torch.arange(b) % prompt_ids.shape[0]]
        fns = {role: (lambda m=prepared[role]: generate(m, x, new_tokens, greedy=True)) for role in roles}
        samples = time_interleaved(fns, calls=runs, rounds=max(1, min(rounds, runs)), warmup=warmup, round_s=round_s)
        for role in roles:
            s = summarize_rounds(samples[role])
            reasons[role] += noise_reasons(s, f"generate b{b}")
            rows[role].append({"batch_size": b, "new_tokens": new_tokens, "median_ms": round(s["median_ms"], 3),
                               "ms_per_token": round(s["median_ms"] / new_tokens, 4), "spread": s["spread"],
                               "round_spread": s["round_spread"]})
    state = machine_state()
    return {role: {"prompt_tokens": int(prompt_ids.shape[1]), "search": "greedy", "runs": runs,
                   "kv_cache": isinstance(prepared[role], CausalLM), "interleaved": len(roles) > 1,
                   "latency": rows[role], "reliable": not reasons[role], "noise": reasons[role], **state}
            for role in roles}
