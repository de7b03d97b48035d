"""Tests of reference/gpt2_weights.py (loading GPT-2's Hugging Face weights into the book's GPTModel).

A tiny GPT-2 with random weights is built with ``transformers`` (no download) and saved as
``model.safetensors``; loaded into GPTModel, it must give the same logits.
"""

from __future__ import annotations

import pytest
import torch

from reference import gpt2_weights
from reference.gpt import GPTModel
from reference.gpt2_weights import (
    GPT2WeightsError,
    convert_gpt2_state_dict,
    gpt2_config,
    infer_gpt2_config,
    load_gpt2_safetensors,
    load_weights_into_gpt,
    normalize_gpt2_state_dict,
)

transformers = pytest.importorskip("transformers", reason="the dev extra (pip install -e .[dev]) provides transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY_HF = {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 100, "n_positions": 16}
TINY_CFG = {"vocab_size": 100, "context_length": 16, "emb_dim": 32, "n_layers": 2, "n_heads": 4,
            "drop_rate": 0.0, "qkv_bias": True}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_model():
    """A tiny GPT2LMHeadModel whose every weight (biases and LayerNorms too) is random."""
    config = transformers.GPT2Config(**TINY_HF, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def saved(hf_model, tmp_path_factory):
    """The folder save_pretrained wrote (model.safetensors with 'transformer.' keys, config.json)."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf_model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))


def _hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(tokens).logits


def _logits(model, tokens):
    with torch.no_grad():
        return model.eval()(tokens)


def test_saved_file_uses_the_transformer_prefix(saved):
    keys = safetensors_torch.load_file(saved / "model.safetensors").keys()
    assert "transformer.h.0.attn.c_attn.weight" in keys


def test_logits_equal_transformers(saved, hf_model, tokens):
    model, _ = load_gpt2_safetensors(saved / "model.safetensors", n_heads=4)
    assert torch.allclose(_logits(model, tokens), _hf_logits(hf_model, tokens), atol=1e-5, rtol=0)


def test_a_folder_with_config_json_needs_no_head_count(saved, hf_model, tokens):
    model, cfg = load_gpt2_safetensors(saved)
    assert cfg == TINY_CFG
    assert torch.allclose(_logits(model, tokens), _hf_logits(hf_model, tokens), atol=1e-5, rtol=0)


def test_keys_without_prefix_and_with_mask_buffers(saved, hf_model, tokens, tmp_path):
    # The layout of openai-community/gpt2's model.safetensors: no prefix, and the attention mask buffers.
    state = safetensors_torch.load_file(saved / "model.safetensors")
    state = {key.removeprefix("transformer."): value for key, value in state.items()}
    for b in range(2):
        state[f"h.{b}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        state[f"h.{b}.attn.masked_bias"] = torch.tensor(-1e4)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state, path)
    model, _ = load_gpt2_safetensors(path, n_heads=4)
    assert torch.allclose(_logits(model, tokens), _hf_logits(hf_model, tokens), atol=1e-5, rtol=0)


def test_the_output_head_is_tied_to_the_token_embedding(saved):
    model, _ = load_gpt2_safetensors(saved)
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)


def test_qkv_weights_are_split_and_transposed(saved):
    state = normalize_gpt2_state_dict(safetensors_torch.load_file(saved / "model.safetensors"))
    model, _ = load_gpt2_safetensors(saved)
    c_attn = state["h.1.attn.c_attn.weight"]  # (32, 96): query | key | value, stored (in, out)
    assert torch.equal(model.trf_blocks[1].att.W_query.weight, c_attn[:, :32].T)
    assert torch.equal(model.trf_blocks[1].att.W_key.weight, c_attn[:, 32:64].T)
    assert torch.equal(model.trf_blocks[1].att.W_value.weight, c_attn[:, 64:].T)
    assert torch.equal(model.trf_blocks[1].att.W_value.bias, state["h.1.attn.c_attn.bias"][64:])


def test_the_layer_norms_map_to_scale_and_shift(saved):
    state = normalize_gpt2_state_dict(safetensors_torch.load_file(saved / "model.safetensors"))
    model, _ = load_gpt2_safetensors(saved)
    assert torch.equal(model.trf_blocks[0].norm2.scale, state["h.0.ln_2.weight"])
    assert torch.equal(model.final_norm.shift, state["ln_f.bias"])


def test_loading_into_an_existing_model_keeps_its_parameter_objects(saved):
    torch.manual_seed(0)
    model = GPTModel(TINY_CFG)
    before = [id(p) for p in model.parameters()]
    load_weights_into_gpt(model, safetensors_torch.load_file(saved / "model.safetensors"))
    assert [id(p) for p in model.parameters()] == before


def test_a_mis_shaped_key_is_named(saved, tmp_path):
    state = safetensors_torch.load_file(saved / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state, path)
    message = r"'h\.1\.mlp\.c_fc\.weight' has shape \(32, 100\), expected \(32, 128\)"
    with pytest.raises(GPT2WeightsError, match=message):
        load_gpt2_safetensors(path, n_heads=4)


def test_a_missing_key_is_named(saved, tmp_path):
    state = safetensors_torch.load_file(saved / "model.safetensors")
    del state["transformer.h.0.ln_2.bias"]
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state, path)
    with pytest.raises(GPT2WeightsError, match=r"'h\.0\.ln_2\.bias' is missing"):
        load_gpt2_safetensors(path, n_heads=4)


def test_a_model_without_qkv_bias_gets_a_hint(saved):
    model = GPTModel({**TINY_CFG, "qkv_bias": False})
    with pytest.raises(GPT2WeightsError, match="qkv_bias=True"):
        load_weights_into_gpt(model, safetensors_torch.load_file(saved / "model.safetensors"))


def test_a_model_of_another_size_is_refused(saved):
    model = GPTModel({**TINY_CFG, "n_layers": 1})
    with pytest.raises(GPT2WeightsError, match="unexpected key"):
        load_weights_into_gpt(model, safetensors_torch.load_file(saved / "model.safetensors"))


def test_a_missing_path_gets_a_clear_message(tmp_path):
    with pytest.raises(GPT2WeightsError, match="does not exist"):
        load_gpt2_safetensors(tmp_path / "nowhere" / "model.safetensors")


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(GPT2WeightsError, match="Cannot read"):
        load_gpt2_safetensors(path)


def test_weights_in_the_books_own_layout_get_a_hint():
    with pytest.raises(GPT2WeightsError, match="load_state_dict"):
        infer_gpt2_config(GPTModel(TINY_CFG).state_dict())


def test_the_head_count_of_a_non_gpt2_width_must_be_given():
    params = {"wte.weight": torch.zeros(100, 32), "wpe.weight": torch.zeros(16, 32), "h.0.ln_1.weight": torch.zeros(32)}
    with pytest.raises(GPT2WeightsError, match="n_heads"):
        infer_gpt2_config(params)


def test_the_head_count_of_gpt2_widths_is_inferred():
    params = {"wte.weight": torch.zeros(50257, 1024), "wpe.weight": torch.zeros(1024, 1024)}
    params.update({f"h.{b}.ln_1.weight": torch.zeros(1024) for b in range(24)})
    assert infer_gpt2_config(params) == gpt2_config("355M")


@pytest.mark.parametrize(
    ("name", "emb_dim", "n_layers", "n_heads"),
    [("124M", 768, 12, 12), ("gpt2-medium (355M)", 1024, 24, 16), ("gpt2-large", 1280, 36, 20), ("xl", 1600, 48, 25)],
)
def test_gpt2_config_sizes(name, emb_dim, n_layers, n_heads):
    cfg = gpt2_config(name)
    assert (cfg["emb_dim"], cfg["n_layers"], cfg["n_heads"]) == (emb_dim, n_layers, n_heads)
    assert (cfg["vocab_size"], cfg["context_length"], cfg["qkv_bias"]) == (50257, 1024, True)


def test_gpt2_config_overrides_and_unknown_sizes():
    assert gpt2_config("gpt2", drop_rate=0.1)["drop_rate"] == 0.1
    with pytest.raises(ValueError, match="Unknown GPT-2 size"):
        gpt2_config("2B")


def test_gpt2_124m_config_has_the_books_parameter_count():
    with torch.device("meta"):
        model = GPTModel(gpt2_config("124M"))
    assert sum(p.numel() for p in model.parameters()) == 163_037_184


def test_converted_keys_are_the_models_without_the_masks(saved):
    converted = convert_gpt2_state_dict(safetensors_torch.load_file(saved / "model.safetensors"), TINY_CFG)
    expected = [key for key in GPTModel(TINY_CFG).state_dict() if not key.endswith("att.mask")]
    assert sorted(converted) == sorted(expected)


def test_the_command_generates_text(saved, capsys):
    # The tiny vocabulary holds GPT-2's first 100 tokens (single characters): "a" is token 64.
    assert gpt2_weights.main(["--weights", str(saved), "--prompt", "a", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("a")
    assert "2 layers" in out.err


def test_the_command_explains_a_missing_path(tmp_path, capsys):
    assert gpt2_weights.main(["--weights", str(tmp_path / "none"), "--prompt", "Hi"]) == 1
    assert "does not exist" in capsys.readouterr().err
