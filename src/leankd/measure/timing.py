"""The one timer behind every latency figure leankd reports (model latency, streaming chunks, seq2seq decoding,
training-step cost): torch.utils.benchmark's `Timer.blocked_autorange`, run in interleaved rounds, summarised by
a figure that a noisy machine cannot inflate, and checked for noise.

Why: on a shared 2-core machine one model's median was once 758 ms and its identical twin's 0.83 ms, and the
report printed both as facts ("116.6x faster"). Three things guard against that:

- `blocked_autorange` picks a block size so that timer overhead is negligible, warms up while doing so, and returns
  one sample per block (the mean time of a call within it). Its `num_threads` is set to the caller's torch setting
  (the Timer's default of 1 thread would time something else than what runs).
- Every callable is timed in each of `rounds` rounds, the order rotated per round, so a slow minute of the
  machine lands on all of them alike. The samples of every round are kept.
- The reported figure (`median_ms`) is the median over rounds of each round's fastest block: noise only ever
  adds time, so a round's fastest block is its least disturbed one, and the median over rounds survives one bad
  round. The plain median of all blocks stays beside it as `pooled_median_ms`.

Noise is called out, never silently averaged: a spread (interquartile range over median of all blocks) above
`SPREAD_MAX` (torch.utils.benchmark's own "significant environmental influence" threshold), rounds whose fastest
blocks differ by more than `ROUNDS_MAX` times, or two timed models of identical architecture on the same input
whose figures differ by more than `TWIN_MAX` times make the entry `"reliable": False` with the reasons in
`"noise"`. The machine load (`os.getloadavg`) and the thread settings are recorded with every timing table.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.benchmark import Timer

SPREAD_MAX = 0.25  # IQR / median of the blocks; = torch.utils.benchmark.utils.common._IQR_GROSS_WARN_THRESHOLD
ROUNDS_MAX = 1.5  # slowest round's fastest block / fastest round's fastest block
TWIN_MAX = 1.5  # identical architecture, same input: figures may differ by at most this factor
MAX_ROUND_S = 5.0  # one callable's share of one round never exceeds this, whatever `calls` asks for
BLOCK_S = 0.0005  # short blocks (see `time_interleaved`): 0.5 to 5 ms each
LONG_CALL_S = 0.01  # from here on blocked_autorange times single calls by itself
SIZING_CALLS = 2
METHOD = "torch.utils.benchmark blocked_autorange, interleaved rounds; median_ms = median of per-round fastest blocks"


@dataclass
class Samples:
    """One callable's timings: `rounds[r]` = block means (ms per call) of round r; `calls` = timed calls in all."""

    rounds: list[list[float]] = field(default_factory=list)
    calls: int = 0
    calls_per_block: list[int] = field(default_factory=list)


def machine_state() -> dict:
    """What a timing table must be read with: load average (1, 5, 15 min), CPU count and torch's thread pools."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        load = None
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(), "load_avg": load}


def time_interleaved(fns: dict[str, Callable[[], Any]], *, calls: int = 30, rounds: int = 3, warmup: int = 2,
                     round_s: float = 0.1) -> dict[str, Samples]:
    """Time every zero-argument callable in `fns` with `blocked_autorange`, interleaved over `rounds` rounds (order
    rotated each round). Each callable gets `warmup` untimed calls and `SIZING_CALLS` sizing calls first, then per
    round at least `round_s` seconds of blocks and (as far as `MAX_ROUND_S` allows) at least `calls / rounds` timed
    calls.

    Blocks are kept short. Left alone, `blocked_autorange` grows a block until the timer's overhead is 1e-4 of it
    (10 ms and more); on a loaded machine (load average 17 on 2 cores, seen) no such block runs without being
    descheduled, so even the fastest block of a round is inflated, and identical models came out 10x apart. So a
    callable faster than `LONG_CALL_S` is timed by repeated `blocked_autorange(min_run_time=BLOCK_S)` calls (each
    sizes its block anew — a few untimed calls that double as warm-up — and returns one block of 0.5 to 5 ms),
    and a slower one by one `blocked_autorange` per round, whose blocks are then single calls."""
    if calls < 1 or rounds < 1 or warmup < 0 or round_s <= 0:
        raise ValueError(f"need calls >= 1, rounds >= 1, warmup >= 0, round_s > 0; got {calls}, {rounds}, "
                         f"{warmup}, {round_s}")
    names = list(fns)
    threads = torch.get_num_threads()
    timers = {n: Timer(stmt="fn()", globals={"fn": fns[n]}, num_threads=threads) for n in names}
    per_call: dict[str, float] = {}
    for n in names:
        for _ in range(warmup):
            fns[n]()
        sizes = []
        for _ in range(SIZING_CALLS):  # the least disturbed of a few calls: a rough cost, to size the rounds
            start = time.perf_counter()
            fns[n]()
            sizes.append(time.perf_counter() - start)
        per_call[n] = min(sizes)
    want = math.ceil(calls / rounds)
    out = {n: Samples() for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            budget = min(MAX_ROUND_S, max(round_s, 1.1 * want * per_call[n]))
            times, done, start = [], 0, time.perf_counter()
            while not times or (time.perf_counter() - start < budget or done < want) \
                    and time.perf_counter() - start < MAX_ROUND_S:
                m = timers[n].blocked_autorange(min_run_time=budget if per_call[n] >= LONG_CALL_S else BLOCK_S)
                times += [t * 1e3 for t in m.times]
                done += m.number_per_run * len(m.times)
                out[n].calls_per_block.append(m.number_per_run)
            out[n].rounds.append(times)
            out[n].calls += done
    return out


def summarize_rounds(samples: Samples) -> dict:
    """`{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "pooled_median_ms", "spread", "round_spread",
    "round_ms"}`. `median_ms` is the robust figure (median of per-round fastest blocks); p90/mean/min and
    `pooled_median_ms` are over all blocks; `runs` counts timed calls; `spread` = IQR / median of all blocks;
    `round_spread` = slowest / fastest of the per-round fastest blocks."""
    pooled = [t for r in samples.rounds for t in r]
    if not pooled:
        raise ValueError("no timings to summarize")
    minima = [min(r) for r in samples.rounds if r]
    pooled_median = statistics.median(pooled)
    if len(pooled) >= 4:
        q1, _, q3 = statistics.quantiles(pooled, n=4, method="inclusive")
        spread = (q3 - q1) / pooled_median if pooled_median > 0 else None
    else:
        spread = None
    p90 = pooled[0] if len(pooled) == 1 else statistics.quantiles(pooled, n=10, method="inclusive")[-1]
    robust = statistics.median(minima)
    # a fast round yields more blocks than a slow one, so the pooled p90 can fall below the robust figure when the
    # rounds disagree (then flagged anyway); min <= median <= p90 is kept
    p90 = max(p90, robust)
    return {
        "median_ms": robust,
        "p90_ms": p90,
        "mean_ms": statistics.fmean(pooled),
        "min_ms": min(pooled),
        "runs": samples.calls,
        "pooled_median_ms": pooled_median,
        "spread": None if spread is None else round(spread, 4),
        "round_spread": round(max(minima) / min(minima), 4) if len(minima) > 1 and min(minima) > 0 else None,
        "round_ms": [[round(t, 5) for t in r] for r in samples.rounds],
    }


def noise_reasons(stats: dict, label: str) -> list[str]:
    """Why a summary (from `summarize_rounds`) cannot be trusted, one sentence per reason; [] when it can."""
    reasons = []
    if stats.get("spread") is not None and stats["spread"] > SPREAD_MAX:
        reasons.append(f"{label}: blocks spread widely (interquartile range {100 * stats['spread']:.0f}% of the "
                       f"median, limit {100 * SPREAD_MAX:.0f}%)")
    if stats.get("round_spread") is not None and stats["round_spread"] > ROUNDS_MAX:
        minima = [min(r) for r in stats.get("round_ms") or [] if r]
        shown = f" ({min(minima):.3g} to {max(minima):.3g} ms)" if minima else ""
        reasons.append(f"{label}: rounds disagree: their fastest blocks differ {stats['round_spread']:.2f}x"
                       f"{shown}, limit {ROUNDS_MAX}x")
    return reasons


def architecture_signature(model: Any) -> Optional[tuple]:
    """Module types and parameter/buffer shapes and dtypes: two models with equal signatures do the same work on the
    same input, so their latencies must agree. None for something that is not an `nn.Module`, and for a module
    without parameters or buffers: an opaque runtime (an ONNX Runtime session in `OnnxModel`) whose work cannot be
    read from the module — an fp32 and an int8 ONNX graph would otherwise look like twins."""
    if not isinstance(model, nn.Module):
        return None
    params = tuple((n, tuple(p.shape), str(p.dtype), p.device.type) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers())
    if not params and not buffers:
        return None
    return (tuple((name, type(m).__module__, type(m).__qualname__) for name, m in model.named_modules()),
            params, buffers)


def twin_reasons(figures: dict[str, Optional[float]], signatures: dict[str, Optional[tuple]],
                 label: str) -> dict[str, list[str]]:
    """For every model with identical twins (equal, non-None signature) whose figures differ from its own by more
    than `TWIN_MAX` times: one reason naming them."""
    out: dict[str, list[str]] = {n: [] for n in figures}
    names = [n for n in figures if signatures.get(n) is not None and figures[n]]
    for me in names:
        off = [o for o in names if o != me and signatures[o] == signatures[me]
               and max(figures[me], figures[o]) / min(figures[me], figures[o]) > TWIN_MAX]
        if off:
            shown = ", ".join(f"{o} {figures[o]:.3g} ms" for o in off)
            out[me].append(f"{label}: timed {figures[me]:.3g} ms, but identical models on the same input were not "
                           f"({shown}; limit {TWIN_MAX}x apart)")
    return out
