"""Helpers of appendix E's probes (LoRA). The GPT classifier they hand to the student's functions is
probe_kit.training's loaded_gpt."""

from torch import nn


def wrapped_linear(wrapper, config, *, linear_state=None, frozen=False):
    """The student's LinearWithLoRA (`wrapper`) around a fresh nn.Linear(in_dim, out_dim), for a `config` of
    (in_dim, out_dim, rank, alpha); before the wrapper gets it, the nn.Linear is loaded with `linear_state` when
    given, and frozen (requires_grad False) when `frozen`."""
    in_dim, out_dim, rank, alpha = config
    linear = nn.Linear(in_dim, out_dim)
    if linear_state is not None:
        linear.load_state_dict(linear_state)
    linear.requires_grad_(not frozen)
    return wrapper(linear, rank, alpha)
