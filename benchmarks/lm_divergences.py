"""Memory and time of the token-level divergences (src/leankd/kd/methods/divergences.py), chunked against the plain
autograd formulation (fp32 log_softmax of the whole [N, V] logits), forward + backward, bf16 logits.

Each configuration runs in its own process so its peak is its own: on CPU the peak resident set size above the
process's size once the inputs exist (ru_maxrss), on CUDA torch.cuda.max_memory_allocated above the inputs. Time:
torch.utils.benchmark (median of blocked runs).

    python benchmarks/lm_divergences.py                       # N 2048 tokens, V 32000, chunks 256 and 1024
    python benchmarks/lm_divergences.py --tokens 8192 --vocab 50257 --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(args) -> dict:
    import torch
    import torch.nn.functional as F
    import torch.utils.benchmark as tb

    from leankd.kd.losses import LossInputs
    from leankd.kd.methods import divergences as D

    torch.manual_seed(0)
    dev = torch.device(args.device)
    cls = {"forward_kl": D.ForwardKL, "jsd": D.GeneralizedJSD, "tvd": D.TotalVariation}[args.loss]
    s = (torch.randn(args.tokens, args.vocab, device=dev) * 2).to(torch.bfloat16).requires_grad_()
    t = (torch.randn(args.tokens, args.vocab, device=dev) * 2).to(torch.bfloat16)
    y = torch.zeros(args.tokens, dtype=torch.long, device=dev)
    loss = cls(chunk_rows=args.chunk or args.tokens)

    def step():
        s.grad = None
        if args.chunk:
            value = loss(LossInputs(student=s, targets=y, teacher=t))
        else:  # plain autograd: the whole [N, V] in fp32, every intermediate kept for backward
            value = loss.rows_from(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1)).mean()
        value.backward()
        return value

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        value = step()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = step()
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    timer = tb.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    seconds = timer.blocked_autorange(min_run_time=args.min_run_time).median
    return {"loss": args.loss, "tokens": args.tokens, "vocab": args.vocab, "chunk_rows": args.chunk or None,
            "device": args.device, "peak_mb_above_inputs": round(peak_mb, 1), "s_per_step": round(seconds, 4),
            "value": float(value)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--chunks", default="256,1024", help="chunk_rows values to compare with the plain formulation")
    p.add_argument("--losses", default="forward_kl,jsd")
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for loss in args.losses.split(","):
        for chunk in [0] + [int(c) for c in args.chunks.split(",")]:
            cmd = [sys.executable, __file__, "--one", "--loss", loss, "--chunk", str(chunk), "--tokens",
                   str(args.tokens), "--vocab", str(args.vocab), "--device", args.device,
                   "--min-run-time", str(args.min_run_time)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            r = rows[-1]
            chunk = str(r["chunk_rows"] or "plain")
            print(f"{loss:12s} chunk_rows {chunk:>6s}  peak +{r['peak_mb_above_inputs']:8.1f} MB  "
                  f"{r['s_per_step'] * 1000:8.1f} ms/step  value {r['value']:.6f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
