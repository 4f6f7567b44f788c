"""leankd.distill() on the user's own data: map-style Datasets (tuple and dict examples), torchvision FakeData, a
DataLoader, an IterableDataset (one pass, or endless with steps_per_epoch), and the errors that name the fix."""
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import leankd
from leankd.errors import DataError
from leankd.tasks import stream as stream_module
from leankd.tasks.base import LoaderTask, TensorTask
from leankd.tasks.items import Source
from leankd.tasks.stream import IterableTask

FAST = {"latency_runs": 30, "latency_batch_sizes": [1], "latency_warmup": 1}
KW = dict(epochs=2, batch_size=16, optimizer="adamw", lr=1e-2, weight_decay=0.0, measure=FAST)


def blobs(n, seed, features=8, classes=4):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, features, generator=g) + 3.0 * nn.functional.one_hot(y, features).float()
    return x, y


class Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Dicts(Pairs):
    def __init__(self, x, y, keys=("x", "label")):
        super().__init__(x, y)
        self.keys = keys

    def __getitem__(self, i):
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i]}


class Stream(IterableDataset):
    """A finite stream with no __len__ (endless=True: it starts over forever)."""

    def __init__(self, x, y, endless=False):
        self.x, self.y, self.endless = x, y, endless

    def __iter__(self):
        while True:
            for i in range(len(self.y)):
                yield self.x[i], self.y[i]
            if not self.endless:
                return


def mlp(hidden, features=8, classes=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


@pytest.fixture(scope="module")
def data():
    return blobs(96, 0), blobs(48, 1)


@pytest.fixture()
def models():
    torch.manual_seed(0)
    return mlp(32), mlp(4)


def changed(before: dict, after: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in after.state_dict().items())


def check_trained(result, initial, train_size):
    rep = result.report
    assert list(rep["models"]) == ["teacher", "baseline", "student"]
    assert rep["models"]["student"]["training"]["epochs"] == 2
    assert rep["run"]["dataset"]["train_size"] == train_size
    assert changed(initial, result.student)
    assert 0.0 <= rep["models"]["student"]["quality"]["accuracy"] <= 1.0


def test_map_style_dataset_tuple_and_dict_examples(data, models):
    (x, y), (xv, yv) = data
    teacher, student = models
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    result = leankd.distill(teacher, student, Pairs(x, y), Dicts(xv, yv), **KW)
    check_trained(result, initial, 96)
    assert result.report["run"]["dataset"]["eval_split"] == "val"
    assert result.report["run"]["dataset"]["num_classes"] == 4  # inferred from the materialized labels
    assert "streamed" not in result.report["run"]["dataset"]  # small: read into memory


def test_materialized_dataset_equals_tensors(data, models):
    (x, y), (xv, yv) = data
    teacher, student = models
    a = leankd.distill(teacher, student, (x, y), (xv, yv), seed=3, **KW)
    torch.manual_seed(0)
    teacher2, student2 = mlp(32), mlp(4)
    b = leankd.distill(teacher2, student2, Dicts(x, y), Pairs(xv, yv), seed=3, **KW)
    for (k, v), (k2, v2) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert a.report["models"]["student"]["quality"] == b.report["models"]["student"]["quality"]


def test_fakedata_with_to_tensor(models):
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    train = FakeData(size=48, image_size=(3, 4, 4), num_classes=3, transform=ToTensor())
    val = FakeData(size=24, image_size=(3, 4, 4), num_classes=3, transform=ToTensor(), random_offset=100)
    torch.manual_seed(0)
    teacher, student = mlp(16, features=48, classes=3), mlp(4, features=48, classes=3)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    result = leankd.distill(teacher, student, train, val, num_classes=3, **KW)
    check_trained(result, initial, 48)


def test_dataloader_lends_dataset_collate_and_batch_size(data, models):
    (x, y), (xv, yv) = data
    teacher, student = models
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    seen = []

    def collate(items):  # the user's own collate_fn, returning a dict batch
        seen.append(len(items))
        return {"inputs": torch.stack([i["x"] for i in items]), "y": torch.stack([i["label"] for i in items])}

    loader = DataLoader(Dicts(x, y), batch_size=24, shuffle=True, collate_fn=collate)
    kw = {k: v for k, v in KW.items() if k != "batch_size"}
    result = leankd.distill(teacher, student, loader, (xv, yv), num_classes=4, materialize=False, **kw)
    check_trained(result, initial, 96)
    assert result.report["models"]["student"]["training"]["batch_size"] == 24  # the loader's, as a hint
    assert result.report["run"]["dataset"]["streamed"] is True  # materialize=False: LoaderTask
    assert 24 in seen  # the training batches went through the user's collate_fn


def test_loader_task_order_is_seeded_and_shards(data):
    (x, y), _ = data
    from leankd.tasks.userdata import build_task

    task = build_task({"train": Dicts(x, y)}, 4, torch.device("cpu"), materialize=False)
    assert isinstance(task, LoaderTask)
    a = [b.targets for b in task.train_batches(1, 32, seed=5)]
    b = [b.targets for b in task.train_batches(1, 32, seed=5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == 3
    batch = next(task.train_batches(0, 32, seed=5))
    half = task.shard_batch(batch, 1, 2)  # rank 1 of 2: the second 16 rows
    assert torch.equal(half.targets, batch.targets[16:]) and torch.equal(half.inputs, batch.inputs[16:])
    assert torch.equal(y[half.index], half.targets)  # the index still names the samples


def test_iterable_dataset_one_pass(data, models):
    (x, y), (xv, yv) = data
    teacher, student = models
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    result = leankd.distill(teacher, student, Stream(x, y), Stream(xv, yv), num_classes=4, **KW)
    check_trained(result, initial, 96)  # the stream was counted: 96 examples, 6 full batches of 16
    assert result.report["models"]["student"]["training"]["steps"] == 2 * 6
    assert result.report["models"]["teacher"]["quality"]["num_samples"] == 48
    assert any("stream" in n for n in result.report["notes"])


def test_endless_stream_with_steps_per_epoch(data, models):
    (x, y), (xv, yv) = data
    teacher, student = models
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    result = leankd.distill(teacher, student, Stream(x, y, endless=True), (xv, yv), num_classes=4,
                            steps_per_epoch=3, **KW)
    check_trained(result, initial, 3 * 16)
    assert result.report["models"]["student"]["training"]["steps"] == 2 * 3


def test_stream_epochs_continue_with_steps_per_epoch_and_restart_per_stage():
    x, y = torch.zeros(10, 1), torch.arange(10)
    task = IterableTask({"train": Source(Stream(x, y))}, 10, steps_per_epoch=3)
    epoch = lambda e: [b.targets.tolist() for b in task.train_batches(e, 2, seed=0)]  # noqa: E731
    assert epoch(0) == [[0, 1], [2, 3], [4, 5]]
    assert epoch(1) == [[6, 7], [8, 9], [0, 1]]  # the stream continues, and starts over when it ends
    assert epoch(0) == [[0, 1], [2, 3], [4, 5]]  # a new stage starts the stream over
    one_pass = IterableTask({"train": Source(Stream(x, y))}, 10)
    assert one_pass.split_size("train") == 10 and one_pass.steps_per_epoch(4) == 2
    batches = list(one_pass.train_batches(0, 4, seed=0))
    assert [b.targets.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # full batches only
    half = one_pass.shard_batch(batches[1], 0, 2)  # torchrun: rank 0's share of the global batch
    assert half.targets.tolist() == [4, 5] and half.index is None


def test_stream_with_teacher_cache_falls_back_to_live_teacher(data, models, caplog):
    (x, y), (xv, yv) = data
    teacher, student = models
    with caplog.at_level(logging.WARNING, logger="leankd"):
        result = leankd.distill(teacher, student, Stream(x, y), (xv, yv), num_classes=4, teacher_cache_views=2,
                                baseline=False, **KW)
    note = [n for n in result.report["notes"] if "teacher_cache_views was not applied" in n]
    assert len(note) == 1 and "live teacher" in note[0] and "stable sample index" in note[0]
    assert "teacher_cache_views was not applied" in caplog.text
    assert result.report["models"]["student"]["training"].get("teacher_cache") is None  # no cache was built


def test_random_getitem_is_streamed_not_frozen(data):
    (x, y), _ = data
    from leankd.tasks.userdata import build_task

    class Jitter(Pairs):
        def __getitem__(self, i):
            return self.x[i] + torch.randn(self.x.shape[1]), int(self.y[i])

    task = build_task({"train": Jitter(x, y)}, 4, torch.device("cpu"))
    assert isinstance(task, LoaderTask) and "augments at random" in task.notes[0]
    assert isinstance(build_task({"train": Pairs(x, y)}, None, torch.device("cpu")), TensorTask)


# ----------------------------------------------------------------------------------------------- errors
def test_pil_images_ask_for_a_tensor_transform(models):
    from torchvision.datasets import FakeData

    teacher, student = models
    with pytest.raises(DataError, match=r"train_data: examples are PIL images.*add a transform that returns tensors"):
        leankd.distill(teacher, student, FakeData(size=8, image_size=(3, 4, 4), num_classes=4), epochs=1)


def test_unknown_dict_keys_name_found_and_accepted(data, models):
    (x, y), _ = data
    teacher, student = models
    with pytest.raises(DataError) as e:
        leankd.distill(teacher, student, Dicts(x, y, keys=("pixels", "label")), epochs=1)
    msg = str(e.value)
    assert "train_data" in msg and "['label', 'pixels']" in msg
    assert "['input', 'inputs', 'x', 'image']" in msg and "Rename the keys" in msg


def test_endless_stream_needs_steps_per_epoch(data, models, monkeypatch):
    (x, y), _ = data
    teacher, student = models
    monkeypatch.setattr(stream_module, "STREAM_COUNT_LIMIT", 500)  # the counting pass gives up after 500 examples
    with pytest.raises(DataError, match=r"more than 500 examples without ending.*pass steps_per_epoch=N"):
        leankd.distill(teacher, student, Stream(x, y, endless=True), num_classes=4, epochs=1)
    with pytest.raises(DataError, match=r"val_data.*must end"):
        leankd.distill(teacher, student, Stream(x, y), Stream(x, y, endless=True), num_classes=4, epochs=1)


def test_num_classes_required_when_not_inferable(data, models):
    (x, y), _ = data
    teacher, student = models
    with pytest.raises(DataError, match=r"num_classes: a stream .* pass num_classes="):
        leankd.distill(teacher, student, Stream(x, y), epochs=1)
    with pytest.raises(DataError, match=r"num_classes: .*not scanned.* pass num_classes="):
        leankd.distill(teacher, student, Pairs(x, y), materialize=False, epochs=1)


def test_steps_per_epoch_is_for_streams_only(data, models):
    (x, y), _ = data
    teacher, student = models
    with pytest.raises(DataError, match="steps_per_epoch applies to a stream"):
        leankd.distill(teacher, student, (x, y), steps_per_epoch=3, epochs=1)


def test_teacher_cache_on_streamed_map_style_data_fails_before_training(data, models, tmp_path):
    (x, y), _ = data
    teacher, student = models
    with pytest.raises(DataError, match=r"teacher_cache_views needs the training data in memory.*materialize=True"):
        leankd.distill(teacher, student, Pairs(x, y), num_classes=4, materialize=False, teacher_cache_views=2,
                       run_dir=tmp_path / "run", **{k: v for k, v in KW.items() if k != "measure"})
    assert not (tmp_path / "run" / "baseline").exists()  # raised before the baseline trained


def test_dataloaders_without_batching_and_over_streams(data):
    (x, y), _ = data
    from leankd.tasks.userdata import build_task

    unbatched = DataLoader(Pairs(x, y), batch_size=None)  # its collate_fn converts one example: not used
    task = build_task({"train": unbatched}, None, torch.device("cpu"))
    assert isinstance(task, TensorTask) and torch.equal(task.splits["train"][0], x)
    streamed = build_task({"train": DataLoader(Stream(x, y), batch_size=8)}, 4, torch.device("cpu"))
    assert isinstance(streamed, IterableTask) and streamed.split_size("train") == 96
    assert [b.targets.tolist() for b in streamed.train_batches(0, 48, seed=0)] == [y[:48].tolist(), y[48:].tolist()]


def test_materialized_dataset_reuses_the_tensors_teacher_cache(data, tmp_path):
    (x, y), (xv, yv) = data
    kw = dict(KW, baseline=False, teacher_cache_views=1, run_dir=tmp_path / "run", seed=1)
    torch.manual_seed(0)
    teacher = mlp(32)
    first = leankd.distill(teacher, mlp(4), (x, y), (xv, yv), **kw)
    again = leankd.distill(teacher, mlp(4), Pairs(x, y), Dicts(xv, yv), **kw)
    built, reused = (r.report["models"]["student"]["training"]["teacher_cache"] for r in (first, again))
    assert built["reused"] is False and reused["reused"] is True  # the same key: the same cache


def test_examples_of_different_shapes_ask_for_one_shape(models):
    class Ragged(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(8 if i % 2 else 6), i % 4

    teacher, student = models
    shapes = r"train_data: examples of different shapes \(\(6,\), \(8,\)\).*collate_fn pads"
    with pytest.raises(DataError, match=shapes):
        leankd.distill(teacher, student, Ragged(), epochs=1)


def test_a_dataloader_collate_fn_may_take_examples_that_are_not_tensors(data):
    (x, y), _ = data
    from leankd.tasks.userdata import build_task

    class Lists(Pairs):  # examples as plain lists: only the user's collate_fn makes tensors of them
        def __getitem__(self, i):
            return {"values": self.x[i].tolist(), "cls": int(self.y[i])}

    def collate(items):
        return torch.tensor([i["values"] for i in items]), torch.tensor([i["cls"] for i in items])

    task = build_task({"train": DataLoader(Lists(x, y), collate_fn=collate)}, None, torch.device("cpu"))
    assert isinstance(task, TensorTask) and torch.equal(task.splits["train"][0], x)
    assert torch.equal(task.splits["train"][1], y) and task.num_classes == 4
    with pytest.raises(DataError, match="a dict example needs exactly one input key"):
        build_task({"train": Lists(x, y)}, None, torch.device("cpu"))  # without it: the keys are not known


def test_a_finite_stream_can_be_read_into_memory(data):
    (x, y), (xv, yv) = data
    from leankd.tasks.userdata import build_task

    task = build_task({"train": Stream(x, y), "val": Stream(xv, yv)}, None, torch.device("cpu"), materialize=True)
    assert isinstance(task, TensorTask) and task.num_classes == 4
    assert torch.equal(task.splits["train"][0], x) and torch.equal(task.splits["val"][1], yv)
    with pytest.raises(DataError, match="steps_per_epoch and materialize=True"):
        build_task({"train": Stream(x, y)}, 4, torch.device("cpu"), steps_per_epoch=2, materialize=True)
