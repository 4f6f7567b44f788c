"""Public alias: `leankd.losses.KD(temperature=4) + 0.1 * leankd.losses.CE() + leankd.losses.Hint([...])`.
The code is in kd/losses.py (logit losses) and kd/features.py (layer losses)."""
from .kd.features import AttentionMapLoss, AttentionTransfer, HiddenStateMSE, Hint, SimilarityPreserving
from .kd.losses import CE, KD, LOSSES, MSE, Loss, LossInputs, SoftCE, WeightedSum, mix

__all__ = ["CE", "KD", "MSE", "SoftCE", "Loss", "LossInputs", "WeightedSum", "mix", "LOSSES",
           "Hint", "AttentionTransfer", "SimilarityPreserving", "HiddenStateMSE", "AttentionMapLoss"]
