"""Tests of reference/gqa_moe.py (chapter 4 bonus: grouped-query attention and a mixture of experts).

The reference is checked against independent oracles: chapter 3's multi-head attention (GQA with as many groups as
heads), torch's own grouped-query attention (scaled_dot_product_attention with enable_gqa), transformers' Qwen3
MoE block (the same router and SwiGLU experts, when transformers is installed), a dense computation of every
expert, and the figures printed in the book's ch04/04_gqa and ch04/07_moe READMEs.
"""

from __future__ import annotations

import pytest
import torch

from reference import gpt, kv_cache
from reference import gqa_moe as ref

CFG = {"vocab_size": 53, "context_length": 16, "emb_dim": 16, "n_heads": 4, "n_kv_groups": 2, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True, "num_experts": 4, "num_experts_per_tok": 2, "hidden_dim": 12}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from several threads, and lose a lot when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gqa(seed=0, **init):
    torch.manual_seed(seed)
    return ref.GroupedQueryAttention(**{"d_in": 12, "d_out": 12, "dropout": 0.0, "num_heads": 6,
                                        "num_kv_groups": 3, **init}).eval()


def test_gqa_with_groups_equal_to_heads_is_multi_head_attention():
    att = gqa(num_kv_groups=6)
    torch.manual_seed(1)
    mha = kv_cache.MultiHeadAttention(d_in=12, d_out=12, context_length=8, dropout=0.0, num_heads=6).eval()
    with torch.no_grad():
        mha.out_proj.bias.zero_()
    mha.load_state_dict({**att.state_dict(), "out_proj.bias": mha.out_proj.bias, "mask": mha.mask})
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(att(x), mha(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_gqa_equals_torch_grouped_attention(groups):
    att = gqa(num_kv_groups=groups, qkv_bias=True)
    x = torch.randn(2, 5, 12)
    b, t, _ = x.shape
    q = att.W_query(x).view(b, t, 6, 2).transpose(1, 2)
    k = att.W_key(x).view(b, t, groups, 2).transpose(1, 2)
    v = att.W_value(x).view(b, t, groups, 2).transpose(1, 2)
    context = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = att.out_proj(context.transpose(1, 2).reshape(b, t, 12))
    with torch.no_grad():
        torch.testing.assert_close(att(x), expected, atol=1e-6, rtol=1e-6)


def test_gqa_refuses_groups_that_do_not_divide_the_heads():
    with pytest.raises(AssertionError):
        gqa(num_heads=4, num_kv_groups=3)


def test_gqa_cache_holds_the_groups_and_gives_the_uncached_output():
    att = gqa()
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        full = att(x)
        pieces = [att(x[:, :3], use_cache=True), att(x[:, 3:4], use_cache=True), att(x[:, 4:], use_cache=True)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-6, rtol=1e-6)
    assert att.cache_k.shape == (2, 3, 6, 2)  # num_kv_groups heads, not num_heads
    assert att.ptr_current_pos == 6
    assert "cache_k" not in att.state_dict()
    att.reset_cache()
    assert att.cache_k is None
    assert att.ptr_current_pos == 0


def moe(seed=0, **cfg):
    torch.manual_seed(seed)
    return ref.MoEFeedForward({**CFG, **cfg}).eval()


def dense_moe(module, x):
    """Every expert on every token, weighted by the routing table."""
    table = ref.routing_weights(module.gate(x), module.num_experts_per_tok)
    outputs = torch.stack([module.fc3[e](torch.nn.functional.silu(module.fc1[e](x)) * module.fc2[e](x))
                           for e in range(module.num_experts)], dim=-2)
    return (table.unsqueeze(-1) * outputs).sum(dim=-2)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_moe_equals_the_dense_computation(k):
    module = moe(num_experts_per_tok=k)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), dense_moe(module, x), atol=1e-6, rtol=1e-6)


def test_routing_weights_keep_k_experts_that_sum_to_one():
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    table = ref.routing_weights(scores, 2)
    expected = torch.softmax(torch.tensor([2.0, 1.0]), dim=0)
    torch.testing.assert_close(table, torch.tensor([[expected[0], 0.0, expected[1], 0.0]]))


def test_moe_runs_only_the_chosen_experts():
    module = moe()
    seen = [0] * module.num_experts
    for e in range(module.num_experts):
        module.fc1[e].register_forward_hook(lambda _m, inputs, _o, e=e: seen.__setitem__(e, seen[e] + len(inputs[0])))
    with torch.no_grad():
        module(torch.randn(2, 5, 16))
    assert sum(seen) == 2 * 5 * module.num_experts_per_tok


def test_moe_equals_transformers_qwen3_moe_block():
    modeling = pytest.importorskip("transformers.models.qwen3_moe.modeling_qwen3_moe")
    from transformers import Qwen3MoeConfig

    module = moe(num_experts_per_tok=2)
    config = Qwen3MoeConfig(hidden_size=16, moe_intermediate_size=12, num_experts=4, num_experts_per_tok=2,
                            norm_topk_prob=True, hidden_act="silu")
    block = modeling.Qwen3MoeSparseMoeBlock(config).eval()
    with torch.no_grad():
        block.gate.weight.copy_(module.gate.weight)
        for e in range(4):
            block.experts.gate_up_proj[e].copy_(torch.cat([module.fc1[e].weight, module.fc2[e].weight]))
            block.experts.down_proj[e].copy_(module.fc3[e].weight)
        x = torch.randn(2, 6, 16)
        torch.testing.assert_close(module(x), block(x), atol=1e-5, rtol=1e-5)


def test_block_uses_moe_only_with_experts():
    assert isinstance(ref.TransformerBlock(CFG).ff, ref.MoEFeedForward)
    assert isinstance(ref.TransformerBlock({**CFG, "num_experts": 0}).ff, gpt.FeedForward)


def test_model_cache_gives_the_uncached_logits():
    torch.manual_seed(3)
    model = ref.GPTModel(CFG).eval()
    idx = torch.randint(0, CFG["vocab_size"], (2, 9))
    with torch.no_grad():
        full = model(idx)
        model.reset_kv_cache()
        pieces = [model(idx[:, :5], use_cache=True)] + [model(idx[:, i:i + 1], use_cache=True) for i in range(5, 9)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert model.trf_blocks[0].att.cache_k.shape == (2, 2, 9, 4)


def test_the_books_kv_cache_figures():
    """ch04/04_gqa README: emb_dim 4096, 32 heads, 32 layers, 32,768 tokens, bf16, 4 groups (8 KV heads)."""
    cfg = {"emb_dim": 4096, "n_heads": 32, "n_layers": 32, "context_length": 32768}
    mha = ref.kv_cache_bytes(cfg)
    gqa_bytes = ref.kv_cache_bytes(cfg, kv_heads=8)
    assert f"{mha / 1e9:.2f} GB" == "17.18 GB"
    assert f"{gqa_bytes / 1e9:.2f} GB" == "4.29 GB"
    assert mha / gqa_bytes == 4.0


def test_the_books_moe_parameter_figures():
    """ch04/07_moe README: emb_dim 7168, dense SwiGLU hidden 14,336; 8 experts of 1,792, 2 active."""
    counts = ref.moe_parameters(7168, 1792, num_experts=8, num_experts_per_tok=2)
    assert 3 * 7168 * 14336 == 308_281_344  # the dense FFN
    assert counts == {"expert": 38_535_168, "router": 57_344, "total": 308_338_688, "active": 77_127_680}
