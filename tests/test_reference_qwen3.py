"""Tests of reference/qwen3.py (chapter 5 bonus: Qwen3 from scratch).

The headline: the reference, built from the tiny checkpoint's configuration and loaded through its own
load_weights_into_qwen, gives the logits transformers computed (data/tiny-qwen3-logits.safetensors). With
transformers installed (the dev extra), its RMSNorm, RoPE and attention are compared with Qwen3's own modules.
"""

from __future__ import annotations

import pytest
import torch

from graders.shared.checkpoints import tiny_checkpoint
from reference import qwen3
from reference.qwen3 import (
    FeedForward,
    GroupedQueryAttention,
    Qwen3Model,
    RMSNorm,
    apply_rope,
    compute_rope_params,
    load_weights_into_qwen,
)


def book_config(config: dict) -> dict:
    """The book's configuration for a transformers Qwen3Config (as a dict)."""
    return {
        "vocab_size": config["vocab_size"],
        "context_length": config["max_position_embeddings"],
        "emb_dim": config["hidden_size"],
        "n_heads": config["num_attention_heads"],
        "n_layers": config["num_hidden_layers"],
        "hidden_dim": config["intermediate_size"],
        "head_dim": config["head_dim"],
        "qk_norm": True,
        "n_kv_groups": config["num_key_value_heads"],
        "rope_base": config["rope_parameters"]["rope_theta"],
        "dtype": torch.float32,
    }


@pytest.fixture(scope="module")
def tiny():
    checkpoint = tiny_checkpoint("qwen3")
    cfg = book_config(checkpoint.config)
    torch.manual_seed(0)
    model = Qwen3Model(cfg).eval()
    load_weights_into_qwen(model, cfg, checkpoint.weights)
    return checkpoint, cfg, model


def test_the_tiny_checkpoint_gives_the_committed_logits(tiny):
    checkpoint, _, model = tiny
    with torch.no_grad():
        logits = model(checkpoint.input_ids)
    assert logits.shape == checkpoint.logits.shape == (2, 12, 96)
    torch.testing.assert_close(logits, checkpoint.logits, rtol=0, atol=1e-4)


def test_the_loader_ties_the_head_and_fills_every_parameter(tiny):
    checkpoint, _, model = tiny
    assert model.out_head.weight is model.tok_emb.weight
    assert "lm_head.weight" not in checkpoint.weights
    assert len({p.data_ptr() for p in model.parameters()}) == len(checkpoint.weights)


def test_an_untied_checkpoint_loads_its_own_head(tiny):
    checkpoint, cfg, _ = tiny
    head = torch.randn(cfg["vocab_size"], cfg["emb_dim"])
    model = Qwen3Model(cfg)
    load_weights_into_qwen(model, cfg, {**checkpoint.weights, "lm_head.weight": head})
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, head)


def test_the_loader_refuses_a_wrong_shape(tiny):
    checkpoint, cfg, _ = tiny
    weights = dict(checkpoint.weights)
    weights["model.norm.weight"] = torch.ones(cfg["emb_dim"] + 1)
    with pytest.raises(ValueError, match="model.norm.weight"):
        load_weights_into_qwen(Qwen3Model(cfg), cfg, weights)


def test_the_buffers_stay_out_of_the_state_dict(tiny):
    _, cfg, model = tiny
    assert "cos" not in model.state_dict()
    assert "sin" not in model.state_dict()
    assert model.cos.shape == model.sin.shape == (cfg["context_length"], cfg["head_dim"])


def test_rms_norm_has_no_mean_and_keeps_the_dtype():
    norm = RMSNorm(6)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    expected = x / torch.sqrt((x**2).mean() + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16
    shifted = RMSNorm(6, bias=True)
    torch.testing.assert_close(shifted(x), expected)  # the shift starts at zero


def test_rms_norm_eps_matters_for_small_inputs():
    x = 1e-3 * torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(RMSNorm(8)(x), RMSNorm(8, eps=1e-5)(x), atol=1e-3)


def test_rope_tables_and_rotation():
    cos, sin = compute_rope_params(head_dim=8, theta_base=1_000_000, context_length=5)
    assert cos.shape == sin.shape == (5, 8)
    torch.testing.assert_close(cos[0], torch.ones(8))
    torch.testing.assert_close(cos[:, :4], cos[:, 4:])  # both halves share the angles
    torch.testing.assert_close(cos[1, 1], torch.cos(torch.tensor(1_000_000 ** (-2 / 8))))
    x = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(2))
    turned = apply_rope(x, cos, sin)
    # A rotation keeps each pair's length, and position 0 is not turned.
    torch.testing.assert_close(turned[..., :4] ** 2 + turned[..., 4:] ** 2, x[..., :4] ** 2 + x[..., 4:] ** 2)
    torch.testing.assert_close(turned[:, :, 0], x[:, :, 0])


def test_rope_scores_depend_on_the_distance_only():
    cos, sin = compute_rope_params(head_dim=8, theta_base=1_000_000, context_length=12)
    q, k = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    queries, keys = q.expand(1, 1, 12, 8), k.expand(1, 1, 12, 8)
    scores = apply_rope(queries, cos, sin) @ apply_rope(keys, cos, sin).transpose(2, 3)  # (1, 1, 12, 12)
    torch.testing.assert_close(scores[0, 0, 5, 2], scores[0, 0, 9, 6], atol=1e-5, rtol=1e-5)


def test_gqa_equals_multi_head_attention_when_groups_equal_heads():
    torch.manual_seed(4)
    att = GroupedQueryAttention(d_in=12, num_heads=3, num_kv_groups=3, head_dim=4)
    x = torch.randn(2, 5, 12)
    cos, sin = compute_rope_params(4, 10_000, 5)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    out = att(x, mask, cos, sin)
    assert out.shape == (2, 5, 12)
    changed = x.clone()
    changed[:, -1] += 1
    torch.testing.assert_close(att(changed, mask, cos, sin)[:, :-1], out[:, :-1])  # causal


def test_the_feed_forward_gates_with_silu():
    cfg = {"emb_dim": 4, "hidden_dim": 6, "dtype": torch.float32}
    torch.manual_seed(5)
    ff = FeedForward(cfg)
    x = torch.randn(1, 3, 4)
    expected = ff.fc3(torch.nn.functional.silu(ff.fc1(x)) * ff.fc2(x))
    torch.testing.assert_close(ff(x), expected)


def test_the_06b_config_is_the_published_one():
    cfg = qwen3.QWEN3_CONFIG_06_B
    assert (cfg["emb_dim"], cfg["n_heads"], cfg["head_dim"], cfg["n_kv_groups"]) == (1024, 16, 128, 8)
    assert cfg["rope_base"] == 1_000_000.0
    assert cfg["n_layers"] == 28


# -- component comparisons with transformers' Qwen3 (the dev extra) ---------------------------------------------

def test_components_equal_transformers(tiny):
    pytest.importorskip("transformers", reason="the dev extra (pip install -e .[dev]) provides transformers")
    from transformers.models.qwen3 import modeling_qwen3 as hf

    from tests import transformers_fixtures as fixtures

    checkpoint, cfg, model = tiny
    config = dict(checkpoint.config)
    config.pop("torch_dtype", None)
    hf_model = fixtures.build("qwen3", config)
    hf_model.load_state_dict(checkpoint.weights, strict=False)
    hf_model.tie_weights()
    x = torch.randn(2, 7, cfg["emb_dim"], generator=torch.Generator().manual_seed(6))
    hf_layer, block = hf_model.model.layers[0], model.trf_blocks[0]

    with torch.no_grad():
        torch.testing.assert_close(block.norm1(x), hf_layer.input_layernorm(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(block.ff(x), hf_layer.mlp(x), rtol=0, atol=1e-5)

        positions = torch.arange(7).unsqueeze(0).expand(2, 7)
        hf_cos, hf_sin = hf_model.model.rotary_emb(x, positions)  # (2, 7, head_dim)
        torch.testing.assert_close(model.cos[:7], hf_cos[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.sin[:7], hf_sin[0], rtol=0, atol=1e-6)

        heads = torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(7))
        hf_q, _ = hf.apply_rotary_pos_emb(heads, heads, hf_cos, hf_sin)
        torch.testing.assert_close(apply_rope(heads, model.cos, model.sin), hf_q, rtol=0, atol=1e-6)
