"""Tests of reference/llama.py (chapter 5 bonus: from GPT to Llama 3.2).

The headline: the reference, loaded from data/tiny-llama32.safetensors through its own load_weights_into_llama,
gives the logits transformers' LlamaForCausalLM computed for the committed input ids. With the dev extra, the
RoPE tables and the RMSNorm are compared with transformers' own, component by component.
"""

from __future__ import annotations

import pytest
import torch

from graders.shared.checkpoints import tiny_checkpoint
from reference import llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_checkpoint("llama32")


@pytest.fixture(scope="module")
def cfg(tiny):
    return llama.config_from_hf(tiny.config)


@pytest.fixture(scope="module")
def model(tiny, cfg):
    model = llama.Llama3Model(cfg).eval()
    llama.load_weights_into_llama(model, cfg, tiny.weights)
    return model


def test_tiny_config_in_the_books_vocabulary(cfg):
    assert cfg["emb_dim"] // cfg["n_heads"] == 8
    assert cfg["n_kv_groups"] == 2
    assert cfg["rope_freq"] == {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_context_length": 8192}


def test_logits_equal_the_committed_transformers_logits(model, tiny):
    with torch.no_grad():
        logits = model(tiny.input_ids)
    torch.testing.assert_close(logits, tiny.logits, atol=1e-4, rtol=0)


def test_head_is_tied_without_lm_head(model):
    assert model.out_head.weight is model.tok_emb.weight


def test_lm_head_is_loaded_when_the_file_has_one(tiny, cfg):
    head = torch.randn(cfg["vocab_size"], cfg["emb_dim"], generator=torch.Generator().manual_seed(3))
    model = llama.Llama3Model(cfg)
    llama.load_weights_into_llama(model, cfg, {**tiny.weights, "lm_head.weight": head})
    assert torch.equal(model.out_head.weight, head)
    assert not torch.equal(model.tok_emb.weight, head)


def test_every_checkpoint_tensor_is_used(tiny, cfg):
    """Each parameter of the model, after loading, equals some tensor of the file (nothing left random)."""
    model = llama.Llama3Model(cfg)
    llama.load_weights_into_llama(model, cfg, tiny.weights)
    values = list(tiny.weights.values())
    for name, param in model.named_parameters():
        assert any(v.shape == param.shape and torch.equal(v, param) for v in values), name


def test_rope_scaling_covers_three_bands(cfg):
    """The tiny head's four frequencies: two kept, one smoothed, one divided by the factor."""
    plain_cos, _ = llama.compute_rope_params(8, theta_base=cfg["rope_base"], context_length=2)
    scaled_cos, _ = llama.compute_rope_params(8, theta_base=cfg["rope_base"], context_length=2,
                                              freq_config=cfg["rope_freq"])
    plain, scaled = torch.arccos(plain_cos[1, :4]), torch.arccos(scaled_cos[1, :4])  # angles at position 1
    torch.testing.assert_close(scaled[:2], plain[:2])
    assert plain[2] / 32 < scaled[2] < plain[2]
    torch.testing.assert_close(scaled[3], plain[3] / 32)


def test_rms_norm_equals_torch():
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 1e-3  # eps matters at this scale
    ours = llama.RMSNorm(16, eps=1e-5)
    torch.testing.assert_close(ours(x), torch.nn.RMSNorm(16, eps=1e-5)(x))


def test_gqa_with_one_head_per_group_equals_repeating_nothing():
    """num_kv_groups == num_heads is multi-head attention: every head has its own keys and values."""
    torch.manual_seed(1)
    att = llama.GroupedQueryAttention(16, 16, num_heads=4, num_kv_groups=4)
    assert att.group_size == 1
    x = torch.randn(2, 6, 16)
    cos, sin = llama.compute_rope_params(4, context_length=8)
    mask = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    out = att(x, mask, cos, sin)
    changed = x.clone()
    changed[:, -1] += 1
    torch.testing.assert_close(att(changed, mask, cos, sin)[:, :-1], out[:, :-1])  # causal


# -- against transformers (the dev extra) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf(tiny):
    transformers = pytest.importorskip("transformers", reason="the dev extra provides transformers")
    from transformers.models.llama import modeling_llama

    config = dict(tiny.config)
    config.pop("torch_dtype", None)
    return transformers, modeling_llama, transformers.LlamaConfig(**config)


def test_rope_params_equal_transformers_rotary_embedding(hf, cfg):
    _, modeling_llama, config = hf
    rotary = modeling_llama.LlamaRotaryEmbedding(config=config)
    positions = torch.arange(64).unsqueeze(0)
    hf_cos, hf_sin = rotary(torch.zeros(1, 64, 8), positions)  # (1, 64, head_dim)
    cos, sin = llama.compute_rope_params(8, theta_base=cfg["rope_base"], context_length=64,
                                         freq_config=cfg["rope_freq"])
    torch.testing.assert_close(cos, hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, hf_sin[0], atol=1e-6, rtol=0)


def test_apply_rope_equals_transformers(hf, cfg):
    _, modeling_llama, _ = hf
    x = torch.randn(2, 4, 10, 8, generator=torch.Generator().manual_seed(2))
    cos, sin = llama.compute_rope_params(8, theta_base=cfg["rope_base"], context_length=10,
                                         freq_config=cfg["rope_freq"])
    hf_rotated, _ = modeling_llama.apply_rotary_pos_emb(x, x, cos[None], sin[None])
    torch.testing.assert_close(llama.apply_rope(x, cos, sin), hf_rotated)


def test_rms_norm_equals_transformers(hf):
    _, modeling_llama, _ = hf
    norm = modeling_llama.LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(4))
    ours = llama.RMSNorm(16)
    ours.load_state_dict(norm.state_dict())
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours(x), norm(x))
