"""Chapter 3: coding attention mechanisms.

Four steps, each building on the last:

1. :func:`simplified_self_attention`: no trainable weights; every token's context vector is a weighted
   average of all input vectors, the weights coming from dot products between the inputs.
2. :class:`SelfAttention_v1` / :class:`SelfAttention_v2`: scaled dot-product attention with trainable
   query, key and value projections.
3. :class:`CausalAttention`: a token may only attend to itself and to earlier tokens (causal mask), with
   dropout on the attention weights, on batches.
4. :class:`MultiHeadAttentionWrapper` (several causal heads side by side) and :class:`MultiHeadAttention`
   (the same idea with one projection split into heads, as GPT-2 does it).

Shapes: ``b`` is the batch size, ``num_tokens`` the sequence length, ``d_in`` the width of each input
vector, ``d_out`` the width of each context vector.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "simplified_self_attention",
    "SelfAttention_v1",
    "SelfAttention_v2",
    "CausalAttention",
    "MultiHeadAttentionWrapper",
    "MultiHeadAttention",
]


def simplified_self_attention(inputs: torch.Tensor) -> torch.Tensor:
    """Self-attention without trainable weights.

    Args:
        inputs: (num_tokens, d), one embedding vector per token.

    Returns:
        (num_tokens, d): row i is the context vector of token i, the average of all input vectors weighted
        by how similar (dot product) each is to input i.
    """
    attn_scores = inputs @ inputs.T  # (num_tokens, num_tokens): attn_scores[i, j] = x_i . x_j
    attn_weights = torch.softmax(attn_scores, dim=-1)  # each row sums to 1
    all_context_vecs = attn_weights @ inputs  # (num_tokens, d)
    return all_context_vecs


class SelfAttention_v1(nn.Module):
    """Scaled dot-product self-attention with trainable weight matrices (``nn.Parameter``).

    One sequence at a time: x is (num_tokens, d_in), the result (num_tokens, d_out).
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = x @ self.W_key  # (num_tokens, d_out)
        queries = x @ self.W_query  # (num_tokens, d_out)
        values = x @ self.W_value  # (num_tokens, d_out)

        attn_scores = queries @ keys.T  # (num_tokens, num_tokens): query i against key j
        # Dividing by sqrt(d_k) keeps the scores from growing with the dimension, which would push the
        # softmax into regions with tiny gradients.
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        context_vec = attn_weights @ values  # (num_tokens, d_out)
        return context_vec


class SelfAttention_v2(nn.Module):
    """Like :class:`SelfAttention_v1`, with ``nn.Linear`` projections (better initialisation, optional bias).

    ``nn.Linear`` stores its weight transposed: ``SelfAttention_v2.W_query.weight`` is (d_out, d_in) and
    plays the role of ``SelfAttention_v1.W_query.T``.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.W_key(x)  # (num_tokens, d_out)
        queries = self.W_query(x)  # (num_tokens, d_out)
        values = self.W_value(x)  # (num_tokens, d_out)

        attn_scores = queries @ keys.T  # (num_tokens, num_tokens)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        context_vec = attn_weights @ values  # (num_tokens, d_out)
        return context_vec


class CausalAttention(nn.Module):
    """Single-head causal self-attention on batches, with dropout on the attention weights.

    Token i attends only to tokens 0..i: the scores above the diagonal are set to -inf before the softmax,
    so their weights are exactly 0 and each row still sums to 1. Inputs may be shorter than
    ``context_length``; the mask is cut to the actual number of tokens.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # mask[i, j] = 1 for j > i: the future positions a token must not see. A buffer moves with the
        # module to the device (module.to(...)) and is saved in the state_dict, but it is not trained.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape  # (b, num_tokens, d_in)
        keys = self.W_key(x)  # (b, num_tokens, d_out)
        queries = self.W_query(x)  # (b, num_tokens, d_out)
        values = self.W_value(x)  # (b, num_tokens, d_out)

        # Transpose the last two dimensions only; dimension 0 is the batch.
        attn_scores = queries @ keys.transpose(1, 2)  # (b, num_tokens, num_tokens)
        # Hide the future: -inf becomes a weight of exactly 0 after the softmax.
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        # During training, drop random attention weights (the survivors are scaled by 1 / (1 - p));
        # in eval mode dropout does nothing.
        attn_weights = self.dropout(attn_weights)

        context_vec = attn_weights @ values  # (b, num_tokens, d_out)
        return context_vec


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent :class:`CausalAttention` heads whose outputs are concatenated.

    Each head maps d_in to d_out, so the result is (b, num_tokens, num_heads * d_out).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each head: (b, num_tokens, d_out); side by side: (b, num_tokens, num_heads * d_out).
        return torch.cat([head(x) for head in self.heads], dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head causal self-attention with one query/key/value projection split into heads.

    The d_out output features are divided among ``num_heads`` heads of ``head_dim = d_out // num_heads``
    features each; every head attends on its own slice, the heads' context vectors are put back side by
    side, and a final linear layer (``out_proj``) mixes them. The result is (b, num_tokens, d_out).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"

        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads  # each head works on head_dim of the d_out features
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs (always with a bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape  # (b, num_tokens, d_in)

        keys = self.W_key(x)  # (b, num_tokens, d_out)
        queries = self.W_query(x)  # (b, num_tokens, d_out)
        values = self.W_value(x)  # (b, num_tokens, d_out)

        # Split the last dimension into heads: (b, num_tokens, d_out) -> (b, num_tokens, num_heads, head_dim),
        # then move the heads in front of the tokens, so that each head is a separate
        # (num_tokens, head_dim) matrix.
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        # keys, queries, values: (b, num_heads, num_tokens, head_dim)

        # One batched matrix product computes the scores of every head.
        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens)

        # The causal mask, cut to the number of tokens, broadcasts over the batch and the heads.
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]  # (num_tokens, num_tokens)
        attn_scores.masked_fill_(mask_bool, -torch.inf)

        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)  # (b, num_tokens, num_heads, head_dim)
        # Put the heads back side by side; the transpose left the memory non-contiguous, hence .contiguous().
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)  # (b, num_tokens, d_out)
        context_vec = self.out_proj(context_vec)  # (b, num_tokens, d_out)
        return context_vec
