"""Pareto dominance over measured points: the front, non-dominated sorting and crowding distance (NSGA-II's
tie-break), used both for promoting first-rung candidates and for the report's front. Pure functions over lists
of numbers, so they are easy to test against hand-made points."""
from __future__ import annotations

from typing import Optional, Sequence

Point = Sequence[Optional[float]]


def _oriented(point: Point, directions: Sequence[str]) -> Optional[list[float]]:
    """Every objective turned into 'lower is better'; None when a value is missing (never on a front)."""
    if any(v is None for v in point):
        return None
    return [-float(v) if d == "maximize" else float(v) for v, d in zip(point, directions)]


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """a is at least as good as b in every objective and strictly better in one."""
    oa, ob = _oriented(a, directions), _oriented(b, directions)
    if oa is None or ob is None:
        return oa is not None and ob is None
    return all(x <= y for x, y in zip(oa, ob)) and any(x < y for x, y in zip(oa, ob))


def pareto_front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (points with a missing value are never on it; duplicates all are)."""
    valid = [i for i, p in enumerate(points) if _oriented(p, directions) is not None]
    return [i for i in valid if not any(dominates(points[j], points[i], directions) for j in valid if j != i)]


def non_dominated_sort(points: Sequence[Point], directions: Sequence[str]) -> list[list[int]]:
    """Fronts in order: the Pareto front, then the front of what is left, and so on (missing values last)."""
    left = list(range(len(points)))
    fronts = []
    while left:
        sub = [points[i] for i in left]
        front = [left[i] for i in pareto_front(sub, directions)] or list(left)
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


def crowding_distance(points: Sequence[Point], directions: Sequence[str]) -> list[float]:
    """NSGA-II's crowding distance of each point within its set: larger = more isolated (extremes: infinite)."""
    n = len(points)
    dist = [0.0] * n
    if n <= 2:
        return [float("inf")] * n
    for k in range(len(directions)):
        order = sorted(range(n), key=lambda i: points[i][k])
        lo, hi = points[order[0]][k], points[order[-1]][k]
        dist[order[0]] = dist[order[-1]] = float("inf")
        if hi == lo:
            continue
        for j in range(1, n - 1):
            dist[order[j]] += (points[order[j + 1]][k] - points[order[j - 1]][k]) / (hi - lo)
    return dist


def select_for_promotion(points: Sequence[Point], directions: Sequence[str], limit: int) -> list[int]:
    """Successive halving over a multi-objective rung: the non-dominated candidates, at most `limit` of them (the
    most isolated first - the front's ends always - so the kept set still spans the front). A smaller front is
    not filled up with dominated candidates: each of those lost, at the cheap budget, to one that goes on."""
    front = pareto_front(points, directions)
    if len(front) <= limit:
        return front
    crowd = crowding_distance([points[i] for i in front], directions)
    ranked = sorted(range(len(front)), key=lambda j: -crowd[j])
    return sorted(front[j] for j in ranked[:limit])
