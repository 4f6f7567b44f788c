"""Public alias: `leankd.losses.KD(temperature=4) + 0.1 * leankd.losses.CE() + leankd.losses.Hint([...])`.
The code is in kd/losses.py (logit losses), kd/features.py (layer losses) and kd/methods/ (DKD, DIST, logit
standardization, the token-level divergences for language models, and every method's recipe name); `LOSSES` is the
registry of loss kinds recipes can name."""
from .kd.features import AttentionMapLoss, AttentionTransfer, HiddenStateMSE, Hint, SimilarityPreserving
from .kd.losses import CE, KD, MSE, Loss, LossInputs, SoftCE, WeightedSum, mix
from .kd.methods.dist import DIST
from .kd.methods.divergences import ForwardKL, GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL, TotalVariation
from .kd.methods.dkd import DKD
from .kd.methods.logit_standardization import standardize
from .kd.registry import FEATURE_LOSSES, LOGIT_LOSSES as LOSSES, TRANSFORMS

__all__ = ["CE", "KD", "MSE", "SoftCE", "DKD", "DIST", "standardize", "Loss", "LossInputs", "WeightedSum", "mix",
           "LOSSES", "FEATURE_LOSSES", "TRANSFORMS",
           "ForwardKL", "ReverseKL", "GeneralizedJSD", "SkewKL", "SkewReverseKL", "TotalVariation",
           "Hint", "AttentionTransfer", "SimilarityPreserving", "HiddenStateMSE", "AttentionMapLoss"]
