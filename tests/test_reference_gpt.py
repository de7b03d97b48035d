"""Tests of reference/gpt.py (chapter 4: implementing a GPT model from scratch to generate text)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from reference.attention import MultiHeadAttention
from reference.gpt import (
    GELU,
    GPT_CONFIG_124M,
    GPT_CONFIG_DEMO,
    ExampleDeepNeuralNetwork,
    FeedForward,
    GPTModel,
    LayerNorm,
    TransformerBlock,
    generate_text_simple,
    print_gradients,
)
from reference.tiktoken_offline import get_gpt2_tokenizer

# A tiny configuration for behaviour tests: fast, and small enough to check by hand.
TINY = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 12,
    "n_heads": 3,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}

# The book's chapter 4 batch: "Every effort moves you", "Every day holds a".
BOOK_BATCH = torch.tensor([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_model(**overrides) -> GPTModel:
    """A GPTModel whose parameters have shapes but no memory: counting is instant even for GPT-2 XL."""
    with torch.device("meta"):
        return GPTModel({**GPT_CONFIG_124M, **overrides})


def _tiny(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel({**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def gpt124():
    """The book's seeded GPT_CONFIG_124M model, and the random-number state right after it was built."""
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    return model, torch.get_rng_state()


# --- the book's figures ---------------------------------------------------------------------------------


def test_gpt_config_124m_is_the_books():
    assert GPT_CONFIG_124M == {
        "vocab_size": 50257,
        "context_length": 1024,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }


def test_124m_parameter_count(gpt124):
    model, _ = gpt124
    assert _n_params(model) == 163_009_536


def test_124m_parameter_count_without_the_output_head(gpt124):
    model, _ = gpt124
    assert _n_params(model) - _n_params(model.out_head) == 124_412_160


def test_124m_size_in_float32_megabytes(gpt124):
    model, _ = gpt124
    assert f"{_n_params(model) * 4 / (1024 * 1024):.2f}" == "621.83"


def test_124m_embedding_and_output_head_shapes(gpt124):
    model, _ = gpt124
    assert model.tok_emb.weight.shape == (50257, 768)
    assert model.out_head.weight.shape == (50257, 768)


def test_124m_parameter_count_with_qkv_bias():
    assert _n_params(_meta_model(qkv_bias=True)) == 163_037_184


@pytest.mark.parametrize(
    ("size", "emb_dim", "n_layers", "n_heads", "expected"),
    [
        ("medium", 1024, 24, 16, 406_212_608),
        ("large", 1280, 36, 20, 838_220_800),
        ("xl", 1600, 48, 25, 1_637_792_000),
    ],
)
def test_larger_gpt2_parameter_counts(size, emb_dim, n_layers, n_heads, expected):
    assert _n_params(_meta_model(emb_dim=emb_dim, n_layers=n_layers, n_heads=n_heads)) == expected


def test_feedforward_parameter_count_at_768():
    with torch.device("meta"):
        assert _n_params(FeedForward(GPT_CONFIG_124M)) == 4_722_432


def test_seeded_untrained_124m_generation(gpt124):
    model, _ = gpt124
    model.eval()
    idx = torch.tensor([get_gpt2_tokenizer().encode("Hello, I am")])
    out = generate_text_simple(model, idx, max_new_tokens=10, context_size=1024)
    expected = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]
    assert out.tolist() == [expected]


def test_seeded_124m_logits_in_training_mode(gpt124):
    # The book calls the fresh model on its batch without model.eval(): dropout is on, and draws from the
    # random-number generator right after the weights were built.
    model, rng_state = gpt124
    model.train()
    torch.set_rng_state(rng_state)
    with torch.no_grad():
        out = model(BOOK_BATCH)
    model.eval()
    assert out.shape == (2, 4, 50257)
    corners = torch.stack([out[0, 0, :3], out[0, 0, -3:], out[1, 3, :3], out[1, 3, -3:]])
    expected = torch.tensor(
        [[0.3613, 0.4222, -0.0711], [0.3483, 0.4661, -0.2838], [-0.1565, 0.3926, 0.3288], [1.2630, -0.1858, 0.0388]]
    )
    assert torch.allclose(corners, expected, atol=1e-4, rtol=0)


def test_layer_norm_book_example():
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)
    layer = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
    out = layer(batch_example)
    out_ln = LayerNorm(emb_dim=6)(out)
    var = out_ln.var(dim=-1, unbiased=False)
    assert torch.allclose(out_ln.mean(dim=-1), torch.zeros(2), atol=1e-6)
    # eps keeps the variance just below 1 for these small activations.
    assert torch.allclose(var, torch.tensor([0.9995, 0.9997]), atol=1e-4)


def test_shortcut_demo_gradients_without_shortcut():
    torch.manual_seed(123)
    model = ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut=False)
    grads = print_gradients(model, torch.tensor([[1.0, 0.0, -1.0]]))
    expected = [0.00020173587836325169, 0.00012011159560643137, 0.0007152039906941354, 0.0013988736318424344,
                0.005049645435065031]
    assert list(grads) == [f"layers.{i}.0.weight" for i in range(5)]
    assert list(grads.values()) == pytest.approx(expected, rel=1e-5)


def test_shortcut_demo_gradients_with_shortcut():
    torch.manual_seed(123)
    model = ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut=True)
    grads = print_gradients(model, torch.tensor([[1.0, 0.0, -1.0]]))
    expected = [0.22169792652130127, 0.20694106817245483, 0.32896995544433594, 0.2665732204914093,
                1.3258540630340576]
    assert list(grads.values()) == pytest.approx(expected, rel=1e-5)


def test_print_gradients_prints_one_line_per_weight(capsys):
    torch.manual_seed(123)
    print_gradients(ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut=False), torch.tensor([[1.0, 0.0, -1.0]]))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("layers.0.0.weight has gradient mean of 0.0002017")


# --- the state_dict is the book's -----------------------------------------------------------------------


def _book_state_dict_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the book's GPTModel, in order, written out from chapter 4's code."""
    emb, ctx, vocab = cfg["emb_dim"], cfg["context_length"], cfg["vocab_size"]
    shapes = {"tok_emb.weight": (vocab, emb), "pos_emb.weight": (ctx, emb)}
    for b in range(cfg["n_layers"]):
        # A module's own buffers come before its children's entries: att.mask before att.W_query.
        block = {
            "att.mask": (ctx, ctx),
            "att.W_query.weight": (emb, emb),
            "att.W_key.weight": (emb, emb),
            "att.W_value.weight": (emb, emb),
            "att.out_proj.weight": (emb, emb),
            "att.out_proj.bias": (emb,),
            "ff.layers.0.weight": (4 * emb, emb),
            "ff.layers.0.bias": (4 * emb,),
            "ff.layers.2.weight": (emb, 4 * emb),
            "ff.layers.2.bias": (emb,),
            "norm1.scale": (emb,),
            "norm1.shift": (emb,),
            "norm2.scale": (emb,),
            "norm2.shift": (emb,),
        }
        if cfg["qkv_bias"]:
            block = {
                "att.mask": (ctx, ctx),
                "att.W_query.weight": (emb, emb),
                "att.W_query.bias": (emb,),
                "att.W_key.weight": (emb, emb),
                "att.W_key.bias": (emb,),
                "att.W_value.weight": (emb, emb),
                "att.W_value.bias": (emb,),
                **block,
            }
        shapes.update({f"trf_blocks.{b}.{key}": shape for key, shape in block.items()})
    shapes["final_norm.scale"] = (emb,)
    shapes["final_norm.shift"] = (emb,)
    shapes["out_head.weight"] = (vocab, emb)
    return shapes


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_state_dict_keys_and_shapes_are_the_books(qkv_bias):
    cfg = {**TINY, "qkv_bias": qkv_bias}
    actual = {key: tuple(value.shape) for key, value in GPTModel(cfg).state_dict().items()}
    expected = _book_state_dict_shapes(cfg)
    assert sorted(actual) == sorted(expected)
    assert actual == expected


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_state_dict_order_is_the_books(qkv_bias):
    cfg = {**TINY, "qkv_bias": qkv_bias}
    assert list(GPTModel(cfg).state_dict()) == list(_book_state_dict_shapes(cfg))


def test_parameters_are_built_in_the_books_order():
    # The first weights drawn after the seed are the token embedding's, the last the output head's.
    torch.manual_seed(7)
    tok_emb = nn.Embedding(TINY["vocab_size"], TINY["emb_dim"])
    model = _tiny(seed=7)
    assert torch.equal(model.tok_emb.weight, tok_emb.weight)
    # Rebuilding the same parts in the book's order, from the same seed, gives the same output head.
    torch.manual_seed(7)
    nn.Embedding(TINY["vocab_size"], TINY["emb_dim"])
    nn.Embedding(TINY["context_length"], TINY["emb_dim"])
    for _ in range(TINY["n_layers"]):
        TransformerBlock(TINY)
    LayerNorm(TINY["emb_dim"])
    out_head = nn.Linear(TINY["emb_dim"], TINY["vocab_size"], bias=False)
    assert torch.equal(model.out_head.weight, out_head.weight)


def test_state_dict_loads_strictly_into_a_fresh_model():
    source, target = _tiny(seed=1), _tiny(seed=2)
    target.load_state_dict(source.state_dict(), strict=True)
    idx = torch.randint(0, TINY["vocab_size"], (2, 6))
    with torch.no_grad():
        assert torch.equal(target(idx), source(idx))


# --- LayerNorm, GELU, FeedForward -----------------------------------------------------------------------


def test_layer_norm_attributes():
    ln = LayerNorm(7)
    assert ln.eps == 1e-5
    assert torch.equal(ln.scale.data, torch.ones(7))
    assert torch.equal(ln.shift.data, torch.zeros(7))
    assert set(dict(ln.named_parameters())) == {"scale", "shift"}


def test_layer_norm_matches_torch_layer_norm():
    torch.manual_seed(0)
    ln = LayerNorm(10)
    with torch.no_grad():
        ln.scale.normal_()
        ln.shift.normal_()
    x = torch.randn(3, 4, 10) * 5 + 2
    expected = nn.functional.layer_norm(x, (10,), ln.scale, ln.shift, eps=1e-5)
    assert torch.allclose(ln(x), expected, atol=1e-5, rtol=0)


def test_layer_norm_uses_the_biased_variance():
    x = torch.tensor([[1.0, 3.0]])  # mean 2, biased variance 1 (the unbiased one would be 2)
    expected = torch.tensor([[-1.0, 1.0]]) / torch.sqrt(torch.tensor(1.0 + 1e-5))
    assert torch.allclose(LayerNorm(2)(x), expected, atol=1e-7)


def test_gelu_is_the_tanh_approximation():
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(GELU()(x), nn.functional.gelu(x, approximate="tanh"), atol=1e-6, rtol=0)


def test_gelu_is_not_the_exact_gelu():
    x = torch.linspace(-3, 3, 101)
    assert (GELU()(x) - nn.functional.gelu(x)).abs().max() > 1e-4


def test_feedforward_structure():
    ff = FeedForward(TINY)
    assert isinstance(ff.layers, nn.Sequential)
    assert [type(layer) for layer in ff.layers] == [nn.Linear, GELU, nn.Linear]
    assert (ff.layers[0].in_features, ff.layers[0].out_features) == (12, 48)
    assert (ff.layers[2].in_features, ff.layers[2].out_features) == (48, 12)


def test_feedforward_acts_on_each_token_alone():
    torch.manual_seed(0)
    ff = FeedForward(TINY)
    x = torch.randn(2, 5, 12)
    expected = ff.layers[2](GELU()(ff.layers[0](x)))
    assert torch.allclose(ff(x), expected)
    assert torch.allclose(ff(x[:, 2:3]), ff(x)[:, 2:3])


# --- TransformerBlock -----------------------------------------------------------------------------------


def test_transformer_block_attributes():
    block = TransformerBlock(TINY)
    assert isinstance(block.att, MultiHeadAttention)
    assert isinstance(block.ff, FeedForward)
    assert isinstance(block.norm1, LayerNorm)
    assert isinstance(block.norm2, LayerNorm)
    assert isinstance(block.drop_shortcut, nn.Dropout)
    assert block.att.num_heads == 3
    assert block.att.W_query.bias is None


def test_transformer_block_is_pre_layernorm_with_two_shortcuts():
    torch.manual_seed(0)
    block = TransformerBlock(TINY).eval()
    with torch.no_grad():
        for ln in (block.norm1, block.norm2):
            ln.scale.normal_()
            ln.shift.normal_()
        x = torch.randn(2, 6, 12)
        h = x + block.att(block.norm1(x))
        expected = h + block.ff(block.norm2(h))
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_transformer_block_keeps_the_shape():
    torch.manual_seed(123)
    x = torch.rand(2, 4, 768)
    block = TransformerBlock(GPT_CONFIG_124M)
    assert block(x).shape == (2, 4, 768)


def test_transformer_block_dropout_is_on_the_shortcut_branches():
    block = TransformerBlock({**TINY, "drop_rate": 0.5})
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        assert not torch.equal(block.train()(x), block.eval()(x))
        assert torch.equal(block.eval()(x), block.eval()(x))


# --- GPTModel -------------------------------------------------------------------------------------------


def test_gpt_model_attributes():
    model = GPTModel(TINY)
    assert isinstance(model.tok_emb, nn.Embedding)
    assert isinstance(model.pos_emb, nn.Embedding)
    assert isinstance(model.drop_emb, nn.Dropout)
    assert isinstance(model.trf_blocks, nn.Sequential)
    assert len(model.trf_blocks) == 2
    assert all(isinstance(block, TransformerBlock) for block in model.trf_blocks)
    assert isinstance(model.final_norm, LayerNorm)
    assert isinstance(model.out_head, nn.Linear)
    assert model.out_head.bias is None


def test_gpt_model_forward_is_the_composition_of_its_parts():
    model = _tiny()
    idx = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(7))
        for block in model.trf_blocks:
            x = block(x)
        expected = model.out_head(model.final_norm(x))
        assert torch.allclose(model(idx), expected, atol=1e-6)


def test_gpt_model_output_shape_for_inputs_up_to_the_context_length():
    model = _tiny()
    for n in (1, 5, 8):
        assert model(torch.zeros(2, n, dtype=torch.long)).shape == (2, n, 50)


def test_gpt_model_position_ids_are_made_on_the_inputs_device():
    model = _tiny()
    idx = torch.zeros(1, 5, dtype=torch.long)
    with mock.patch("torch.arange", wraps=torch.arange) as arange:
        model(idx)
    assert arange.call_args.kwargs.get("device") == idx.device


@pytest.mark.parametrize("k", [1, 4, 7])
def test_gpt_model_is_causal(k):
    model = _tiny()
    idx = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[:, k:] = (changed[:, k:] + 1) % 50  # a different token at every position from k on
    with torch.no_grad():
        out, out_changed = model(idx), model(changed)
    assert torch.allclose(out[:, :k], out_changed[:, :k], atol=1e-6)
    assert (out[:, k:] - out_changed[:, k:]).abs().max() > 1e-3


def test_gpt_model_later_positions_see_earlier_tokens():
    model = _tiny()
    idx = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 50
    with torch.no_grad():
        assert (model(idx)[0, -1] - model(changed)[0, -1]).abs().max() > 1e-4


def test_gpt_model_gradients_reach_every_parameter():
    model = _tiny()
    model(torch.randint(0, 50, (2, 8))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- generate_text_simple -------------------------------------------------------------------------------


def test_generate_text_simple_is_greedy():
    model = _tiny()
    idx = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(4))
    out = generate_text_simple(model, idx, max_new_tokens=4, context_size=8)
    assert out.shape == (3, 6)
    assert torch.equal(out[:, :2], idx)
    expected = idx
    with torch.no_grad():
        for _ in range(4):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_generate_text_simple_crops_to_the_context_size():
    model = _tiny()
    lengths = []
    original_forward = model.forward

    def recording_forward(idx):
        lengths.append(idx.shape[1])
        return original_forward(idx)

    model.forward = recording_forward
    generate_text_simple(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=6, context_size=5)
    assert lengths == [3, 4, 5, 5, 5, 5]


def test_generate_text_simple_needs_no_gradients():
    model = _tiny()
    out = generate_text_simple(model, torch.zeros(1, 2, dtype=torch.long), max_new_tokens=2, context_size=8)
    assert not out.requires_grad


# --- the demo configuration -----------------------------------------------------------------------------


def test_demo_config_is_small_with_gpt2s_vocabulary():
    assert set(GPT_CONFIG_DEMO) == set(GPT_CONFIG_124M)
    assert GPT_CONFIG_DEMO["vocab_size"] == 50257
    assert 64 <= GPT_CONFIG_DEMO["context_length"] <= 128
    assert GPT_CONFIG_DEMO["emb_dim"] % GPT_CONFIG_DEMO["n_heads"] == 0
    with torch.device("meta"):
        assert _n_params(GPTModel(GPT_CONFIG_DEMO)) < 10_000_000
