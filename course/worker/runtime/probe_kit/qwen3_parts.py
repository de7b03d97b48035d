"""Correct stand-ins for the parts of Qwen3 (chapter 5 bonus, ch05_qwen3), so that a composite is graded alone.

The student's GroupedQueryAttention is graded on a stand-in RMSNorm and apply_rope; the student's
TransformerBlock on a stand-in attention, feed-forward network and RMSNorm; the student's Qwen3Model on stand-in
blocks, RMSNorm and compute_rope_params; the student's load_weights_into_qwen on a stand-in Qwen3Model. Each has
the attribute names of the book's standalone Qwen3 notebook (scale, shift, fc1, fc2, fc3, W_query, W_key,
W_value, out_proj, q_norm, k_norm, att, ff, norm1, norm2, tok_emb, trf_blocks, final_norm, out_head), so the
reference's state_dict loads into them, and is written with torch's own building blocks where torch has one.

    with on_stand_ins(student, ("RMSNorm", "apply_rope")):
        attention = student.GroupedQueryAttention(d_in=16, num_heads=4, num_kv_groups=2, qk_norm=True)
"""

import torch
from torch import nn
from torch.nn import functional as F

from probe_kit.llama_parts import FeedForward, apply_rope  # the same in Llama 3.2 and Qwen3
from probe_kit.parts import replaced


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * scale (+ shift), computed in float32, returned in the input's dtype."""

    def __init__(self, emb_dim, eps=1e-6, bias=False, qwen3_compatible=True):
        super().__init__()
        self.eps = eps
        self.qwen3_compatible = qwen3_compatible
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x):
        wide = x.float()
        out = wide / torch.sqrt(wide.square().mean(dim=-1, keepdim=True) + self.eps) * self.scale
        if self.shift is not None:
            out = out + self.shift
        return out.to(x.dtype)


def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, dtype=torch.float32):
    """RoPE's (cos, sin) tables, each (context_length, head_dim): pair i turns at theta_base ** (-2i / head_dim)
    per position, its angle written in both halves."""
    inv_freq = theta_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context_length, dtype=torch.float32), inv_freq).repeat(1, 2)
    return angles.cos(), angles.sin()


class GroupedQueryAttention(nn.Module):
    """Causal attention where each key/value head serves num_heads // num_kv_groups query heads; QK-norm (an
    RMSNorm over head_dim) before RoPE when qk_norm. forward(x, mask, cos, sin), mask True where masked."""

    def __init__(self, d_in, num_heads, num_kv_groups, head_dim=None, qk_norm=False, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv_groups = num_heads, num_kv_groups
        self.head_dim = head_dim if head_dim is not None else d_in // num_heads
        self.d_out = num_heads * self.head_dim
        self.W_query = nn.Linear(d_in, self.d_out, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(self.d_out, d_in, bias=False, dtype=dtype)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim)
            self.k_norm = RMSNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, mask, cos, sin):
        batch, tokens, _ = x.shape

        def heads(t, count):  # (batch, tokens, count * head_dim) -> (batch, count, tokens, head_dim)
            return t.reshape(batch, tokens, count, self.head_dim).transpose(1, 2)

        queries = heads(self.W_query(x), self.num_heads)
        keys = heads(self.W_key(x), self.num_kv_groups)
        values = heads(self.W_value(x), self.num_kv_groups)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        queries, keys = apply_rope(queries, cos, sin), apply_rope(keys, cos, sin)
        group = self.num_heads // self.num_kv_groups
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
        context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=~mask[:tokens, :tokens])
        return self.out_proj(context.transpose(1, 2).reshape(batch, tokens, self.d_out))


class TransformerBlock(nn.Module):
    """Pre-norm: x + att(norm1(x), ...), then x + ff(norm2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"], cfg["head_dim"],
                                         cfg["qk_norm"], cfg.get("dtype"))
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], eps=1e-6)
        self.norm2 = RMSNorm(cfg["emb_dim"], eps=1e-6)

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)
        return x + self.ff(self.norm2(x))


class Qwen3Model(nn.Module):
    """Token embedding, the blocks, a final RMSNorm and an untied head; RoPE's tables as non-persistent buffers."""

    def __init__(self, cfg):
        super().__init__()
        dtype = cfg.get("dtype")
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=dtype)
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=dtype)
        head_dim = cfg["head_dim"] or cfg["emb_dim"] // cfg["n_heads"]
        cos, sin = compute_rope_params(head_dim, cfg["rope_base"], cfg["context_length"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.cfg = cfg

    def forward(self, in_idx):
        tokens = in_idx.shape[1]
        mask = torch.ones(tokens, tokens, dtype=torch.bool, device=in_idx.device).triu(1)
        x = self.tok_emb(in_idx)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)
        return self.out_head(self.final_norm(x))



STAND_INS = {part.__name__: part for part in (RMSNorm, FeedForward, compute_rope_params, apply_rope,
                                              GroupedQueryAttention, TransformerBlock, Qwen3Model)}


def on_stand_ins(student, names):
    """The student's module with each of `names` bound to its stand-in while the `with` block runs."""
    return replaced(student, **{name: STAND_INS[name] for name in names})
