"""Tests of reference/lora.py (appendix E: parameter-efficient finetuning with LoRA)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reference.gpt import GPT_CONFIG_124M, GPTModel
from reference.lora import (
    LinearWithLoRA,
    LoRALayer,
    count_trainable_parameters,
    freeze_parameters,
    replace_linear_with_lora,
)

IN_DIM, OUT_DIM, RANK, ALPHA = 6, 5, 3, 12  # alpha != rank, so that alpha/rank (4) and alpha (12) differ


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _wrapped(seed: int = 0) -> LinearWithLoRA:
    torch.manual_seed(seed)
    return LinearWithLoRA(nn.Linear(IN_DIM, OUT_DIM), rank=RANK, alpha=ALPHA)


# --- LoRALayer --------------------------------------------------------------------------------------------


def test_lora_layer_parameter_shapes():
    layer = LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA)
    assert layer.A.shape == (IN_DIM, RANK)
    assert layer.B.shape == (RANK, OUT_DIM)


def test_lora_layer_b_starts_at_zero():
    layer = LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA)
    assert torch.equal(layer.B, torch.zeros(RANK, OUT_DIM))


def test_lora_layer_a_is_initialised_like_a_linear_weight():
    torch.manual_seed(7)
    layer = LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA)
    torch.manual_seed(7)
    expected = torch.empty(IN_DIM, RANK)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
    assert torch.equal(layer.A.detach(), expected)


def test_lora_layer_keeps_alpha_and_rank():
    layer = LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA)
    assert (layer.alpha, layer.rank) == (ALPHA, RANK)


def test_lora_layer_state_dict_holds_a_and_b_only():
    assert set(LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA).state_dict()) == {"A", "B"}


def test_lora_layer_scales_by_alpha_over_rank():
    layer = LoRALayer(IN_DIM, OUT_DIM, RANK, ALPHA)
    with torch.no_grad():
        layer.B.copy_(_x(RANK, OUT_DIM, seed=1))
    x = _x(2, 4, IN_DIM)
    expected = (ALPHA / RANK) * (x @ layer.A @ layer.B)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-6)


# --- LinearWithLoRA ---------------------------------------------------------------------------------------


def test_wrapped_layer_keeps_the_original_linear():
    linear = nn.Linear(IN_DIM, OUT_DIM)
    wrapped = LinearWithLoRA(linear, RANK, ALPHA)
    assert wrapped.linear is linear


def test_wrapped_layer_state_dict_keys():
    assert set(_wrapped().state_dict()) == {"linear.weight", "linear.bias", "lora.A", "lora.B"}


def test_wrapped_layer_equals_the_base_layer_at_initialisation():
    wrapped = _wrapped()
    x = _x(2, 4, IN_DIM)
    with torch.no_grad():
        assert torch.equal(wrapped(x), wrapped.linear(x))


def test_wrapped_layer_differs_by_x_a_b_times_alpha_over_rank_after_b_changes():
    wrapped = _wrapped()
    with torch.no_grad():
        wrapped.lora.B.copy_(_x(RANK, OUT_DIM, seed=3))
        x = _x(2, 4, IN_DIM)
        difference = wrapped(x) - wrapped.linear(x)
        expected = x @ wrapped.lora.A @ wrapped.lora.B * (ALPHA / RANK)
    assert torch.allclose(difference, expected, rtol=0, atol=1e-5)


def test_wrapped_layer_equals_a_linear_with_the_merged_weight():
    # W + scaling * (A @ B).T: LoRA is a low-rank change of the weight matrix.
    wrapped = _wrapped()
    with torch.no_grad():
        wrapped.lora.B.copy_(_x(RANK, OUT_DIM, seed=4))
        merged = nn.Linear(IN_DIM, OUT_DIM)
        merged.weight.copy_(wrapped.linear.weight + (ALPHA / RANK) * (wrapped.lora.A @ wrapped.lora.B).T)
        merged.bias.copy_(wrapped.linear.bias)
        x = _x(3, IN_DIM)
        assert torch.allclose(wrapped(x), merged(x), rtol=0, atol=1e-5)


def test_wrapped_layer_gives_a_zero_but_present_gradient_to_a_at_initialisation():
    # With B = 0 the gradient reaching A (through B) is exactly zero; B's gradient is not.
    wrapped = _wrapped()
    wrapped(_x(2, 4, IN_DIM)).pow(2).sum().backward()
    assert torch.equal(wrapped.lora.A.grad, torch.zeros(IN_DIM, RANK))
    assert wrapped.lora.B.grad.abs().sum() > 0


# --- replace_linear_with_lora, freezing -------------------------------------------------------------------


class _Nested(nn.Module):
    """Linear layers at several depths, next to modules that are not Linear."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Sequential(nn.Linear(8, 8, bias=False)))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.block(self.first(x))))


def _nested(seed: int = 0) -> _Nested:
    torch.manual_seed(seed)
    return _Nested()


def test_replace_wraps_every_linear_at_every_depth():
    model = _nested()
    replace_linear_with_lora(model, rank=2, alpha=2)
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LinearWithLoRA)]
    assert wrapped == ["first", "block.0", "block.2.0", "head"]


def test_replace_leaves_no_bare_linear_outside_the_wrappers():
    model = _nested()
    replace_linear_with_lora(model, rank=2, alpha=2)
    bare = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    assert all(name.endswith(".linear") for name in bare)


def test_replace_keeps_the_other_modules():
    model = _nested()
    norm = model.norm
    replace_linear_with_lora(model, rank=2, alpha=2)
    assert model.norm is norm
    assert isinstance(model.block[1], nn.GELU)


def test_replace_keeps_the_original_weights():
    model = _nested()
    first_weight, head_bias = model.first.weight.clone(), model.head.bias.clone()
    replace_linear_with_lora(model, rank=2, alpha=2)
    assert torch.equal(model.first.linear.weight, first_weight)
    assert torch.equal(model.head.linear.bias, head_bias)


def test_replace_does_not_change_the_output_at_initialisation():
    model = _nested()
    x = _x(5, 4)
    with torch.no_grad():
        before = model(x)
        replace_linear_with_lora(model, rank=2, alpha=4)
        assert torch.equal(model(x), before)


def test_replace_gives_each_layer_the_rank_and_alpha():
    model = _nested()
    replace_linear_with_lora(model, rank=2, alpha=5)
    assert {(m.rank, m.alpha) for m in model.modules() if isinstance(m, LoRALayer)} == {(2, 5)}


def test_freeze_then_replace_trains_only_lora_parameters():
    model = _nested()
    freeze_parameters(model)
    replace_linear_with_lora(model, rank=2, alpha=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{prefix}.lora.{ab}" for prefix in ("first", "block.0", "block.2.0", "head") for ab in "AB"}


def test_frozen_parameters_get_no_gradient():
    model = _nested()
    freeze_parameters(model)
    replace_linear_with_lora(model, rank=2, alpha=2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.B.normal_()  # so that every A gets a gradient too
    model(_x(5, 4)).sum().backward()
    frozen = {name: p.grad for name, p in model.named_parameters() if ".lora." not in name}
    assert frozen  # there are frozen parameters
    assert all(grad is None for grad in frozen.values())
    lora = [p for name, p in model.named_parameters() if ".lora." in name]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_count_trainable_parameters():
    model = _nested()
    # first 4*8+8, block.0 8*8+8, block.2.0 8*8, norm 8+8, head 8*3+3
    assert count_trainable_parameters(model) == 40 + 72 + 64 + 16 + 27
    freeze_parameters(model)
    assert count_trainable_parameters(model) == 0
    replace_linear_with_lora(model, rank=2, alpha=2)
    # rank * (in + out) per wrapped layer
    assert count_trainable_parameters(model) == 2 * ((4 + 8) + (8 + 8) + (8 + 8) + (8 + 3))


# --- the book's figures on GPT-2 small ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_small_lora_counts():
    """Appendix E's steps on GPT-2 124M (qkv_bias True, no dropout), built once: 2-class head, freeze, LoRA.

    Returns the trainable-parameter counts before freezing and after LoRA at rank 16, and the model.
    """
    cfg = {**GPT_CONFIG_124M, "qkv_bias": True, "drop_rate": 0.0}
    torch.manual_seed(123)
    model = GPTModel(cfg)
    model.out_head = nn.Linear(in_features=cfg["emb_dim"], out_features=2)
    before = count_trainable_parameters(model)
    freeze_parameters(model)
    replace_linear_with_lora(model, rank=16, alpha=16)
    return before, count_trainable_parameters(model), model


def test_gpt2_small_classifier_trainable_parameters_before_lora(gpt2_small_lora_counts):
    # Printed in the book's appendix E: "Total trainable parameters before: 124,441,346".
    before, _, _ = gpt2_small_lora_counts
    assert before == 124_441_346


def test_gpt2_small_classifier_lora_rank_16_trainable_parameters(gpt2_small_lora_counts):
    # Printed in the book's appendix E: "Total trainable LoRA parameters: 2,666,528".
    _, after, _ = gpt2_small_lora_counts
    assert after == 2_666_528


def test_gpt2_small_lora_wraps_every_linear(gpt2_small_lora_counts):
    # 12 blocks x (4 attention projections + 2 feed-forward layers) + the output head
    _, _, model = gpt2_small_lora_counts
    assert sum(isinstance(m, LinearWithLoRA) for m in model.modules()) == 12 * 6 + 1
