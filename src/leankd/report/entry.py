"""One model's entry in `report.json` (`models.<role>`): quality, cost, latency, memory, training, and what a
deployment artifact, a streaming or decoding benchmark or a probe adds. Split from `schema` (issue 24): the largest
part of the report schema, one block per thing measured."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leankd.report.base import _BATCH_KEY, _Strict

Number = Optional[Union[int, float]]  # int stays int, float stays float (no coercion between them in strict mode)


class Quality(_Strict):
    model_config = ConfigDict(extra="allow", strict=True)  # a task plug-in's own figures (a span's exact_match) join
    split: Optional[str] = None
    accuracy: Optional[float] = None
    macro_f1: Optional[float] = None
    loss: Optional[float] = None
    num_samples: Optional[int] = None
    per_class_accuracy: Optional[dict[str, Optional[float]]] = None
    pearson: Optional[float] = None  # regression (text_regression): Pearson r of outputs vs scores
    spearman: Optional[float] = None
    mse: Optional[float] = None
    mcc: Optional[float] = None  # text: Matthews correlation coefficient
    f1_positive: Optional[float] = None  # text, two classes: F1 of class 1 (GLUE's F1)
    # binary keyword spotting: area under the FR-vs-FA curve (lower is better), FR rate at FA rate `far_target`
    fa_fr_auc: Optional[float] = None
    frr_at_far: Optional[float] = None
    far_target: Optional[float] = None
    # seq2seq (accuracy = sequence accuracy, greedy): token / sequence error rates (fractions; PER / WER for G2P),
    # greedy and with beam search of width `beam`; BLEU / chrF (0-100, sacrebleu) for whitespace-tokenized targets
    ter: Optional[float] = None
    ser: Optional[float] = None
    ter_beam: Optional[float] = None
    ser_beam: Optional[float] = None
    beam: Optional[int] = None
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    bleu_beam: Optional[float] = None
    chrf_beam: Optional[float] = None
    # classification: share of predictions in the most predicted class; of the most frequent true class (a guess's)
    top_prediction_share: Optional[float] = None
    majority_class_share: Optional[float] = None

    @model_validator(mode="after")
    def _task_figures(self) -> "Quality":  # a task's own figures are numbers; a near-miss of a known key is a typo
        bad = [k for k, v in (self.__pydantic_extra__ or {}).items() if not isinstance(v, (int, float, type(None)))
               or difflib.get_close_matches(k, list(type(self).model_fields), n=1, cutoff=0.9)]
        if bad:
            raise ValueError(f"unknown key(s) {bad} (a typo of a known key, or not a number)")
        return self


class Cost(_Strict):
    params: Optional[int] = None
    trainable_params: Optional[int] = None
    size_mb: Optional[float] = None
    size_bytes: Optional[int] = None
    macs: Number = None  # per sample
    flops: Number = None  # per sample


class LatencyStats(_Strict):
    """Timings of one batch size (`measure.timing`). Since the robust timer, `median_ms` is the median over the
    interleaved rounds of each round's fastest block (older reports: the median of single calls); the others are
    over all blocks. `spread` = interquartile range / median of the blocks, `round_spread` = slowest / fastest of the
    per-round fastest blocks, `round_ms[r]` = round r's block means (ms per call)."""

    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    runs: Optional[int] = None
    pooled_median_ms: Optional[float] = None
    spread: Optional[float] = None
    round_spread: Optional[float] = None
    round_ms: Optional[list[list[float]]] = None


class DeviceLatency(BaseModel):
    """`{"threads": 2, "batch_1": {...}, "batch_64": {...}}`: any `batch_<n>` key is allowed, nothing else."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, Optional[LatencyStats]] = Field(init=False)

    threads: Optional[int] = None
    device_name: Optional[str] = None  # GPU name on the cuda block
    # the noise contract (read by `leankd search`): reliable False -> the figures may be spoiled by machine noise,
    # `noise` says why; None/absent (reports from before the robust timer) = not assessed, read as reliable
    reliable: Optional[bool] = None
    noise: Optional[list[str]] = None
    load_avg: Optional[list[float]] = None  # os.getloadavg() (1, 5, 15 min) when the table was timed
    interop_threads: Optional[int] = None
    cpu_count: Optional[int] = None
    rounds: Optional[int] = None
    method: Optional[str] = None

    @model_validator(mode="after")
    def _only_batch_keys(self) -> "DeviceLatency":
        bad = [k for k in (self.__pydantic_extra__ or {}) if not _BATCH_KEY.match(k)]
        if bad:
            raise ValueError(f"unknown key(s) {bad}; allowed: {', '.join(repr(f) for f in type(self).model_fields)} "
                             "and 'batch_<n>' (e.g. 'batch_1', 'batch_64')")
        return self

    def batches(self) -> dict[int, Optional[LatencyStats]]:
        """Batch size -> stats, sorted by batch size."""
        out = {int(_BATCH_KEY.match(k).group(1)): v for k, v in (self.__pydantic_extra__ or {}).items()}
        return dict(sorted(out.items()))


class Latency(_Strict):
    cpu: Optional[DeviceLatency] = None
    cuda: Optional[DeviceLatency] = None


class Memory(_Strict):
    inference_peak_mb: Optional[float] = None
    inference_delta_mb: Optional[float] = None
    kind: Optional[str] = None
    batch_size: Optional[int] = None
    model_memory_mb: Optional[float] = None  # parameters + peak activations for one input (tensor bytes)


class TimingNoise(_Strict):
    """What every timing table carries since the robust timer (`measure.timing`): the noise verdict and the machine
    state it was timed in. All optional: older reports have none of it (absent `reliable` = reliable)."""

    reliable: Optional[bool] = None
    noise: Optional[list[str]] = None
    load_avg: Optional[list[float]] = None
    threads: Optional[int] = None
    interop_threads: Optional[int] = None
    cpu_count: Optional[int] = None


class FeatureCost(TimingNoise):
    """One step (forward, teacher, loss, backward) with the logit loss alone or plus one feature term. `extra_mb`
    None with `memory_kind` "not measurable: ..." when no memory figure could be taken."""

    loss: str
    ms_per_step: Optional[float] = None
    extra_ms_per_step: Optional[float] = None
    peak_mb: Optional[float] = None
    extra_mb: Optional[float] = None  # extra at the step's peak: often 0 (a term's tensors fit under the peak)
    held_mb: Optional[float] = None  # tensor bytes alive when the loss is computed (kept for backward)
    extra_held_mb: Optional[float] = None  # what the feature term keeps alive for backward
    memory_kind: Optional[str] = None


class TeacherCache(_Strict):
    """The teacher-logit cache a KD stage read instead of running the teacher (kd.cache)."""

    path: str
    views: int
    samples: int
    classes: int
    top_k: Optional[int] = None  # top-k logits + indices + tail logit per sample instead of every logit
    disk_mb: float
    build_s: Optional[float] = None  # None: an existing cache was reused (built by an earlier stage or run)
    reused: bool = False
    augmented: Optional[bool] = None  # False: the task does not augment (text), so one view is all there is
    bytes_per_row: Optional[int] = None  # one sample's (causal LM: one token's) outputs in one view; older: None


class TransferSet(_Strict):
    """Text augmentation for distillation (Tang et al.): unlabeled texts added to what the KD student trains on."""

    original: int  # labeled training texts
    augmented: int  # new unlabeled texts (repeats and unchanged copies dropped)
    copies_tried: int
    settings: dict


class Training(_Strict):
    epochs: Optional[int] = None
    wall_time_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    memory_kind: Optional[str] = None
    energy_j: Optional[float] = None
    energy_source: Optional[str] = None
    loss: Optional[str] = None
    precision: Optional[str] = None
    device: Optional[str] = None
    feature_costs: Optional[list[FeatureCost]] = None  # layer distillation: what each feature loss costs per step
    teacher_cache: Optional[TeacherCache] = None  # offline KD: the cached teacher logits this stage trained from
    transfer_set: Optional[TransferSet] = None  # text: augmented, unlabeled texts the KD student also trained on
    seq_kd_data: Optional[dict] = None  # seq2seq: the teacher-decoded training pairs a sequence-level student used
    on_policy: Optional[dict] = None  # causal_lm: how many batches the student continued itself, what sampling cost
    speedups: Optional[list[str]] = None  # throughput switches the stage trained with (train/speed.py)
    speedup_notes: Optional[list[str]] = None  # requested switches that did not apply, and why
    batch_size: Optional[int] = None
    steps: Optional[int] = None  # optimizer steps taken over all epochs


class Artifact(_Strict):
    """A deployment artifact derived from a trained model (fp16, int8, ONNX...): what was done and how it went."""

    target: str  # e.g. "fp16", "int8-dynamic", "int8-static", "onnx"
    base_role: str  # the fp32 model it was made from, e.g. "student"
    format: str  # "torch" or "onnx"
    path: str  # relative to the run dir
    quantized: Optional[list[str]] = None  # module paths / op types that run in int8
    left_in_float: Optional[dict[str, str]] = None  # module or op -> why it stayed in float
    max_abs_diff: Optional[float] = None  # against the fp32 model on one eval batch
    accuracy_drop_points: Optional[float] = None
    max_drop_points: Optional[float] = None  # the recipe's threshold
    flagged: bool = False  # accuracy dropped more than the threshold
    notes: list[str] = Field(default_factory=list)
    # added to a finished run (`leankd compress`/`export` without --remeasure): the base model's latency re-timed
    # interleaved with this artifact; its x-faster ratios against the base use it instead of the base's own row
    reference_latency: Optional[Latency] = None
    # built by `leankd compress`/`export` after the run: the run's recipe.yaml (kept as the stages were trained from
    # it) does not list this target in compress.targets
    added_after_run: Optional[bool] = None


class Streaming(TimingNoise):
    """Chunk-by-chunk inference on the CPU (keyword spotting), features included."""

    chunk_ms: Optional[float] = None
    mode: Optional[str] = None  # "incremental" (GRU state carried) or "window" (recomputed over a sliding window)
    median_ms: Optional[float] = None  # robust figure (median of per-round fastest blocks), as LatencyStats
    p90_ms: Optional[float] = None
    min_ms: Optional[float] = None
    pooled_median_ms: Optional[float] = None
    spread: Optional[float] = None
    round_spread: Optional[float] = None
    runs: Optional[int] = None
    real_time_factor: Optional[float] = None  # compute time per chunk / chunk duration (< 1: faster than real time)


class DecodeLatency(_Strict):
    search: str  # "greedy" or "beam<k>"
    batch_size: int
    median_batch_ms: float  # robust figure (median of per-round fastest blocks) since the robust timer
    ms_per_sequence: float
    spread: Optional[float] = None
    round_spread: Optional[float] = None


class Decoding(TimingNoise):
    """Seq2seq: CPU wall time of decoding whole sequences (encoder + every decoder step), per sequence."""

    beam: int
    length_penalty: float
    max_len: int
    runs: Optional[int] = None
    interleaved: Optional[bool] = None  # timed round-robin with the run's other models and artifacts
    latency: list[DecodeLatency] = Field(default_factory=list)


class TokenLatency(_Strict):
    batch_size: int
    new_tokens: int
    median_ms: float  # the whole call: the prompt's pass plus `new_tokens` steps (robust figure of the shared timer)
    ms_per_token: float
    spread: Optional[float] = None
    round_spread: Optional[float] = None


class Generation(TimingNoise):
    """causal_lm: CPU latency per generated token with the KV cache (greedy, interleaved across models) and one
    sampled continuation of a fixed prompt, so a reader sees what a perplexity means."""

    prompt_tokens: Optional[int] = None
    search: Optional[str] = None
    runs: Optional[int] = None
    kv_cache: Optional[bool] = None
    interleaved: Optional[bool] = None
    latency: list[TokenLatency] = Field(default_factory=list)
    prompt: Optional[str] = None
    sample: Optional[str] = None
    sample_seed: Optional[int] = None
    sample_temperature: Optional[float] = None


class ModelProbe(_Strict):
    """What one forward of a probe batch shows about a model (measure.probe): how far it downsamples its input."""

    input_size: Optional[list[int]] = None  # spatial size of the input, e.g. [28, 28]
    feature_size: Optional[list[int]] = None  # spatial size of the last feature map before global pooling
    total_stride: Optional[int] = None  # input size / last feature map size, measured on a large probe input
    batchnorm_layers: Optional[int] = None


class QualityFlag(_Strict):
    """A result that cannot be right (report.sanity): what was seen, and the likely causes the run's data shows."""

    kind: str  # "at_chance" or "collapsed"
    message: str
    causes: list[str] = Field(default_factory=list)


class ModelEntry(_Strict):
    role: str
    label: Optional[str] = None
    architecture: Optional[str] = None
    origin: Optional[str] = None
    quality: Optional[Quality] = None
    cost: Optional[Cost] = None
    latency: Optional[Latency] = None
    memory: Optional[Memory] = None
    training: Optional[Training] = None
    history: Optional[str] = None  # JSON-lines file, relative to the run dir
    artifact: Optional[Artifact] = None  # set for compressed/exported models
    streaming: Optional[Streaming] = None
    decoding: Optional[Decoding] = None
    generation: Optional[Generation] = None
    probe: Optional[ModelProbe] = None
    quality_flags: Optional[list[QualityFlag]] = None

    @field_validator("history")
    @classmethod
    def _history_relative(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and Path(v).is_absolute():
            raise ValueError(f"history must be a path relative to the run dir, got absolute path {v!r}")
        return v

