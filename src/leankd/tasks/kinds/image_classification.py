"""image_classification: an ImageFolder, a tar of one, torchvision:NAME:ROOT, the bundled demo images, or a stream
(webdataset: tar shards, hf-stream: a local Hugging Face dataset; data.stream)."""
from __future__ import annotations

from ...core.taskkind import TaskKind, register_kind
from ...recipe_stream import stream_kind


def build(cfg, device, seed: int, channels_last: bool):
    if stream_kind(cfg.source) is not None:  # tar shards, hf-stream: an IterableTask
        from ..image_stream import build_stream_image_task

        return build_stream_image_task(cfg, device, seed, channels_last)
    from ..image import build_image_task

    return build_image_task(cfg, device, seed, channels_last=channels_last)


def check(recipe) -> None:
    """A streamed source refuses, when the recipe is read, what needs a stable sample index or the data in memory
    (tasks/image_stream.py says why for each)."""
    data = recipe.data
    kind = stream_kind(data.source)
    if kind is None:
        return
    stream = data.stream
    src = f"data.source {data.source!r} is a stream"
    if recipe.teacher.cache:
        raise ValueError(f"teacher.cache: {src}, and the teacher cache finds a sample's logits by a stable sample "
                         "index, which a stream has not: turn teacher.cache off (the teacher runs live), or use the "
                         "images as an ImageFolder or a tar of one")
    if recipe.teacher.limit_train is not None:
        raise ValueError(f"teacher.limit_train: {src}, and a subset for the teacher alone needs the data in memory: "
                         "remove it (data.limit_train limits every stage to the stream's first N examples)")
    if data.in_memory != "auto":
        raise ValueError(f"data.in_memory: {src} (read through an IterableDataset, never held in memory): remove "
                         "data.in_memory")
    if data.val_fraction not in (0.0, 0.1):  # the default (also written out in a run's recipe.yaml) is not applied
        raise ValueError(f"data.val_fraction: {src}, which has no index to hold examples out by: give the "
                         "validation data as data.stream.val (shards, or a split name for hf-stream) and remove "
                         "val_fraction")
    if stream is None or (stream.test is None and stream.val is None):
        raise ValueError(f"data.stream.test: {src} and the report needs data it did not train on: give "
                         "data.stream.test (shards like the source's, or a split name for hf-stream), or "
                         "data.stream.val")
    if stream.steps_per_epoch is not None and data.limit_train is not None:
        raise ValueError("data.limit_train with data.stream.steps_per_epoch: an epoch is already steps_per_epoch "
                         "batches; remove one of them")
    if stream.steps_per_epoch is not None and stream.num_classes is None:
        raise ValueError("data.stream.steps_per_epoch skips the label pass that counts the stream and finds its "
                         "classes: give data.stream.num_classes too")


def check_source(cfg):
    """`leankd validate` on a streamed source: the shards (or the dataset) open and the first sample has an image
    and a label; nothing is decoded or counted."""
    if stream_kind(cfg.source) is None:
        return None
    from ..image_stream import check_stream_source

    return check_stream_source(cfg)


KIND = register_kind(TaskKind(
    "image_classification", build, check=check, check_source=check_source, stream_sources=True,
    refusals={"augment": "images and audio augment through data.augment"},
    summary="images in class folders or streamed (tar shards, hf-stream); accuracy, per-class recall"))
