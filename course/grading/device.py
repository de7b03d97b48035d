"""The device policy: `auto` picks cuda, then mps, then cpu; anything else is forced."""

from __future__ import annotations

import torch

from course.errors import UsageError


def resolve_device(policy: str) -> str:
    if policy == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = policy.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {policy!r}: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {policy!r} was asked for, but torch sees no CUDA device here")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {policy!r} was asked for, but torch sees no MPS device here")
    return policy
