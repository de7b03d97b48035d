"""Seeded inputs and seeded reference modules, made on the trusted side.

Inputs are generated on the CPU from a seed (the worker moves them to the grading device), so a test sends the
same values on every machine and every run. A reference module is built right after `torch.manual_seed(seed)`
and put in eval mode; its state_dict is what a probe loads into the student's module of the same name.
"""

from __future__ import annotations

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(seed: int, *shape: int) -> torch.Tensor:
    """Uniform values in [0, 1)."""
    return torch.rand(*shape, generator=_generator(seed))


def randn(seed: int, *shape: int) -> torch.Tensor:
    """Standard normal values."""
    return torch.randn(*shape, generator=_generator(seed))


def randint(seed: int, high: int, *shape: int) -> torch.Tensor:
    """Integers in [0, high), e.g. token ids (dtype torch.long)."""
    return torch.randint(0, high, shape, generator=_generator(seed))


def reference_module(cls, seed: int, **init) -> torch.nn.Module:
    """`cls(**init)` built after seeding torch, in eval mode (dropout off)."""
    torch.manual_seed(seed)
    return cls(**init).eval()
