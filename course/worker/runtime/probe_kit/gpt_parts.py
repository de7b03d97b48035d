"""Correct stand-ins for the parts of chapters 3 and 4, so that a composite is graded on its own code.

A probe that grades the student's GPTModel builds it with these in place of the student's TransformerBlock and
LayerNorm (probe_kit.parts.replaced): a bug in the student's block then costs the block's tests, not the model's.
Each stand-in has the attribute names of the notebook's stubs (scale, shift, layers, att, ff, norm1, norm2,
drop_shortcut, W_query, W_key, W_value, out_proj, dropout, mask), so the grader loads the reference's state_dict
into them, and is written with torch's own building blocks where torch has one.

    with on_stand_ins(student, ("TransformerBlock", "LayerNorm")):
        model = student.GPTModel(cfg)
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from probe_kit.parts import replaced


class LayerNorm(nn.Module):
    """torch's layer normalization over the last dimension, with the book's eps, scale and shift."""

    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """torch's GELU in the tanh approximation (GPT-2's)."""

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Linear to 4 * emb_dim, GELU, Linear back: `layers.0` and `layers.2` hold the weights."""

    def __init__(self, cfg):
        super().__init__()
        width = cfg["emb_dim"]
        self.layers = nn.Sequential(nn.Linear(width, 4 * width), GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        return self.layers(x)


def causal_attention(queries, keys, values, dropout):
    """Scaled dot-product attention over (..., tokens, head_dim) tensors, each token seeing itself and the earlier
    ones, with `dropout` (an nn.Dropout) on the attention weights."""
    tokens = queries.shape[-2]
    future = torch.ones(tokens, tokens, dtype=torch.bool, device=queries.device).triu(1)
    scores = (queries @ keys.transpose(-2, -1)) / math.sqrt(keys.shape[-1])
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return dropout(weights) @ values


class CausalAttention(nn.Module):
    """One head of causal self-attention (chapter 3, section 3.5)."""

    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # Kept for the state_dict (the book's module saves its mask); the forward pass builds its own.
        self.register_buffer("mask", torch.ones(context_length, context_length).triu(1))

    def forward(self, x):
        return causal_attention(self.W_query(x), self.W_key(x), self.W_value(x), self.dropout)


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with one projection split into heads (chapter 3, section 3.6)."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.ones(context_length, context_length).triu(1))

    def forward(self, x):
        batch, tokens, _ = x.shape

        def heads(t):  # (batch, tokens, d_out) -> (batch, num_heads, tokens, head_dim)
            return t.reshape(batch, tokens, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

        context = causal_attention(heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x)),
                                   self.dropout)
        return self.out_proj(context.permute(0, 2, 1, 3).reshape(batch, tokens, self.d_out))


class TransformerBlock(nn.Module):
    """GPT-2's pre-LayerNorm block (chapter 4, section 4.5), built from the stand-ins above."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                      cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        for norm, sub_block in ((self.norm1, self.att), (self.norm2, self.ff)):
            x = x + self.drop_shortcut(sub_block(norm(x)))
        return x


STAND_INS = {part.__name__: part
             for part in (LayerNorm, GELU, FeedForward, CausalAttention, MultiHeadAttention, TransformerBlock)}


def on_stand_ins(student, names):
    """The student's module with each of `names` (parts of chapters 3 and 4) bound to its stand-in while the
    `with` block runs (probe_kit.parts.replaced)."""
    return replaced(student, **{name: STAND_INS[name] for name in names})
