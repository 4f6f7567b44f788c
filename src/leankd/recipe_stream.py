"""`data.stream`: settings of a streamed recipe source (`data.source: webdataset:PATTERN` or `hf-stream:PATH`).

Why a section of its own and not more `data.*` keys: a stream has no index, so the settings that pick examples by
index (`val_fraction`, a stratified `limit_*`, `in_memory`) cannot apply; its evaluation splits are sources of their
own, its order comes from a shuffle buffer, and an endless or very large stream needs its epoch length given. The
section is left out of the stage fingerprint while unset (`stages.ADDED_DATA_DEFAULTS`), so recipes that do not
stream keep their run directories.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from .core.params import Strict

STREAM_PREFIXES = ("webdataset:", "hf-stream:")


def stream_kind(source: str) -> Optional[str]:
    """'webdataset' or 'hf-stream' when `data.source` names a stream, else None."""
    for prefix in STREAM_PREFIXES:
        if str(source).startswith(prefix):
            return prefix[:-1]
    return None


class StreamConfig(Strict):
    test: Optional[str] = Field(None, description="the split the report is measured on: shard files like the "
                                "source's (webdataset:), or a split name of the same dataset (hf-stream:)")
    val: Optional[str] = Field(None, description="per-epoch validation split, like test (default: none; "
                               "val_fraction does not apply to a stream)")
    split: str = Field("train", description="hf-stream: the split the students train on")
    image_column: str = Field("image", description="hf-stream: the column holding encoded images (bytes or a path)")
    label_column: str = Field("label", description="hf-stream: the column holding class labels")
    shuffle: int = Field(1000, ge=0, description="examples in the shuffle buffer, reshuffled each epoch from the seed "
                         "(webdataset: the shard order too); 0 keeps the stream's order")
    steps_per_epoch: Optional[int] = Field(None, gt=0, description="batches per epoch, for an endless or very large "
                                           "stream (default: one pass, counted by a label-only pass before training)")
    num_classes: Optional[int] = Field(None, gt=1, description="default: from the label pass (or the dataset's "
                                       "ClassLabel feature); required with steps_per_epoch")


__all__ = ["StreamConfig", "STREAM_PREFIXES", "stream_kind"]
