"""Correct stand-ins for the parts of the GQA and MoE assignment (chapter 4 bonus), so a composite is graded alone.

The student's TransformerBlock is graded on a stand-in GroupedQueryAttention (with a KV cache) and MoEFeedForward
(LayerNorm and FeedForward come from the course's chapter 4 support code); the student's GPTModel on stand-in
blocks. Each stand-in has the attribute names of the notebook's stubs (W_query, W_key, W_value, out_proj, gate,
fc1, fc2, fc3, att, ff, norm1, norm2, drop_shortcut), so the grader loads the reference's parameters into it,
and the methods the book's code calls (reset_cache).

    with on_stand_ins(student, ("GroupedQueryAttention", "MoEFeedForward")):
        block = student.TransformerBlock(cfg)
"""

import torch
from torch import nn

from probe_kit.gpt_parts import FeedForward, LayerNorm
from probe_kit.parts import replaced


class GroupedQueryAttention(nn.Module):
    """Causal attention with num_kv_groups key/value heads shared by the query heads, and a KV cache."""

    def __init__(self, d_in, d_out, dropout, num_heads, num_kv_groups, dtype=None, qkv_bias=False):
        super().__init__()
        if d_out % num_heads or num_heads % num_kv_groups:
            raise ValueError("num_heads must divide d_out, and num_kv_groups must divide num_heads")
        self.d_out, self.num_heads, self.num_kv_groups = d_out, num_heads, num_kv_groups
        self.head_dim = d_out // num_heads
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.cached = None  # (keys, values), each (batch, num_kv_groups, tokens seen, head_dim)

    def reset_cache(self):
        self.cached = None

    def forward(self, x, use_cache=False):
        batch, tokens, _ = x.shape

        def heads(t, count):  # (batch, tokens, count * head_dim) -> (batch, count, tokens, head_dim)
            return t.reshape(batch, tokens, count, self.head_dim).transpose(1, 2)

        queries = heads(self.W_query(x), self.num_heads)
        keys, values = heads(self.W_key(x), self.num_kv_groups), heads(self.W_value(x), self.num_kv_groups)
        seen = 0
        if use_cache:
            if self.cached is not None:
                seen = self.cached[0].shape[2]
                keys = torch.cat([self.cached[0], keys], dim=2)
                values = torch.cat([self.cached[1], values], dim=2)
            self.cached = (keys, values)
        # Query head h reads key/value head h // group_size.
        group_of_head = torch.arange(self.num_heads, device=x.device) // (self.num_heads // self.num_kv_groups)
        keys, values = keys[:, group_of_head], values[:, group_of_head]
        query_pos = torch.arange(seen, seen + tokens, device=x.device).unsqueeze(1)
        key_pos = torch.arange(keys.shape[2], device=x.device).unsqueeze(0)
        scores = (queries @ keys.transpose(-2, -1)) / self.head_dim ** 0.5
        weights = torch.softmax(scores.masked_fill(key_pos > query_pos, float("-inf")), dim=-1)
        context = (self.dropout(weights) @ values).transpose(1, 2).reshape(batch, tokens, self.d_out)
        return self.out_proj(context)


class MoEFeedForward(nn.Module):
    """A mixture of SwiGLU experts, computed densely: every expert on every token, weighted by the router's
    table (the softmax of each token's top-k scores, 0 for the other experts)."""

    def __init__(self, cfg):
        super().__init__()
        self.num_experts_per_tok, self.num_experts = cfg["num_experts_per_tok"], cfg["num_experts"]
        self.emb_dim = cfg["emb_dim"]
        emb, hidden = cfg["emb_dim"], cfg["hidden_dim"]
        self.gate = nn.Linear(emb, self.num_experts, bias=False)
        self.fc1 = nn.ModuleList([nn.Linear(emb, hidden, bias=False) for _ in range(self.num_experts)])
        self.fc2 = nn.ModuleList([nn.Linear(emb, hidden, bias=False) for _ in range(self.num_experts)])
        self.fc3 = nn.ModuleList([nn.Linear(hidden, emb, bias=False) for _ in range(self.num_experts)])

    def forward(self, x):
        scores = self.gate(x)  # (batch, tokens, num_experts)
        top_scores, top_experts = scores.topk(self.num_experts_per_tok, dim=-1)
        table = torch.zeros_like(scores).scatter(-1, top_experts, torch.softmax(top_scores, dim=-1))
        outputs = torch.stack([self.fc3[e](nn.functional.silu(self.fc1[e](x)) * self.fc2[e](x))
                               for e in range(self.num_experts)], dim=-2)  # (batch, tokens, num_experts, emb)
        return (table.unsqueeze(-1) * outputs).sum(dim=-2)


class TransformerBlock(nn.Module):
    """Chapter 4's pre-LayerNorm block with the stand-in GQA, and the stand-in MoE when there are experts."""

    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["drop_rate"], cfg["n_heads"],
                                         cfg["n_kv_groups"], qkv_bias=cfg["qkv_bias"])
        self.ff = MoEFeedForward(cfg) if cfg["num_experts"] > 0 else FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, use_cache=False):
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache=use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


STAND_INS = {part.__name__: part for part in (GroupedQueryAttention, MoEFeedForward, TransformerBlock)}


def on_stand_ins(student, names):
    """The student's module with each of `names` bound to its stand-in while the `with` block runs."""
    return replaced(student, **{name: STAND_INS[name] for name in names})
