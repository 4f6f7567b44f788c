"""Layer (feature) losses by recipe name: FitNets hints, attention transfer, similarity preserving, TinyBERT's
hidden-state and attention-map MSE, MiniLM's attention and value relations. The classes are in kd/features.py."""
from __future__ import annotations

from ..features import AttentionMapLoss, AttentionTransfer, HiddenStateMSE, Hint, MiniLMAttention, SimilarityPreserving
from ..registry import FeatureKind, register_feature

register_feature(FeatureKind("hint", Hint, summary="FitNets: trained adapters regress the teacher's features"))
register_feature(FeatureKind("at", AttentionTransfer, summary="attention transfer (p = 2)"))
register_feature(FeatureKind("sp", SimilarityPreserving, summary="similarity-preserving: batch similarity matrices"))
register_feature(FeatureKind("hidden_mse", HiddenStateMSE, summary="TinyBERT: hidden states, linear adapter"))
register_feature(FeatureKind("attention_mse", AttentionMapLoss, auto_pairs=False,
                             summary="TinyBERT: attention probabilities (reads self-attention modules)"))
register_feature(FeatureKind("minilm", MiniLMAttention, auto_pairs=False,
                             summary="MiniLM: attention and value relations (reads self-attention modules)"))
