"""`leankd layers` tables: the teacher's layers ranked by importance, and the proposed student->teacher matching.

Takes a `kd.layers.LayerAnalysis` (or its `as_dict()`), so the same view works on a live analysis and on a saved
`layers.json`."""
from __future__ import annotations

from typing import Any

from rich.table import Table

TOP_MATCHES = 3  # teacher layers shown per student layer


def _as_dict(analysis: Any) -> dict:
    return analysis if isinstance(analysis, dict) else analysis.as_dict()


def render_layers(analysis: Any) -> list[Table]:
    a = _as_dict(analysis)
    students, teachers, cka = a["student_names"], a["teacher_names"], a["cka"]
    probe, lcka = a["teacher_probe"], a["teacher_logit_cka"]
    importance = probe if a.get("importance", "probe") == "probe" else lcka

    ranked = Table(title="Teacher layers by importance", title_justify="left")
    for col in ("rank", "teacher layer", "probe acc", "CKA to logits", "most similar student layer"):
        ranked.add_column(col, justify="right" if col in ("rank", "probe acc", "CKA to logits") else "left")
    order = sorted(range(len(teachers)), key=lambda j: -importance[j])
    for rank, j in enumerate(order, 1):
        best = max(range(len(students)), key=lambda i: cka[i][j]) if students else None
        ranked.add_row(str(rank), teachers[j], f"{100 * probe[j]:.1f}%", f"{lcka[j]:.3f}",
                       f"{students[best]} ({cka[best][j]:.3f})" if best is not None else "-")

    similar = Table(title=f"Most similar teacher layers per student layer (linear CKA, top {TOP_MATCHES})",
                    title_justify="left")
    similar.add_column("student layer")
    similar.add_column("teacher layers")
    for i, name in enumerate(students):
        top = sorted(range(len(teachers)), key=lambda j: -cka[i][j])[:TOP_MATCHES]
        similar.add_row(name, ", ".join(f"{teachers[j]} {cka[i][j]:.3f}" for j in top))

    matching = Table(title="Proposed pairs (monotonic matching; score = CKA x teacher importance)",
                     title_justify="left")
    for col in ("student layer", "teacher layer", "CKA", "score"):
        matching.add_column(col, justify="right" if col in ("CKA", "score") else "left")
    for m in a["matching"]:
        matching.add_row(m["student"], m["teacher"], f"{m['cka']:.3f}", f"{m['score']:.3f}")
    return [ranked, similar, matching]
