"""Appendix E: parameter-efficient finetuning with LoRA (low-rank adaptation).

Full finetuning learns an update ``delta_W`` of every weight matrix ``W``. LoRA learns that update in
factored form, ``delta_W = A @ B`` with ``A`` (in_dim, rank) and ``B`` (rank, out_dim) for a small ``rank``,
while ``W`` itself stays frozen. A layer's output becomes

    x @ W.T + b  +  scaling * (x @ A @ B)

and only A and B are trained: for a 768 x 768 layer at rank 16, 24,576 parameters instead of 589,824.

What this module holds:

1. :class:`LoRALayer`: the low-rank update ``scaling * (x @ A @ B)`` on its own.
2. :class:`LinearWithLoRA`: an ``nn.Linear`` plus a :class:`LoRALayer` beside it.
3. :func:`replace_linear_with_lora`: swaps every ``nn.Linear`` of a model (attention projections, feed
   forward, output head) for a :class:`LinearWithLoRA`, in place.
4. :func:`freeze_parameters` and :func:`count_trainable_parameters`: the bookkeeping around it.

Scaling. ``B`` starts at zero, so ``A @ B = 0`` and a freshly wrapped layer computes exactly what the
original layer computed: finetuning starts from the pretrained model. The update is scaled by
``alpha / rank``, as in the book's repository (its appendix E notebook and ``llms_from_scratch``
package): with that scaling, changing the rank does not change the size of the update, so a learning rate
tuned at one rank carries over to another. The print edition of the book scaled by ``alpha`` alone;
with ``alpha == rank`` (the book's rank 16, alpha 16) the two agree.

In the book, the 2-class classifier of chapter 6 with every Linear wrapped at rank 16 has 2,666,528
trainable parameters, about 2% of GPT-2 small's 124 million.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "LoRALayer",
    "LinearWithLoRA",
    "replace_linear_with_lora",
    "freeze_parameters",
    "count_trainable_parameters",
]


class LoRALayer(nn.Module):
    """The low-rank update ``(alpha / rank) * (x @ A @ B)``.

    ``A`` is (in_dim, rank), initialised like an ``nn.Linear`` weight (Kaiming uniform with ``a=sqrt(5)``);
    ``B`` is (rank, out_dim), initialised to zero, so the update is zero until ``B`` is trained.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        # The same initialisation nn.Linear gives its weight: random, so that B receives a gradient
        # from the start (if both were zero, neither would ever get one).
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in_dim). Going through the rank-sized bottleneck first (x @ A, then @ B) costs
        # O(rank * (in_dim + out_dim)) per token instead of forming the (in_dim, out_dim) matrix A @ B.
        x = (self.alpha / self.rank) * (x @ self.A @ self.B)  # (..., out_dim)
        return x


class LinearWithLoRA(nn.Module):
    """An ``nn.Linear`` (kept as ``self.linear``) plus a :class:`LoRALayer` of matching shape (``self.lora``).

    The state_dict keys become ``linear.weight``, ``linear.bias``, ``lora.A``, ``lora.B``.
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original layer's output plus the learned low-rank correction; equivalent to a Linear
        # whose weight is W + scaling * (A @ B).T, without ever changing W.
        return self.linear(x) + self.lora(x)  # (..., out_features)


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Replace every ``nn.Linear`` inside ``model`` by a :class:`LinearWithLoRA` wrapping it, in place.

    Walks the module tree recursively, so the attention projections, the feed-forward layers and the
    output head of a GPTModel are all wrapped. The original Linear layers (and their weights) are kept
    inside the wrappers. New LoRA parameters are trainable; freeze the model *before* calling this (see
    :func:`freeze_parameters`) so that only they are.
    """
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)


def freeze_parameters(model: nn.Module) -> None:
    """Set ``requires_grad = False`` on every parameter of ``model`` (they then get no gradient)."""
    for param in model.parameters():
        param.requires_grad = False


def count_trainable_parameters(model: nn.Module) -> int:
    """The number of parameter entries that the optimizer would update (``requires_grad`` is True)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
