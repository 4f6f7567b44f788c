"""Classification quality from logits. Everything is computed in fp32 on CPU so a bf16 teacher on a GPU and an
fp32 student on a CPU are scored by exactly the same arithmetic."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError


def classification_metrics(logits: Tensor, targets: Tensor, class_names: list[str] | None = None) -> dict:
    """Accuracy, macro-F1, per-class accuracy and mean cross-entropy of `logits` [N, C] against `targets` [N].

    Returns `{"accuracy": float, "macro_f1": float, "per_class_accuracy": {name: float}, "loss": float,
    "num_samples": int, "top_prediction_share": float, "majority_class_share": float}` (the largest share of
    predictions, and of targets, that one class takes); accuracies are fractions in 0..1. Macro-F1 follows
    torchmetrics: a class that appears in neither targets nor predictions is left out of the average. A class with
    no targets gets per-class accuracy 0.0 (torchmetrics' convention), so read it together with the class counts.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must be [N] with N={logits.shape[0]}, got shape {tuple(targets.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        raise DataError("cannot compute metrics on zero samples: the split is empty (raise data.limit_test or the "
                        "held-out fraction, or add test data)")
    if num_classes < 2:
        raise DataError(f"classification metrics need at least 2 classes, got {num_classes}: give the data a "
                        "second class")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} logit columns")

    logits = logits.detach().to(device="cpu", dtype=torch.float32)
    targets = targets.detach().to(device="cpu", dtype=torch.long)
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(f"targets must lie in 0..{num_classes - 1}, got {int(targets.min())}..{int(targets.max())}")

    preds = logits.argmax(dim=1)
    # imported here, not at the top: torchmetrics pulls in transformers, matplotlib and torchvision.models, seconds
    # that every `import leankd` (and each torchrun worker) would pay before any work
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    per_class = multiclass_accuracy(preds, targets, num_classes=num_classes, average=None)
    macro_f1 = multiclass_f1_score(preds, targets, num_classes=num_classes, average="macro")
    return {
        "accuracy": float((preds == targets).float().mean()),
        "macro_f1": float(macro_f1),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class.tolist())},
        "loss": float(F.cross_entropy(logits, targets)),
        "num_samples": int(n),
        # what tells a collapsed model (everything predicted as one class) from one that learned little
        "top_prediction_share": float(torch.bincount(preds, minlength=num_classes).max()) / n,
        "majority_class_share": float(torch.bincount(targets, minlength=num_classes).max()) / n,
    }


def text_metrics(logits: Tensor, targets: Tensor, class_names: list[str] | None = None) -> dict:
    """`classification_metrics` plus what GLUE reports: Matthews correlation (CoLA; robust to class imbalance) and,
    for two classes, the F1 of class 1 (MRPC, QQP)."""
    out = classification_metrics(logits, targets, class_names)
    preds = logits.detach().float().cpu().argmax(dim=1)
    targets = targets.detach().cpu().long()
    from torchmetrics.functional.classification import binary_f1_score, multiclass_matthews_corrcoef

    out["mcc"] = float(multiclass_matthews_corrcoef(preds, targets, num_classes=logits.shape[1]))
    if logits.shape[1] == 2:
        out["f1_positive"] = float(binary_f1_score(preds, targets))
    return out


def regression_metrics(outputs: Tensor, targets: Tensor) -> dict:
    """Pearson and Spearman correlation (what GLUE reports for STS-B) and the mean squared error of `outputs`
    [N, 1] (or [N]) against float `targets` [N]; `loss` is the MSE, so per-epoch curves read the same way."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    preds = outputs.detach().float().cpu().reshape(-1)
    targets = targets.detach().float().cpu().reshape(-1)
    if preds.shape != targets.shape:
        raise ValueError(f"regression needs one output per example: got {tuple(outputs.shape)} for "
                         f"{targets.shape[0]} targets")
    if len(preds) < 2:
        raise ValueError("correlations need at least 2 examples")
    mse = float(F.mse_loss(preds, targets))
    return {"pearson": float(pearson_corrcoef(preds, targets)), "spearman": float(spearman_corrcoef(preds, targets)),
            "mse": mse, "loss": mse, "num_samples": int(len(preds))}
