"""Feature-distillation losses: hand-computed values, invariances, adapters (build / train / resume), composition,
and real tiny Hugging Face BERTs for the TinyBERT losses (eager attention probabilities, sdpa refusal)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leankd.kd.features import (
    AttentionMapLoss,
    AttentionTransfer,
    HiddenStateMSE,
    MiniLMAttention,
    Hint,
    SimilarityPreserving,
)
from leankd.kd.losses import KD, LossInputs, WeightedSum
from leankd.kd.registry import FEATURE_LOSSES
from leankd.kd.taps import FeatureTaps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a busy 2-core machine OpenMP threads cost far more than they give (a 1x1 conv
    took 20 ms instead of 0.3 ms), so run single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def feats(student: dict, teacher: dict, logits=None) -> LossInputs:
    s = torch.zeros(1, 2) if logits is None else logits[0]
    t = torch.zeros(1, 2) if logits is None else logits[1]
    return LossInputs(student=s, targets=torch.zeros(s.shape[0], dtype=torch.long), teacher=t,
                      student_features=student, teacher_features=teacher)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# Attention transfer ------------------------------------------------------------------------------------------------
def test_at_matches_hand_value():
    # student: channel maps [[1,2],[3,4]] and [[1,0],[1,0]] -> mean_c F^2 = [(1+1)/2, (4+0)/2, (9+1)/2, (16+0)/2]
    fs = t([[[[1, 2], [3, 4]], [[1, 0], [1, 0]]]])
    # teacher: [[2,0],[0,2]] and [[0,2],[2,0]] -> mean_c F^2 = [2, 2, 2, 2] -> normalised 0.5 everywhere
    ft = t([[[[2, 0], [0, 2]], [[0, 2], [2, 0]]]])
    a_s = [1, 2, 5, 8]
    norm = math.sqrt(sum(v * v for v in a_s))  # sqrt(94)
    hand = sum((v / norm - 0.5) ** 2 for v in a_s) / 4
    loss = AttentionTransfer([("s", "t")])(feats({"s": fs}, {"t": ft}))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert hand > 0.01  # a real difference, not a trivially small number


def test_at_zero_for_identical_and_scale_invariant_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    at = AttentionTransfer([("s", "t")])
    assert at(feats({"s": x}, {"t": x.clone()})).item() == pytest.approx(0.0, abs=1e-10)
    scale = torch.tensor([0.5, 3.0, 10.0]).view(3, 1, 1, 1)  # a different positive factor per sample
    assert at(feats({"s": x * scale}, {"t": x})).item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(3, 4, 5, 5, generator=g)
    assert at(feats({"s": other}, {"t": x})).item() > 1e-4


def test_at_works_across_channel_counts_and_resizes_student_map():
    g = torch.Generator().manual_seed(1)
    small = torch.randn(2, 3, 2, 2, generator=g)
    teacher = torch.randn(2, 7, 2, 2, generator=g)  # other width: AT needs no adapter
    at = AttentionTransfer([("s", "t")])
    direct = at(feats({"s": small}, {"t": teacher})).item()
    # a 2x2 student map repeated in 2x2 blocks: its attention map pools back to the 2x2 one, same loss
    blocks = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert blocks.shape == (2, 3, 4, 4)
    assert at(feats({"s": blocks}, {"t": teacher})).item() == pytest.approx(direct, rel=1e-5)
    # a general 4x4 student: its attention map is average-pooled over 2x2 blocks (done by hand here)
    big = torch.randn(2, 3, 4, 4, generator=g)
    a_big = (big ** 2).mean(dim=1).reshape(2, 2, 2, 2, 2).mean(dim=(2, 4)).reshape(2, 4)
    a_big = a_big / a_big.pow(2).sum(1, keepdim=True).sqrt()
    a_t = (teacher ** 2).mean(dim=1).reshape(2, 4)
    a_t = a_t / a_t.pow(2).sum(1, keepdim=True).sqrt()
    hand = ((a_big - a_t) ** 2).mean().item()
    assert at(feats({"s": big}, {"t": teacher})).item() == pytest.approx(hand, rel=1e-5)
    # and upwards: a spatially constant 2x2 student against a constant 4x4 teacher map is interpolated -> 0
    const_s = torch.ones(2, 3, 2, 2)
    const_t = torch.full((2, 5, 4, 4), 2.0)
    assert at(feats({"s": const_s}, {"t": const_t})).item() == pytest.approx(0.0, abs=1e-10)
    assert at(feats({"s": torch.randn(2, 3, 2, 2, generator=g)}, {"t": const_t})).item() > 0


def test_at_rejects_non_maps():
    with pytest.raises(ValueError, match="s->t"):
        AttentionTransfer([("s", "t")])(feats({"s": torch.randn(2, 8)}, {"t": torch.randn(2, 8)}))


# Similarity preserving ---------------------------------------------------------------------------------------------
def test_sp_matches_hand_value():
    # student Q = [[1,0],[1,1]] -> QQ^T = [[1,1],[1,2]] -> rows [1,1]/sqrt2, [1,2]/sqrt5; teacher Q = I -> G = I
    r2, r5 = math.sqrt(2), math.sqrt(5)
    diff = [1 / r2 - 1, 1 / r2, 1 / r5, 2 / r5 - 1]
    hand = sum(d * d for d in diff) / (2 * 2)
    loss = SimilarityPreserving([("s", "t")])(feats({"s": t([[1, 0], [1, 1]])}, {"t": t([[1, 0], [0, 1]])}))
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert hand > 0.05


def test_sp_zero_for_scaled_copy_and_flattens_maps():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 2, 2, generator=g)
    sp = SimilarityPreserving([("s", "t")])
    assert sp(feats({"s": 7.5 * x}, {"t": x})).item() == pytest.approx(0.0, abs=1e-10)
    # different widths and shapes are fine: only the b x b similarity matrices are compared
    assert sp(feats({"s": torch.randn(4, 10, generator=g)}, {"t": x})).item() > 1e-4


# Hint (FitNets) ----------------------------------------------------------------------------------------------------
def test_hint_build_creates_one_adapter_per_pair_with_right_shapes():
    hint = Hint([("layer1", "block.1"), ("layer2.0", "block.2")])
    sf = {"layer1": torch.randn(2, 4, 8, 8), "layer2.0": torch.randn(2, 8, 4, 4)}
    tf = {"block.1": torch.randn(2, 16, 8, 8), "block.2": torch.randn(2, 32, 4, 4)}
    assert list(hint.parameters()) == []
    hint.build(sf, tf)
    assert len(hint.adapters) == 2
    convs = [m for m in hint.adapters.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(4, 16, (1, 1)), (8, 32, (1, 1))]
    assert all(c.bias is None for c in convs)  # BN follows the conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in hint.adapters.modules()) == 2
    assert all("." not in k for k in hint.adapters)
    assert hint.student_taps() == ["layer1", "layer2.0"] and hint.teacher_taps() == ["block.1", "block.2"]
    assert hint.needs_teacher and hint.describe() == "hint(layer1->block.1, layer2.0->block.2)"
    assert all(p.dtype == torch.float32 for p in hint.parameters())


def test_hint_compute_before_build_raises():
    hint = Hint([("s", "t")])
    with pytest.raises(RuntimeError, match=r"build\(\) must run first"):
        hint(feats({"s": torch.randn(2, 4, 3, 3)}, {"t": torch.randn(2, 6, 3, 3)}))


def test_hint_second_build_keeps_adapters():
    hint = Hint([("s", "t")])
    sf, tf = {"s": torch.randn(2, 4, 3, 3)}, {"t": torch.randn(2, 6, 3, 3)}
    hint.build(sf, tf)
    adapter = hint.adapters["s__t"]
    with torch.no_grad():
        adapter[0].weight.fill_(0.25)  # as if loaded from a checkpoint
    hint.build(sf, tf)
    assert hint.adapters["s__t"] is adapter
    assert torch.all(adapter[0].weight == 0.25)


def test_hint_is_differentiable_wrt_student_and_adapter():
    hint = Hint([("s", "t")])
    s = torch.randn(3, 4, 5, 5, requires_grad=True)
    tt = torch.randn(3, 6, 5, 5)
    hint.build({"s": s.detach()}, {"t": tt})
    loss = hint(feats({"s": s}, {"t": tt}))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hint.parameters())


def test_hint_adapter_training_drives_loss_down():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(16, 4, 4, 4, generator=g)
    teacher_map = nn.Conv2d(4, 6, kernel_size=1, bias=False)
    with torch.no_grad():
        teacher_map.weight.copy_(torch.randn(6, 4, 1, 1, generator=g))
        tt = teacher_map(s)
    torch.manual_seed(3)  # adapter init
    hint = Hint([("s", "t")])
    hint.build({"s": s}, {"t": tt})
    opt = torch.optim.SGD(hint.parameters(), lr=0.1, momentum=0.9)
    first = None
    for _ in range(40):
        loss = hint(feats({"s": s}, {"t": tt}))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = hint(feats({"s": s}, {"t": tt})).item()
    assert final < 0.05 * first, (first, final)


@pytest.mark.parametrize("s_size,t_size", [(8, 4), (4, 8)])
def test_hint_handles_different_spatial_sizes(s_size, t_size):
    hint = Hint([("s", "t")])
    s = torch.randn(2, 3, s_size, s_size, requires_grad=True)
    tt = torch.randn(2, 5, t_size, t_size)
    hint.build({"s": s.detach()}, {"t": tt})
    loss = hint(feats({"s": s}, {"t": tt}))
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    assert s.grad.abs().sum() > 0


def test_hint_sequences_vectors_and_equal_width_identity():
    hint = Hint([("s", "t")], batchnorm=False)
    x = torch.randn(2, 5, 8)
    hint.build({"s": x}, {"t": x})
    assert isinstance(hint.adapters["s__t"], nn.Linear)
    assert hint(feats({"s": x}, {"t": x})).item() == pytest.approx(0.0, abs=1e-12)  # identity-initialised
    vec = Hint([("s", "t")])
    vec.build({"s": torch.randn(2, 3)}, {"t": torch.randn(2, 7)})
    assert vec.adapters["s__t"].in_features == 3 and vec.adapters["s__t"].out_features == 7
    conv_eq = Hint([("s", "t")], batchnorm=False)
    m = torch.randn(2, 4, 3, 3)
    conv_eq.build({"s": m}, {"t": m})
    assert conv_eq(feats({"s": m}, {"t": m})).item() == pytest.approx(0.0, abs=1e-12)


def test_hint_sequence_length_mismatch_names_the_pair():
    hint = Hint([("enc.layer.1", "enc.layer.5")])
    with pytest.raises(ValueError, match=r"enc\.layer\.1->enc\.layer\.5.*sequence lengths"):
        hint.build({"enc.layer.1": torch.randn(2, 5, 8)}, {"enc.layer.5": torch.randn(2, 6, 8)})


def test_hint_missing_feature_and_empty_pairs():
    with pytest.raises(ValueError, match="pair"):
        Hint([])
    hint = Hint([("s", "t")])
    with pytest.raises(ValueError, match="student_taps"):
        hint.build({}, {"t": torch.randn(2, 3)})


def test_half_precision_features_give_fp32_adapters_and_loss():
    hint = Hint([("s", "t")])
    s = torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    tt = torch.randn(2, 6, 3, 3).to(torch.bfloat16)
    hint.build({"s": s}, {"t": tt})
    assert all(p.dtype == torch.float32 for p in hint.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = hint(feats({"s": s}, {"t": tt}))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# Composition -------------------------------------------------------------------------------------------------------
def test_composition_with_kd():
    hint = Hint([("layer2", "layer3")])
    total = KD(4) + 0.5 * hint
    assert isinstance(total, WeightedSum)
    total2 = KD(4) + 0.5 * Hint([("layer2", "layer3"), ("layer1", "layer1")])
    assert total2.student_taps() == ["layer2", "layer1"] and total2.teacher_taps() == ["layer3", "layer1"]
    assert total.student_taps() == ["layer2"] and total.teacher_taps() == ["layer3"]
    assert total.needs_teacher
    sf, tf = {"layer2": torch.randn(2, 4, 4, 4)}, {"layer3": torch.randn(2, 8, 2, 2)}
    assert list(total.parameters()) == []
    total.build(sf, tf)
    adapter_params = {id(p) for p in hint.parameters()}
    assert adapter_params and adapter_params == {id(p) for p in total.parameters()}
    logits = (torch.randn(2, 3), torch.randn(2, 3))
    inputs = feats(sf, tf, logits)
    terms = total.terms(inputs)
    assert list(terms) == ["kd(T=4)", "hint(layer2->layer3)"]
    assert terms["hint(layer2->layer3)"].item() == pytest.approx(0.5 * hint(inputs).item(), rel=1e-6)
    assert total(inputs).item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    assert total.describe() == "kd(T=4) + 0.5*hint(layer2->layer3)"


def test_registry():
    assert {name: kind.make for name, kind in FEATURE_LOSSES.items()} == {
        "hint": Hint, "at": AttentionTransfer, "sp": SimilarityPreserving, "hidden_mse": HiddenStateMSE,
        "attention_mse": AttentionMapLoss, "minilm": MiniLMAttention}
    assert [n for n, k in FEATURE_LOSSES.items() if not k.auto_pairs] == ["attention_mse", "minilm"]


# Transformers (tiny BERTs) -----------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")

ATTN_T = "bert.encoder.layer.1.attention.self"
ATTN_S = "bert.encoder.layer.0.attention.self"
LAYER_T, LAYER_S = "bert.encoder.layer.1", "bert.encoder.layer.0"


def tiny_bert(hidden, layers, heads, attn="eager", seed=0):
    torch.manual_seed(seed)
    # transformers 5: the attention switch goes on the config; the model constructor takes no attn_implementation
    config = transformers.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=32, num_labels=3, attn_implementation=attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def berts():
    teacher = tiny_bert(32, 2, 2, seed=0).eval()
    student = tiny_bert(16, 1, 4, seed=1).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return teacher, student, ids, mask


def run(model, names, ids, mask, detach):
    with FeatureTaps(model, names, detach=detach) as taps:
        if detach:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask)
        else:
            out = model(input_ids=ids, attention_mask=mask)
        return out.logits, taps.take()


def test_bert_module_paths_and_attention_outputs(berts):
    teacher, _, ids, mask = berts
    names = dict(teacher.named_modules())
    assert {LAYER_T, ATTN_T, "bert.embeddings"} <= set(names)
    assert type(names[ATTN_T]).__name__ == "BertSelfAttention"
    _, f = run(teacher, [ATTN_T, LAYER_T], ids, mask, detach=True)
    out, probs = f[ATTN_T]  # (attn_output, attn_weights)
    assert out.shape == (3, 7, 32) and probs.shape == (3, 2, 7, 7)
    assert isinstance(f[LAYER_T], torch.Tensor) and f[LAYER_T].shape == (3, 7, 32)  # a layer returns a tensor
    # probabilities: each row sums to 1, and padded keys get no attention
    assert torch.allclose(probs.sum(-1), torch.ones(3, 2, 7), atol=1e-5)
    assert probs[1, :, :, 5:].abs().max() == 0 and probs[2, :, :, 3:].abs().max() == 0


def test_tinybert_losses_on_real_models(berts):
    teacher, student, ids, mask = berts
    loss = HiddenStateMSE([(LAYER_S, LAYER_T)]) + AttentionMapLoss([(ATTN_S, ATTN_T)])
    t_logits, tf = run(teacher, loss.teacher_taps(), ids, mask, detach=True)
    s_logits, sf = run(student, loss.student_taps(), ids, mask, detach=False)
    loss.build(sf, tf)
    (hidden_loss,) = [m for m in loss.losses if isinstance(m, HiddenStateMSE)]
    adapter = hidden_loss.adapters[next(iter(hidden_loss.adapters))]
    assert (adapter.in_features, adapter.out_features) == (16, 32)
    inputs = LossInputs(student=s_logits, targets=torch.zeros(3, dtype=torch.long), teacher=t_logits,
                        student_features=sf, teacher_features=tf)
    terms = loss.terms(inputs)
    assert set(terms) == {f"hidden_mse({LAYER_S}->{LAYER_T})", f"attention_mse({ATTN_S}->{ATTN_T})"}
    for value in terms.values():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    student.zero_grad()
    terms[f"attention_mse({ATTN_S}->{ATTN_T})"].backward(retain_graph=True)
    q = student.bert.encoder.layer[0].attention.self.query.weight
    assert q.grad is not None and q.grad.abs().sum() > 0
    student.zero_grad()
    terms[f"hidden_mse({LAYER_S}->{LAYER_T})"].backward()
    dense = student.bert.encoder.layer[0].output.dense.weight
    assert dense.grad is not None and dense.grad.abs().sum() > 0
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0


def test_attention_loss_head_averaging_and_self_zero(berts):
    teacher, student, ids, mask = berts
    _, tf = run(teacher, [ATTN_T, "bert.encoder.layer.0.attention.self"], ids, mask, detach=True)
    _, sf = run(student, [ATTN_S], ids, mask, detach=True)
    # 4 student heads vs 2 teacher heads: compare head-mean maps
    value = AttentionMapLoss([(ATTN_S, ATTN_T)])(feats(sf, tf)).item()
    expected = F.mse_loss(sf[ATTN_S][1].mean(1), tf[ATTN_T][1].mean(1)).item()
    assert value == pytest.approx(expected, rel=1e-5)
    # a model against itself: zero (same heads, no averaging)
    same = AttentionMapLoss([(ATTN_T, ATTN_T)])(feats(tf, tf)).item()
    assert same == 0.0
    # plain 4-D tensors are taken as the maps; equal heads are compared head by head
    a, b = tf["bert.encoder.layer.0.attention.self"][1], tf[ATTN_T][1]
    plain = AttentionMapLoss([("x", "y")])(feats({"x": a}, {"y": b})).item()
    assert plain == pytest.approx(F.mse_loss(a, b).item(), rel=1e-6)


def test_sdpa_model_raises_with_eager_hint(berts):
    teacher, _, ids, mask = berts
    sdpa = tiny_bert(16, 1, 2, attn="sdpa", seed=2).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    _, sf = run(sdpa, [ATTN_S], ids, mask, detach=True)
    assert sf[ATTN_S][1] is None
    _, tf = run(teacher, [ATTN_T], ids, mask, detach=True)
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        AttentionMapLoss([(ATTN_S, ATTN_T)])(feats(sf, tf))


def test_hidden_state_mse_sequence_mismatch_and_tuple_outputs():
    loss = HiddenStateMSE([("a.b", "c.d")])
    with pytest.raises(ValueError, match=r"a\.b->c\.d"):
        loss.build({"a.b": torch.randn(2, 5, 4)}, {"c.d": torch.randn(2, 6, 8)})
    # tuple outputs (older HF layers): the first tensor is the hidden state; equal width -> identity start
    h = torch.randn(2, 5, 8)
    loss.build({"a.b": (h, None)}, {"c.d": (h.clone(),)})
    assert loss(feats({"a.b": (h, None)}, {"c.d": (h.clone(),)})).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RuntimeError, match=r"build\(\)"):
        HiddenStateMSE([("x", "y")])(feats({"x": h}, {"y": h}))
