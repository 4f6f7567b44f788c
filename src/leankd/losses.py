"""Public alias: `leankd.losses.KD(temperature=4) + 0.1 * leankd.losses.CE()`. The code is in kd/losses.py."""
from .kd.losses import CE, KD, LOSSES, MSE, Loss, LossInputs, SoftCE, WeightedSum, mix

__all__ = ["CE", "KD", "MSE", "SoftCE", "Loss", "LossInputs", "WeightedSum", "mix", "LOSSES"]
