"""Causal LMs (leankd.models.lm), `hf:PATH` causal checkpoints, layer copying, generation and per-token latency."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from leankd.compress.quantize import quantize_dynamic_int8
from leankd.errors import ModelError
from leankd.lm.generate import generate, token_latency
from leankd.models import create_model
from leankd.models.lm import CausalLM, copy_layers

V = 65  # tinyshakespeare's character vocabulary


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(positions: str = "learned", **kw) -> CausalLM:
    torch.manual_seed(0)
    return create_model("gpt", 11, **{"context": 12, "layers": 2, "hidden": 16, "heads": 2, "positions": positions,
                                      **kw}).eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_forward_shape_and_causality(positions: str) -> None:
    model = tiny(positions)
    x = torch.randint(0, 11, (3, 9))
    with torch.no_grad():
        logits = model(x)
        changed = x.clone()
        changed[:, 5] = (changed[:, 5] + 1) % 11
        later = model(changed)
    assert logits.shape == (3, 9, 11) and logits.dtype == torch.float32
    assert model.num_classes == 11 and model.context == 12 and model.config.vocab_size == 11
    # a token changes only the logits at its own and later positions
    assert torch.allclose(logits[:, :5], later[:, :5], atol=1e-6)
    assert not torch.allclose(logits[:, 5:], later[:, 5:], atol=1e-4)


def test_architectures_and_linear_projections() -> None:
    learned, rotary = tiny("learned"), tiny("rotary")
    assert type(learned.hf).__name__ == "GPTBigCodeForCausalLM"
    assert type(rotary.hf).__name__ == "LlamaForCausalLM"
    # no HF Conv1D anywhere: every weight matrix is a Linear (what dynamic int8 swaps)
    for model in (learned, rotary):
        kinds = {type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
        assert "Conv1D" not in kinds and "Linear" in kinds
    assert learned.hf.transformer.wpe.weight.shape == (12, 16)  # the learned position table
    assert not any("wpe" in k or "position" in k for k, _ in rotary.named_parameters())


def test_tied_and_untied_head() -> None:
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.classifier.weight is tied.hf.get_input_embeddings().weight
    assert untied.classifier.weight is not untied.hf.get_input_embeddings().weight
    assert n_params(untied) - n_params(tied) == 11 * 16


def test_preset_sizes() -> None:
    small, tiny_lm = create_model("lm_small", V), create_model("lm_tiny", V)
    assert (small.config.num_hidden_layers, small.config.hidden_size, small.config.num_attention_heads,
            small.context) == (4, 128, 4, 64)
    # nanoGPT's model: 12 h^2 + 13 h per block (qkv, proj, 4h MLP, biases, 2 LayerNorms), tied embedding, positions,
    # final LayerNorm
    h, L = 128, 4
    assert n_params(small) == L * (12 * h * h + 13 * h) + V * h + 64 * h + 2 * h
    assert n_params(small) >= 8 * n_params(tiny_lm)
    assert n_params(create_model("lm_small", V, layers=2)) < n_params(small)


@pytest.mark.parametrize("kwargs,words", [
    ({"hidden": 30, "heads": 4}, ["hidden=30", "heads=4", "multiple"]),
    ({"layers": 0}, ["layers", "positive"]),
    ({"context": -1}, ["context", "positive"]),
    ({"intermediate": 0}, ["intermediate", "positive"]),
    ({"positions": "alibi"}, ["alibi", "learned", "rotary"]),
    ({"dropout": 1.0}, ["dropout", "[0, 1)"]),
    ({"hidden": 12, "heads": 4, "positions": "rotary"}, ["even head size", "3"]),
])
def test_keyword_errors(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ModelError) as err:
        create_model("gpt", V, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_misspelled_keyword_and_too_long_input() -> None:
    with pytest.raises(ModelError, match="'layers'"):
        create_model("lm_tiny", V, layer=3)
    with pytest.raises(ModelError, match="13 tokens is longer than the model's context of 12"):
        tiny()(torch.zeros(1, 13, dtype=torch.long))


# --------------------------------------------------------------------------------------------- hf:PATH
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_hf_causal_round_trip(tmp_path, positions: str) -> None:
    source = tiny(positions)
    source.hf.save_pretrained(tmp_path / "ckpt")
    loaded = create_model(f"hf:{tmp_path / 'ckpt'}", 11).eval()
    assert isinstance(loaded, CausalLM) and loaded.context == 12
    x = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_hf_causal_vocab_mismatch(tmp_path) -> None:
    tiny().hf.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ModelError) as err:
        create_model(f"hf:{tmp_path / 'ckpt'}", 65)
    msg = str(err.value)
    assert "vocabulary of 11 tokens" in msg and "has 65" in msg and "tokenizer" in msg


@pytest.mark.parametrize("layers", [None, [0]])
def test_hf_causal_padded_vocabulary_keeps_the_tokenizers_logits(tmp_path, layers) -> None:
    """A checkpoint whose embedding table is padded past its tokenizer (Pythia: 50,304 rows for 50,277 tokens)
    loads for the tokenizer's 11 tokens: the logits are the first 11 of the full model's, and the padding rows —
    made the most likely tokens here — are never generated."""
    torch.manual_seed(0)
    create_model("gpt", 16, context=12, layers=2, hidden=16, heads=2).hf.save_pretrained(tmp_path / "ckpt")
    loaded = create_model(f"hf:{tmp_path / 'ckpt'}", 11, **({} if layers is None else {"layers": layers})).eval()
    assert loaded.num_classes == 16 and loaded.vocab_used == 11
    x = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        full = loaded.hf(input_ids=x, use_cache=False).logits
        assert full.shape[-1] == 16 and torch.equal(loaded(x), full[..., :11])
        # every hidden state becomes all ones, so a token's logit is its head row's sum: -1 for the tokenizer's
        # tokens, +1 for the padding rows, which an untrimmed argmax would pick at every step
        loaded.hf.base_model.ln_f.weight.zero_()
        loaded.hf.base_model.ln_f.bias.fill_(1.0)
        head = loaded.hf.get_output_embeddings().weight
        head[:11] = -1.0 / head.shape[1]
        head[11:] = 1.0 / head.shape[1]
        assert int(loaded.hf(input_ids=x, use_cache=False).logits.argmax(-1).min()) >= 11
    for use_cache in (True, False):
        out = generate(loaded, x[:, :3], 5, greedy=True, use_cache=use_cache)
        assert int(out[:, 3:].max()) < 11


def test_hf_causal_layers_copies_kept_blocks(tmp_path) -> None:
    teacher = tiny(layers=4)
    teacher.hf.save_pretrained(tmp_path / "ckpt")
    student = create_model(f"hf:{tmp_path / 'ckpt'}", 11, layers=[1, 3])
    assert student.config.num_hidden_layers == 2 and student.config.leankd_kept_layers == [1, 3]
    for i, t in enumerate([1, 3]):
        for (_, a), (_, b) in zip(student.hf.transformer.h[i].named_parameters(),
                                  teacher.hf.transformer.h[t].named_parameters()):
            assert torch.equal(a, b)
    assert generate(student, torch.zeros(1, 2, dtype=torch.long), 3, greedy=True).shape == (1, 5)


# --------------------------------------------------------------------------------------------- copy_layers
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_copy_every_other_layer(positions: str) -> None:
    teacher = tiny(positions, layers=4)
    torch.manual_seed(1)
    student = create_model("gpt", 11, context=12, layers=2, hidden=16, heads=2, positions=positions)
    assert copy_layers(student, teacher) == [0, 2]
    s_blocks = student.hf.base_model.h if positions == "learned" else student.hf.base_model.layers
    t_blocks = teacher.hf.base_model.h if positions == "learned" else teacher.hf.base_model.layers
    for i, kept in enumerate([0, 2]):
        s, t = dict(s_blocks[i].named_parameters()), dict(t_blocks[kept].named_parameters())
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    s_rest = {k: v for k, v in student.named_parameters() if ".h." not in k and ".layers." not in k}
    t_rest = dict(teacher.named_parameters())
    assert s_rest and all(torch.equal(v, t_rest[k]) for k, v in s_rest.items())  # embeddings, norm, head
    assert student.config.leankd_kept_layers == [0, 2]


def test_copy_layers_list_and_errors() -> None:
    teacher = tiny(layers=4)
    student = tiny(layers=2)
    assert copy_layers(student, teacher, [1, 3]) == [1, 3]
    assert torch.equal(student.hf.transformer.h[1].mlp.c_fc.weight, teacher.hf.transformer.h[3].mlp.c_fc.weight)
    with pytest.raises(ModelError, match="2 teacher layers"):
        copy_layers(student, teacher, [0, 1, 2])
    with pytest.raises(ModelError, match="at most 2 student layers"):
        copy_layers(tiny(layers=3), teacher)
    with pytest.raises(ModelError) as err:
        copy_layers(tiny(hidden=8), teacher)
    msg = str(err.value)
    assert "hidden: student 8, teacher 16" in msg and "intermediate: student 32, teacher 64" in msg
    assert "as wide as the teacher" in msg and "drop the layer-copy" in msg
    with pytest.raises(ModelError, match="architecture: student LlamaForCausalLM, teacher GPTBigCodeForCausalLM"):
        copy_layers(tiny("rotary"), teacher)


# --------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_greedy_kv_cache_equals_window_recompute(positions: str) -> None:
    model = tiny(positions)
    prompt = torch.randint(0, 11, (3, 4))
    # 4 + 20 tokens outgrow the context of 12: both paths slide the window from there on
    cached = generate(model, prompt, 20, greedy=True)
    recomputed = generate(model, prompt, 20, greedy=True, use_cache=False)
    assert cached.shape == (3, 24) and torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, recomputed)


def test_kv_cache_loop_matches_hf_generate() -> None:
    """The own cache loop makes Hugging Face generate's greedy choices (its reference implementation)."""
    from transformers import GenerationConfig

    model = tiny("rotary")
    prompt = torch.randint(0, 11, (2, 3))
    config = GenerationConfig(do_sample=False, max_new_tokens=7, min_new_tokens=7, pad_token_id=0)
    with torch.no_grad():
        reference = model.hf.generate(prompt, generation_config=config)
    assert torch.equal(generate(model, prompt, 7, greedy=True), reference)


class Bigram(nn.Module):
    """A module obeying the causal-LM contract without being a CausalLM (no cache): logits = table[token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


def test_generate_any_contract_module_greedy_by_hand() -> None:
    table = torch.full((4, 4), -5.0)
    for a, b in [(0, 2), (2, 3), (3, 1), (1, 0)]:  # 0 -> 2 -> 3 -> 1 -> 0 -> ...
        table[a, b] = 5.0
    out = generate(Bigram(table), torch.tensor([[0], [3]]), 5, greedy=True)
    assert out.tolist() == [[0, 2, 3, 1, 0, 2], [3, 1, 0, 2, 3, 1]]
    seen = []

    def runnable(ids: torch.Tensor) -> torch.Tensor:  # not a module (an ONNX Runtime session, say): no context
        seen.append(ids.shape[1])
        return table[ids]

    assert torch.equal(generate(runnable, torch.tensor([[0], [3]]), 5, greedy=True), out)
    assert seen == [1, 2, 3, 4, 5]  # the whole sequence every step
    window = Bigram(table)
    window.context = 2
    calls = []
    window.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    assert torch.equal(generate(window, torch.tensor([[0], [3]]), 5, greedy=True), out)
    assert calls == [1, 2, 2, 2, 2]  # cropped to the context


def test_sampling_deterministic_per_seed_and_top_k() -> None:
    model = tiny()
    prompt = torch.randint(0, 11, (4, 3))
    a = generate(model, prompt, 8, seed=5, temperature=1.5)
    assert torch.equal(a, generate(model, prompt, 8, seed=5, temperature=1.5))
    assert torch.equal(a, generate(model, prompt, 8, seed=5, temperature=1.5, use_cache=False))
    assert not torch.equal(a, generate(model, prompt, 8, seed=6, temperature=1.5))
    # top_k=1 is greedy whatever the seed
    assert torch.equal(generate(model, prompt, 8, seed=9, top_k=1), generate(model, prompt, 8, greedy=True))
    # top_k=2 only ever draws one of the two most likely tokens
    table = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4))
    drawn = generate(Bigram(table), torch.zeros(64, 1, dtype=torch.long), 4, top_k=2)[:, 1:]
    assert set(drawn.unique().tolist()) == {0, 1}


def test_generate_keeps_mode_and_output_trains() -> None:
    model = tiny(dropout=0.1).train()
    out = generate(model, torch.zeros(2, 2, dtype=torch.long), 4)
    assert model.training
    model(out).sum().backward()  # on-policy KD trains on generated tokens (no inference tensors)
    assert model.classifier.weight.grad is not None


def test_generate_errors() -> None:
    model = tiny()
    with pytest.raises(ModelError, match="prompt_ids must be integer token ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ModelError, match="temperature must be > 0"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 2, temperature=0)
    with pytest.raises(ModelError, match="top_k"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 2, top_k=0)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_int8_dynamic_quantizes_every_linear_and_generates(positions: str) -> None:
    model = tiny(positions)
    prompt = torch.randint(0, 11, (2, 5))
    result = quantize_dynamic_int8(model, example_inputs=prompt)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert set(linears) <= set(result.quantized)  # lm_head and every block projection
    assert result.max_abs_diff is not None and result.max_abs_diff < 0.1
    assert isinstance(result.model, CausalLM)
    out = generate(result.model, prompt, 6, greedy=True)
    assert out.shape == (2, 11) and torch.equal(out, generate(result.model, prompt, 6, greedy=True,
                                                                use_cache=False))


def test_token_latency_keys() -> None:
    models = {"teacher": tiny(layers=2), "student": tiny(layers=1)}
    out = token_latency(models, torch.randint(0, 11, (2, 3)), batch_sizes=(1, 2), new_tokens=4, runs=2, rounds=2,
                        round_s=0.005)
    assert set(out) == {"teacher", "student"}
    for block in out.values():
        assert {"latency", "reliable", "noise", "load_avg", "threads", "kv_cache", "prompt_tokens"} <= set(block)
        assert block["kv_cache"] is True and block["prompt_tokens"] == 3 and isinstance(block["reliable"], bool)
        assert [r["batch_size"] for r in block["latency"]] == [1, 2]
        for row in block["latency"]:
            assert {"batch_size", "new_tokens", "median_ms", "ms_per_token", "spread", "round_spread"} <= set(row)
            assert row["new_tokens"] == 4 and row["median_ms"] > 0
            assert row["ms_per_token"] == pytest.approx(row["median_ms"] / 4, abs=1e-3)


def test_a_half_precision_causal_checkpoint_loads_with_fp32_weights(tmp_path):
    """transformers loads a checkpoint in the dtype it was saved in (most LMs ship bf16); leankd trains fp32 weights
    and leaves reduced precision to autocast, so a bf16 checkpoint comes back as fp32."""
    import torch

    from leankd.models import create_model

    model = create_model("gpt", 40, context=16, layers=2, hidden=16, heads=2)
    model.hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = create_model(f"hf:{tmp_path / 'bf16'}", 40)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    half = create_model(f"hf:{tmp_path / 'bf16'}", 40, layers=1)
    assert {p.dtype for p in half.parameters()} == {torch.float32}
