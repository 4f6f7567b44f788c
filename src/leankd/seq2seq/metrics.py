"""Sequence metrics: token error rate (PER for G2P), sequence error rate (WER for G2P), BLEU / chrF.

Several references per source (CMUdict's alternative pronunciations) are scored the way G2P papers do: a
hypothesis is right if it equals any reference, and its token errors count against the closest one.
"""
from __future__ import annotations

from typing import Optional, Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def closest_reference(hypothesis: Sequence, references: Sequence[Sequence]) -> tuple[int, int]:
    """(index, distance) of the reference nearest to `hypothesis`; the first one on ties."""
    best = min(range(len(references)), key=lambda i: (edit_distance(hypothesis, references[i]), i))
    return best, edit_distance(hypothesis, references[best])


def sequence_metrics(hypotheses: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> dict:
    """`ter`: token edits / reference tokens (closest reference each); `ser`: share of sources whose hypothesis
    matches none of its references. Both are fractions (0.25 = 25%)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} sources")
    edits = ref_tokens = wrong = 0
    for hyp, refs in zip(hypotheses, references):
        i, dist = closest_reference(hyp, refs)
        edits += dist
        ref_tokens += len(refs[i])
        wrong += dist > 0
    n = max(len(hypotheses), 1)
    return {"ter": edits / max(ref_tokens, 1), "ser": wrong / n, "num_samples": len(hypotheses)}


def text_scores(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
                ) -> Optional[dict]:
    """BLEU and chrF (sacrebleu, on the space-joined tokens); None when sacrebleu is not installed."""
    try:
        import sacrebleu
    except ImportError:
        return None
    hyps = [" ".join(h) for h in hypotheses]
    width = max(len(r) for r in references)
    streams = [[" ".join(r[i]) if i < len(r) else "" for r in references] for i in range(width)]
    return {"bleu": sacrebleu.corpus_bleu(hyps, streams).score, "chrf": sacrebleu.corpus_chrf(hyps, streams).score}
