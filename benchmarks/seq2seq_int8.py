"""When does dynamic int8 make a recurrent encoder-decoder decode faster on this CPU? fp32 against leankd's
`int8-dynamic` (every LSTM and Linear quantized) for several model shapes, greedy and beam search, at several batch
sizes. Writes `<out>/seq2seq_int8.json` and prints it.

    python benchmarks/seq2seq_int8.py                         # G2P shapes: the recipe's student, the largest
                                                              # student >= 10x smaller than the teacher, the teacher
    python benchmarks/seq2seq_int8.py --batch 64 256 --rounds 5

Decoding speed does not depend on what the weights learned, so the models are untrained (seeded) and the end symbol
is never chosen: every decode runs exactly `--steps` decoder steps, the work a trained model does on a word of that
many phonemes. fp32 and int8 are timed in alternation (`--rounds` rounds, median of `--reps` decodes each; which
goes first swaps every round), so machine drift hits both alike; the JSON keeps every round's figure, because on a
shared 2-core machine rounds scatter by 10-30 % (batch 1: more). The JSON also lists what was quantized: every LSTM
and Linear (the script stops if one stays float; the embeddings do, as lookups). Shapes are
`name:hidden:embed:enc_layers:dec_layers`; vocabularies are CMUdict's (30 letters, 73 phoneme symbols).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from leankd.compress.quantize import quantize_dynamic_int8
from leankd.io import write_text_atomic
from leankd.models.seq2seq import EOS, Seq2SeqRNN
from leankd.seq2seq.decode import beam_search, greedy

SRC_VOCAB, TGT_VOCAB = 30, 73
DEFAULT_SHAPES = ["student:96:32:1:1", "student_h120:120:32:1:1", "teacher:256:128:2:2"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_shape(text: str) -> tuple[str, dict]:
    parts = text.split(":")
    if len(parts) != 5 or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--shapes: {text!r} is not name:hidden:embed:enc_layers:dec_layers (e.g. student:96:32:1:1)")
    name, hidden, embed, enc, dec = parts[0], *map(int, parts[1:])
    return name, dict(hidden=hidden, embed_dim=embed, enc_layers=enc, dec_layers=dec)


def build(shape: dict, seed: int) -> Seq2SeqRNN:
    torch.manual_seed(seed)
    model = Seq2SeqRNN(TGT_VOCAB, SRC_VOCAB, cell="lstm", attention="general", **shape).eval()
    with torch.no_grad():
        model.out.bias[EOS] = -1e4  # never ends early: every decode takes exactly max_len steps
    return model


def median_ms_per_sequence(model, src, src_len, decode, reps: int) -> float:
    with torch.inference_mode():
        decode(model, src, src_len)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            decode(model, src, src_len)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3 / src.shape[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    p.add_argument("--batch", nargs="+", type=positive_int, default=[1, 64])
    p.add_argument("--beam", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=8,
                   help="decoder steps per sequence (CMUdict words: ~7 phonemes)")
    p.add_argument("--src-len", type=positive_int, default=8, help="letters per source sequence")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--reps", type=positive_int, default=None, help="decodes per round (default: ~2,000 sequences)")
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("runs/bench_seq2seq_int8"))
    args = p.parse_args(argv)
    if args.beam > TGT_VOCAB - 3:
        p.error(f"--beam {args.beam}: at most {TGT_VOCAB - 3} (the target symbols a hypothesis may continue with)")
    args.shapes = [parse_shape(spec) for spec in args.shapes]  # a typo fails now, not after minutes of timing
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (the smoke test) keeps its own setting


def run(args: argparse.Namespace) -> dict:
    decoders = {"greedy": lambda m, s, n: greedy(m, s, n, args.steps),
                f"beam{args.beam}": lambda m, s, n: beam_search(m, s, n, args.beam, args.steps)}
    gen = torch.Generator().manual_seed(0)
    results = []
    for name, shape in args.shapes:
        fp32 = build(shape, seed=0)
        quantized = quantize_dynamic_int8(fp32)
        left_float = {path: why for path, why in quantized.skipped.items() if not path.endswith("_embed")}
        if left_float:  # embeddings are lookups, float by design; an LSTM or Linear left float would skew the race
            raise SystemExit(f"{name}: left in float by int8-dynamic: {left_float}")
        int8 = quantized.model.eval()
        entry = {"name": name, **shape, "params": sum(p.numel() for p in fp32.parameters()),
                 "int8_modules": quantized.quantized, "timings": []}
        for batch in args.batch:
            src = torch.randint(3, SRC_VOCAB, (batch, args.src_len), generator=gen)
            src_len = torch.full((batch,), args.src_len)
            reps = args.reps or max(5, 2000 // batch)
            for mode, decode in decoders.items():
                rounds = {"fp32": [], "int8": []}
                for i in range(args.rounds):
                    order = (("fp32", fp32), ("int8", int8))
                    for kind, model in order if i % 2 == 0 else order[::-1]:
                        rounds[kind].append(round(median_ms_per_sequence(model, src, src_len, decode, reps), 4))
                f, q = statistics.median(rounds["fp32"]), statistics.median(rounds["int8"])
                entry["timings"].append({"batch": batch, "decode": mode, "fp32_ms_per_seq": f, "int8_ms_per_seq": q,
                                         "int8_speedup": round(f / q, 3), "rounds": rounds})
                print(f"{name:>14} ({entry['params']:,} params) batch {batch:>4} {mode:>6}: fp32 {f:.3f}  int8 {q:.3f} "
                      f"ms/seq  -> int8 {f / q:.2f}x", file=sys.stderr, flush=True)
        results.append(entry)
    report = {"benchmark": "seq2seq_int8", "torch": torch.__version__, "threads": args.threads,
              "quantized_engine": torch.backends.quantized.engine, "steps": args.steps, "src_len": args.src_len,
              "models": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "seq2seq_int8.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
