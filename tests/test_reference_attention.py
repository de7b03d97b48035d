"""Tests of reference/attention.py (chapter 3: coding attention mechanisms)."""

from __future__ import annotations

import ast
import copy
import inspect

import pytest
import torch
from torch import nn

import reference.attention
from reference.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention_v1,
    SelfAttention_v2,
    simplified_self_attention,
)

# The book's running example: "Your journey starts with one step", one 3-d embedding per token.
BOOK_INPUTS = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your
        [0.55, 0.87, 0.66],  # journey
        [0.57, 0.85, 0.64],  # starts
        [0.22, 0.58, 0.33],  # with
        [0.77, 0.25, 0.10],  # one
        [0.05, 0.80, 0.55],  # step
    ]
)
BOOK_BATCH = torch.stack((BOOK_INPUTS, BOOK_INPUTS), dim=0)  # (2, 6, 3)

D_IN, D_OUT, CONTEXT_LENGTH, NUM_HEADS = 6, 4, 8, 2


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> bool:
    return actual.shape == expected.shape and torch.allclose(actual, expected, rtol=0, atol=atol)


def _inputs(b: int = 2, num_tokens: int = CONTEXT_LENGTH, d_in: int = D_IN, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(b, num_tokens, d_in, generator=generator)


# Small versions of the three batched modules, with their output width.
BATCHED = {
    "CausalAttention": (lambda dropout: CausalAttention(D_IN, D_OUT, CONTEXT_LENGTH, dropout), D_OUT),
    "MultiHeadAttentionWrapper": (
        lambda dropout: MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT_LENGTH, dropout, NUM_HEADS),
        NUM_HEADS * D_OUT,
    ),
    "MultiHeadAttention": (
        lambda dropout: MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, dropout, NUM_HEADS),
        D_OUT,
    ),
}


def _build(name: str, dropout: float = 0.0, seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    factory, _ = BATCHED[name]
    return factory(dropout)


def test_attention_module_does_not_import_text_data():
    tree = ast.parse(inspect.getsource(reference.attention))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported  # the walk found the imports (torch at least)
    assert not any("text_data" in name for name in imported)


# --- simplified self-attention ------------------------------------------------------------------------


def test_simplified_self_attention_book_figures():
    # The context vectors printed in the book for "Your journey starts with one step".
    expected = torch.tensor(
        [
            [0.4421, 0.5931, 0.5790],
            [0.4419, 0.6515, 0.5683],
            [0.4431, 0.6496, 0.5671],
            [0.4304, 0.6298, 0.5510],
            [0.4671, 0.5910, 0.5266],
            [0.4177, 0.6503, 0.5645],
        ]
    )
    assert _close(simplified_self_attention(BOOK_INPUTS), expected, atol=1e-4)


def test_simplified_self_attention_matches_an_explicit_loop():
    inputs = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    expected = torch.empty_like(inputs)
    for i, query in enumerate(inputs):
        scores = torch.stack([torch.dot(query, x_j) for x_j in inputs])
        weights = torch.exp(scores) / torch.exp(scores).sum()
        expected[i] = sum(w * x_j for w, x_j in zip(weights, inputs))
    assert _close(simplified_self_attention(inputs), expected, atol=1e-5)


# --- SelfAttention_v1 / v2 ----------------------------------------------------------------------------


def test_self_attention_v1_book_figures():
    torch.manual_seed(123)
    sa_v1 = SelfAttention_v1(3, 2)
    expected = torch.tensor(
        [[0.2996, 0.8053], [0.3061, 0.8210], [0.3058, 0.8203], [0.2948, 0.7939], [0.2927, 0.7891], [0.2990, 0.8040]]
    )
    assert _close(sa_v1(BOOK_INPUTS).detach(), expected, atol=1e-4)


def test_self_attention_v1_parameters():
    sa_v1 = SelfAttention_v1(5, 3)
    params = dict(sa_v1.named_parameters())
    assert set(params) == {"W_query", "W_key", "W_value"}
    assert all(p.shape == (5, 3) for p in params.values())


def test_self_attention_v1_is_scaled_dot_product_attention():
    torch.manual_seed(0)
    sa_v1 = SelfAttention_v1(5, 4)
    x = torch.randn(6, 5)
    queries, keys, values = x @ sa_v1.W_query, x @ sa_v1.W_key, x @ sa_v1.W_value
    weights = torch.softmax(queries @ keys.T / 2.0, dim=-1)  # sqrt(d_out) = sqrt(4) = 2
    out = sa_v1(x)
    assert out.shape == (6, 4)
    assert _close(out.detach(), (weights @ values).detach())


def test_self_attention_v2_book_figures():
    torch.manual_seed(789)
    sa_v2 = SelfAttention_v2(3, 2)
    expected = torch.tensor(
        [
            [-0.0739, 0.0713],
            [-0.0748, 0.0703],
            [-0.0749, 0.0702],
            [-0.0760, 0.0685],
            [-0.0763, 0.0679],
            [-0.0754, 0.0693],
        ]
    )
    assert _close(sa_v2(BOOK_INPUTS).detach(), expected, atol=1e-4)


def test_self_attention_v1_with_v2_weights_transposed_gives_the_same_result():
    torch.manual_seed(0)
    sa_v2 = SelfAttention_v2(5, 3)
    sa_v1 = SelfAttention_v1(5, 3)
    with torch.no_grad():
        sa_v1.W_query.copy_(sa_v2.W_query.weight.T)
        sa_v1.W_key.copy_(sa_v2.W_key.weight.T)
        sa_v1.W_value.copy_(sa_v2.W_value.weight.T)
    x = torch.randn(4, 5)
    assert _close(sa_v1(x).detach(), sa_v2(x).detach())


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_self_attention_v2_bias_switch(qkv_bias):
    sa_v2 = SelfAttention_v2(5, 3, qkv_bias=qkv_bias)
    names = {"W_query.weight", "W_key.weight", "W_value.weight"}
    if qkv_bias:
        names |= {"W_query.bias", "W_key.bias", "W_value.bias"}
    assert set(dict(sa_v2.named_parameters())) == names
    assert isinstance(sa_v2.W_query, nn.Linear)


# --- CausalAttention ----------------------------------------------------------------------------------


def test_causal_attention_book_figures():
    torch.manual_seed(123)
    ca = CausalAttention(3, 2, context_length=6, dropout=0.0)
    context_vecs = ca(BOOK_BATCH).detach()
    expected = torch.tensor(
        [
            [-0.4519, 0.2216],
            [-0.5874, 0.0058],
            [-0.6300, -0.0632],
            [-0.5675, -0.0843],
            [-0.5526, -0.0981],
            [-0.5299, -0.1081],
        ]
    )
    assert context_vecs.shape == (2, 6, 2)
    assert _close(context_vecs[0], expected, atol=1e-4)
    assert _close(context_vecs[1], expected, atol=1e-4)


def test_causal_attention_mask_buffer():
    ca = CausalAttention(D_IN, D_OUT, context_length=5, dropout=0.0)
    expected = torch.tensor(
        [
            [0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1],
            [0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(ca.mask, expected)
    assert "mask" in ca.state_dict()  # a persistent buffer, not a parameter
    assert "mask" not in dict(ca.named_parameters())
    assert ca.d_out == D_OUT
    assert isinstance(ca.dropout, nn.Dropout)


def test_causal_attention_first_token_sees_only_itself():
    ca = _build("CausalAttention").eval()
    x = _inputs()
    out = ca(x).detach()
    # Token 0's only visible token is itself, so its weight is 1 and its context vector is its value vector.
    assert _close(out[:, 0], ca.W_value(x[:, 0]).detach())


def test_causal_attention_dropout_acts_on_the_attention_weights():
    torch.manual_seed(0)
    ca = CausalAttention(D_IN, D_OUT, CONTEXT_LENGTH, dropout=0.5).train()
    x = _inputs(b=16)
    out = ca(x).detach()
    values_0 = ca.W_value(x[:, 0]).detach()  # (16, D_OUT)
    # Token 0 has a single weight of 1: dropout turns it into 0 or 1 / (1 - 0.5) = 2, for the whole vector.
    dropped = out[:, 0].abs().sum(dim=-1) == 0
    kept = (out[:, 0] - 2 * values_0).abs().amax(dim=-1) < 1e-5
    assert bool((dropped | kept).all())
    assert bool(dropped.any())
    assert bool(kept.any())


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_causal_attention_bias_switch(qkv_bias):
    ca = CausalAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, qkv_bias=qkv_bias)
    has_bias = {name for name, _ in ca.named_parameters() if name.endswith("bias")}
    assert has_bias == ({"W_query.bias", "W_key.bias", "W_value.bias"} if qkv_bias else set())


# --- behaviour shared by the three batched modules -------------------------------------------------------


@pytest.mark.parametrize("name", list(BATCHED))
def test_output_shape(name):
    module = _build(name).eval()
    _, width = BATCHED[name]
    out = module(_inputs(b=3))
    assert out.shape == (3, CONTEXT_LENGTH, width)


@pytest.mark.parametrize("name", list(BATCHED))
@pytest.mark.parametrize("k", [1, 3, CONTEXT_LENGTH - 1])
def test_causal_later_tokens_do_not_change_earlier_outputs(name, k):
    module = _build(name).eval()
    x = _inputs()
    perturbed = x.clone()
    perturbed[:, k:] += torch.randn(2, CONTEXT_LENGTH - k, D_IN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, out_perturbed = module(x), module(perturbed)
    assert _close(out_perturbed[:, :k], out[:, :k])
    # The perturbation is real: the outputs from position k on do change.
    assert (out_perturbed[:, k:] - out[:, k:]).abs().amax() > 1e-3


@pytest.mark.parametrize("name", list(BATCHED))
def test_earlier_tokens_do_change_later_outputs(name):
    # Attention is not reduced to "each token on its own": the last output depends on the first token.
    module = _build(name).eval()
    x = _inputs()
    perturbed = x.clone()
    perturbed[:, 0] += 1.0
    with torch.no_grad():
        assert (module(perturbed)[:, -1] - module(x)[:, -1]).abs().amax() > 1e-4


@pytest.mark.parametrize("name", list(BATCHED))
@pytest.mark.parametrize("num_tokens", [1, 5])
def test_inputs_shorter_than_the_context_length(name, num_tokens):
    module = _build(name).eval()
    x = _inputs()
    with torch.no_grad():
        full = module(x)
        short = module(x[:, :num_tokens])
    _, width = BATCHED[name]
    assert short.shape == (2, num_tokens, width)
    assert _close(short, full[:, :num_tokens])


@pytest.mark.parametrize("name", list(BATCHED))
def test_batch_items_are_independent(name):
    module = _build(name).eval()
    x = _inputs(b=3)
    with torch.no_grad():
        out = module(x)
        for b in range(3):
            assert _close(out[b : b + 1], module(x[b : b + 1]))


@pytest.mark.parametrize("name", list(BATCHED))
def test_eval_mode_is_deterministic_with_dropout(name):
    module = _build(name, dropout=0.5).eval()
    x = _inputs()
    with torch.no_grad():
        first, second = module(x), module(x)
        no_dropout = _build(name, dropout=0.0, seed=999)
        no_dropout.load_state_dict(module.state_dict())
        reference_out = no_dropout.eval()(x)
    assert torch.equal(first, second)
    assert _close(first, reference_out)


@pytest.mark.parametrize("name", list(BATCHED))
def test_train_mode_applies_dropout(name):
    module = _build(name, dropout=0.5)
    x = _inputs()
    torch.manual_seed(1)
    with torch.no_grad():
        train_out = module.train()(x)
        eval_out = module.eval()(x)
    assert (train_out - eval_out).abs().amax() > 1e-3


@pytest.mark.parametrize("name", list(BATCHED))
def test_gradients_reach_every_parameter(name):
    module = _build(name).eval()
    module(_inputs()).sum().backward()
    for param_name, param in module.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


# --- MultiHeadAttentionWrapper ------------------------------------------------------------------------


def test_wrapper_book_figures():
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(3, 2, context_length=6, dropout=0.0, num_heads=2)
    context_vecs = mha(BOOK_BATCH).detach()
    expected = torch.tensor(
        [
            [-0.4519, 0.2216, 0.4772, 0.1063],
            [-0.5874, 0.0058, 0.5891, 0.3257],
            [-0.6300, -0.0632, 0.6202, 0.3860],
            [-0.5675, -0.0843, 0.5478, 0.3589],
            [-0.5526, -0.0981, 0.5321, 0.3428],
            [-0.5299, -0.1081, 0.5077, 0.3493],
        ]
    )
    assert context_vecs.shape == (2, 6, 4)
    assert _close(context_vecs[0], expected, atol=1e-4)


@pytest.mark.parametrize("num_heads", [1, 3])
def test_wrapper_concatenates_its_heads(num_heads):
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads).eval()
    assert isinstance(wrapper.heads, nn.ModuleList)
    assert len(wrapper.heads) == num_heads
    assert all(isinstance(head, CausalAttention) for head in wrapper.heads)
    x = _inputs()
    with torch.no_grad():
        out = wrapper(x)
        assert out.shape == (2, CONTEXT_LENGTH, num_heads * D_OUT)
        for h, head in enumerate(wrapper.heads):
            assert _close(out[..., h * D_OUT : (h + 1) * D_OUT], head(x))


def test_wrapper_heads_are_independently_initialised():
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads=2)
    assert not torch.equal(wrapper.heads[0].W_query.weight, wrapper.heads[1].W_query.weight)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_wrapper_passes_qkv_bias_to_its_heads(qkv_bias):
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads=2, qkv_bias=qkv_bias)
    assert all((head.W_key.bias is not None) == qkv_bias for head in wrapper.heads)


# --- MultiHeadAttention -------------------------------------------------------------------------------


def test_multihead_attention_book_figures():
    torch.manual_seed(123)
    mha = MultiHeadAttention(3, 2, context_length=6, dropout=0.0, num_heads=2)
    context_vecs = mha(BOOK_BATCH).detach()
    expected = torch.tensor(
        [[0.3190, 0.4858], [0.2943, 0.3897], [0.2856, 0.3593], [0.2693, 0.3873], [0.2639, 0.3928], [0.2575, 0.4028]]
    )
    assert context_vecs.shape == (2, 6, 2)
    assert _close(context_vecs[0], expected, atol=1e-4)
    assert _close(context_vecs[1], expected, atol=1e-4)


def test_multihead_attention_gpt2_size_parameter_count():
    mha = MultiHeadAttention(768, 768, context_length=1024, dropout=0.0, num_heads=12)
    assert sum(p.numel() for p in mha.parameters()) == 2_360_064
    assert mha.head_dim == 64
    assert mha.num_heads == 12
    assert mha.d_out == 768


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_attention_state_dict_and_bias_switch(qkv_bias):
    mha = MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, NUM_HEADS, qkv_bias=qkv_bias)
    expected = {"W_query.weight", "W_key.weight", "W_value.weight", "out_proj.weight", "out_proj.bias", "mask"}
    if qkv_bias:
        expected |= {"W_query.bias", "W_key.bias", "W_value.bias"}
    assert set(mha.state_dict()) == expected
    assert mha.state_dict()["mask"].shape == (CONTEXT_LENGTH, CONTEXT_LENGTH)
    n_params = sum(p.numel() for p in mha.parameters())
    assert n_params == 3 * D_IN * D_OUT + D_OUT * D_OUT + D_OUT + (3 * D_OUT if qkv_bias else 0)


def test_multihead_attention_requires_d_out_divisible_by_num_heads():
    with pytest.raises(AssertionError):
        MultiHeadAttention(D_IN, 6, CONTEXT_LENGTH, 0.0, num_heads=4)


def _load_heads_from(mha: MultiHeadAttention, heads: list[CausalAttention]) -> None:
    """Give head h the rows of mha's query/key/value projections that belong to head h."""
    with torch.no_grad():
        for h, head in enumerate(heads):
            rows = slice(h * mha.head_dim, (h + 1) * mha.head_dim)
            for name in ("W_query", "W_key", "W_value"):
                getattr(head, name).weight.copy_(getattr(mha, name).weight[rows])
                if getattr(mha, name).bias is not None:
                    getattr(head, name).bias.copy_(getattr(mha, name).bias[rows])


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_attention_with_one_head_equals_causal_attention_plus_out_proj(qkv_bias):
    torch.manual_seed(0)
    mha = MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads=1, qkv_bias=qkv_bias).eval()
    ca = CausalAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, qkv_bias=qkv_bias).eval()
    _load_heads_from(mha, [ca])
    x = _inputs()
    with torch.no_grad():
        assert _close(mha(x), mha.out_proj(ca(x)))


@pytest.mark.parametrize(("d_out", "num_heads"), [(4, 2), (12, 3), (8, 8)])
def test_multihead_attention_equals_split_heads_plus_out_proj(d_out, num_heads):
    # Each head attends with its own slice of the projections, scaled by sqrt(head_dim), and the heads'
    # outputs are concatenated in order before out_proj.
    torch.manual_seed(0)
    mha = MultiHeadAttention(D_IN, d_out, CONTEXT_LENGTH, 0.0, num_heads, qkv_bias=True).eval()
    wrapper = MultiHeadAttentionWrapper(D_IN, d_out // num_heads, CONTEXT_LENGTH, 0.0, num_heads, qkv_bias=True)
    _load_heads_from(mha, list(wrapper.heads))
    x = _inputs(b=3)
    with torch.no_grad():
        assert _close(mha(x), mha.out_proj(wrapper.eval()(x)), atol=1e-5)


def test_multihead_attention_state_dict_loads_into_a_fresh_module():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, NUM_HEADS).eval()
    clone = MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, NUM_HEADS).eval()
    x = _inputs()
    with torch.no_grad():
        assert not _close(clone(x), mha(x))
        clone.load_state_dict(copy.deepcopy(mha.state_dict()))
        assert torch.equal(clone(x), mha(x))
