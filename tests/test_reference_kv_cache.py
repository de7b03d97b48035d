"""Tests of reference/kv_cache.py (chapter 4 bonus: generation with a KV cache)."""

from __future__ import annotations

import pytest
import torch

from reference import gpt, kv_cache
from reference.kv_cache import GPTModel, generate_text_simple_cached

CFG = {
    "vocab_size": 97,
    "context_length": 24,
    "emb_dim": 16,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": True,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from several threads, and lose a lot when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    """(reference.gpt.GPTModel, reference.kv_cache.GPTModel) with the same weights, in eval mode."""
    torch.manual_seed(11)
    plain = gpt.GPTModel(CFG).eval()
    cached = GPTModel(CFG).eval()
    cached.load_state_dict(plain.state_dict(), strict=True)
    return plain, cached


def _prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CFG["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_and_shapes_equal_the_plain_models():
    plain, cached = gpt.GPTModel(CFG).state_dict(), GPTModel(CFG).state_dict()
    assert list(cached) == list(plain)
    assert all(cached[key].shape == plain[key].shape for key in plain)


def test_the_cache_is_not_in_the_state_dict(models):
    _, cached = models
    generate_text_simple_cached(cached, _prompt(1, 3), max_new_tokens=2)
    assert not any("cache" in key for key in cached.state_dict())


def test_same_seed_builds_the_same_weights():
    torch.manual_seed(5)
    plain = gpt.GPTModel(CFG)
    torch.manual_seed(5)
    cached = GPTModel(CFG)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), cached.state_dict().values()))


def test_a_cached_model_loads_into_the_plain_model():
    torch.manual_seed(1)
    cached = GPTModel(CFG)
    plain = gpt.GPTModel(CFG)
    plain.load_state_dict(cached.state_dict(), strict=True)
    assert torch.equal(plain.out_head.weight, cached.out_head.weight)


def test_forward_without_cache_equals_the_plain_model(models):
    plain, cached = models
    idx = _prompt(3, 10)
    with torch.no_grad():
        assert torch.equal(cached(idx), plain(idx))


def test_prefill_then_one_token_equals_the_full_forward(models):
    plain, cached = models
    idx = _prompt(2, 9)
    with torch.no_grad():
        full = plain(idx)
        cached.reset_kv_cache()
        prefill = cached(idx[:, :6], use_cache=True)
        steps = [cached(idx[:, i : i + 1], use_cache=True) for i in range(6, 9)]
    assert torch.allclose(prefill, full[:, :6], atol=1e-5)
    assert torch.allclose(torch.cat(steps, dim=1), full[:, 6:], atol=1e-5)


def test_a_chunk_fed_with_the_cache_stays_causal(models):
    # Several new tokens at once: each must still see only the tokens up to it.
    plain, cached = models
    idx = _prompt(1, 10)
    with torch.no_grad():
        cached.reset_kv_cache()
        cached(idx[:, :4], use_cache=True)
        chunk = cached(idx[:, 4:], use_cache=True)
        assert torch.allclose(chunk, plain(idx)[:, 4:], atol=1e-5)


@pytest.mark.parametrize(("batch", "prompt_length"), [(1, 1), (1, 5), (3, 1), (3, 4)])
def test_cached_generation_equals_uncached_generation(models, batch, prompt_length):
    plain, cached = models
    idx = _prompt(batch, prompt_length, seed=batch * 10 + prompt_length)
    expected = gpt.generate_text_simple(plain, idx, max_new_tokens=12, context_size=CFG["context_length"])
    out = generate_text_simple_cached(cached, idx, max_new_tokens=12)
    assert out.shape == (batch, prompt_length + 12)
    assert torch.equal(out, expected)


def test_use_cache_false_equals_uncached_generation(models):
    plain, cached = models
    idx = _prompt(2, 3)
    expected = gpt.generate_text_simple(plain, idx, max_new_tokens=5, context_size=CFG["context_length"])
    assert torch.equal(generate_text_simple_cached(cached, idx, max_new_tokens=5, use_cache=False), expected)


@pytest.mark.parametrize("context_size", [6, CFG["context_length"]])
def test_generation_past_the_context_window_equals_uncached_generation(models, context_size):
    # 5 + 30 tokens do not fit in the window: the uncached generation slides it, the cached one must follow.
    plain, cached = models
    idx = _prompt(2, 5, seed=3)
    expected = gpt.generate_text_simple(plain, idx, max_new_tokens=30, context_size=context_size)
    assert torch.equal(generate_text_simple_cached(cached, idx, 30, context_size=context_size), expected)


def test_a_prompt_longer_than_the_context_is_cropped(models):
    plain, cached = models
    idx = _prompt(1, CFG["context_length"] + 7)
    expected = gpt.generate_text_simple(plain, idx, max_new_tokens=3, context_size=CFG["context_length"])
    assert torch.equal(generate_text_simple_cached(cached, idx, 3), expected)


def test_the_cache_is_reset_between_prompts(models):
    plain, cached = models
    first, second = _prompt(1, 4, seed=1), _prompt(1, 6, seed=2)
    generate_text_simple_cached(cached, first, max_new_tokens=8)
    out = generate_text_simple_cached(cached, second, max_new_tokens=8)
    expected = gpt.generate_text_simple(plain, second, max_new_tokens=8, context_size=CFG["context_length"])
    assert torch.equal(out, expected)


def test_reset_kv_cache_empties_every_block():
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    with torch.no_grad():
        model(_prompt(1, 5), use_cache=True)
    assert model.current_pos == 5
    assert all(block.att.cache_k.shape == (1, 5, 4, 4) for block in model.trf_blocks)
    assert all(block.att.ptr_current_pos == 5 for block in model.trf_blocks)
    model.reset_kv_cache()
    assert model.current_pos == 0
    assert all(block.att.cache_k is None and block.att.cache_v is None for block in model.trf_blocks)
    assert all(block.att.ptr_current_pos == 0 for block in model.trf_blocks)


def test_without_a_reset_the_cache_continues_the_old_sequence(models):
    # What reset_kv_cache() prevents: new tokens are read as the continuation of the previous prompt.
    plain, cached = models
    idx = _prompt(1, 4)
    with torch.no_grad():
        cached.reset_kv_cache()
        cached(_prompt(1, 3, seed=9), use_cache=True)
        stale = cached(idx, use_cache=True)
        cached.reset_kv_cache()
        fresh = cached(idx, use_cache=True)
        assert torch.allclose(fresh, plain(idx), atol=1e-5)
        assert (stale - fresh).abs().max() > 1e-3


def test_overflowing_the_cache_raises_a_clear_error():
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    with torch.no_grad():
        model(_prompt(1, CFG["context_length"]), use_cache=True)
        with pytest.raises(ValueError, match="reset_kv_cache"):
            model(_prompt(1, 1), use_cache=True)


def test_generation_leaves_the_model_in_eval_mode():
    model = GPTModel(CFG).train()
    generate_text_simple_cached(model, _prompt(1, 2), max_new_tokens=1)
    assert not model.training


def test_module_exports():
    assert kv_cache.__all__ == ["MultiHeadAttention", "TransformerBlock", "GPTModel", "generate_text_simple_cached"]
