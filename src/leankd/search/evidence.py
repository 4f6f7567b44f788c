"""What the search's numbers can and cannot show, so that the report does not claim more than they hold.

- **First rung at chance or within noise.** A first rung too short for the students to learn gives validation
  accuracies near 1/C, or all within binomial noise of each other: promoting "the best" of them is then a draw,
  and the report says so and names the setting that lengthens the rung (`search.rung_fraction`).
- **Selection bias** is a possibility, not a finding: the report gives its evidence (how far the selected runs'
  accuracy lies from fresh seeds', in points and in the fresh seeds' standard deviations) and what would settle it.
- **The teacher's origin** is read from the base run's report: a teacher loaded from `teacher.checkpoint` was not
  trained by the search.
"""
from __future__ import annotations

import math
import statistics
from typing import Optional

Z = 2.0  # "within ~2 standard errors"


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent examples."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def first_rung_signal(values: list[float], num_classes: Optional[int], n: Optional[int]) -> Optional[dict]:
    """Whether the first rung's selection accuracies (one per trial, on `n` examples of `num_classes` classes)
    can tell trials apart. `at_chance`: every trial is within Z binomial standard errors of 1/C (computed at
    p = 1/C). `within_noise`: the best and the worst trial differ by no more than Z standard errors of a
    difference of two accuracies (sqrt(2) x the SE at their mean). None when it cannot be judged (fewer than two
    trials, class or example count unknown)."""
    values = [v for v in values if v is not None]
    if len(values) < 2 or not num_classes or num_classes < 2 or not n:
        return None
    chance = 1.0 / num_classes
    se_chance = binomial_se(chance, n)
    mean = statistics.fmean(values)
    noise = Z * math.sqrt(2) * binomial_se(mean, n)
    spread = max(values) - min(values)
    at_chance = max(values) <= chance + Z * se_chance
    within_noise = spread <= noise
    return {"trials": len(values), "examples": n, "classes": num_classes, "chance": chance,
            "chance_bound": chance + Z * se_chance, "best": max(values), "worst": min(values), "spread": spread,
            "noise": noise, "at_chance": at_chance, "within_noise": within_noise,
            "indistinguishable": at_chance or within_noise}


def first_rung_sentence(signal: Optional[dict], rung_fraction: float, split: str) -> Optional[str]:
    """The report's warning when the first rung cannot tell trials apart (None when it can, or is not judged)."""
    if not signal or not signal["indistinguishable"]:
        return None
    k, n = signal["trials"], signal["examples"]
    span = f"{100 * signal['worst']:.2f}% - {100 * signal['best']:.2f}%"
    if signal["at_chance"]:
        what = (f"the first rung's {k} trials are indistinguishable from chance: their {split} accuracies ({span}) "
                f"are all within {Z:g} binomial standard errors of 1/{signal['classes']} = "
                f"{100 * signal['chance']:.2f}% (at most {100 * signal['chance_bound']:.2f}% on {n} examples)")
    else:
        what = (f"the first rung's {k} trials cannot be told apart by accuracy: their {split} accuracies ({span}) "
                f"differ by {100 * signal['spread']:.2f} points, within the {100 * signal['noise']:.2f} points that "
                f"{Z:g} binomial standard errors of a difference allow on {n} examples")
    longer = min(1.0, round(2 * rung_fraction, 2))
    return (f"Promotion was noise: {what}, so which candidates went on to the full budget was decided by chance "
            f"(and by the cost objectives), not by what they learned. Lengthen the first rung "
            f"(`search.rung_fraction`, now {rung_fraction:g}; e.g. {longer:g})"
            + (" or validate on more examples (`data.val_fraction`)" if split == "validation" else "") + ".")


def selection_bias_sentence(search_time: float, fresh: list[float], seeds_used: list) -> str:
    """How the selected runs' accuracy compares with fresh seeds', with the evidence for or against selection
    bias (the search kept runs that happened to do well) - never stated as a fact."""
    fresh = [a for a in fresh if a is not None]
    mean = statistics.fmean(fresh)
    sd = statistics.stdev(fresh) if len(fresh) > 1 else 0.0
    lo, hi = min(fresh), max(fresh)
    diff = 100 * (search_time - mean)
    text = (f" Its search-time accuracy {100 * search_time:.2f}%"
            + (f" (mean of seeds {', '.join(map(str, seeds_used))})" if len(seeds_used) > 1 else "")
            + f" is {diff:+.2f} points from the fresh seeds' mean ({100 * mean:.2f}% +- {100 * sd:.2f}, range "
              f"{100 * lo:.2f}% - {100 * hi:.2f}%, {len(fresh)} seed{'s' if len(fresh) != 1 else ''})")
    within = lo - 1e-12 <= search_time <= hi + 1e-12 or abs(search_time - mean) <= sd
    if within:
        return text + ": within their spread, so no sign of selection bias."
    size = (f", {abs(diff) / (100 * sd):.1f} times their standard deviation" if sd > 0 else
            "; one fresh seed gives no spread to compare with")
    if search_time > mean:
        return (text + f"{size}: above them. Selection bias is possible (the search kept the runs that happened to "
                "do well, so their accuracy overstates what the setting gives), as is a chance difference between "
                "seeds; more fresh seeds (`search.confirm_seeds`) would tell them apart.")
    return text + f"{size}: below them (the search's own seeds did worse than fresh ones, the opposite of selection bias)."


def teacher_origin(base_report: Optional[dict], checkpoint: Optional[str]) -> str:
    """How the search's teacher came to be, from the base run's report (its teacher entry's `origin`)."""
    origin = ((base_report or {}).get("models", {}).get("teacher") or {}).get("origin") or ""
    if origin.startswith("checkpoint") or (not origin and checkpoint):
        where = origin.split(":", 1)[1].strip() if ":" in origin else checkpoint
        return (f"The teacher was loaded from `teacher.checkpoint` ({where}) in the base run (`base/`), not trained "
                "here; every trial loads those weights")
    return "The teacher is trained once (`base/`) and loaded by every trial"
