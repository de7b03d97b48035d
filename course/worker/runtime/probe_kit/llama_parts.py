"""Correct stand-ins for the parts of the Llama 3.2 assignment (chapter 5 bonus), so a composite is graded alone.

The student's GroupedQueryAttention is graded on a stand-in apply_rope; the TransformerBlock on a stand-in
GroupedQueryAttention, FeedForward and RMSNorm; the Llama3Model on stand-in blocks, RMSNorm and
compute_rope_params; load_weights_into_llama on a stand-in Llama3Model. Each stand-in has the attribute names of
the notebook's stubs (W_query, W_key, W_value, out_proj, fc1, fc2, fc3, weight, att, ff, norm1, norm2, tok_emb,
trf_blocks, final_norm, out_head, cos, sin) and the book's signatures, so the grader loads the reference's
parameters into it by name.

    with on_stand_ins(student, ("TransformerBlock", "RMSNorm", "compute_rope_params")):
        model = student.Llama3Model(cfg)
"""

import torch
from torch import nn

from probe_kit.parts import replaced


class RMSNorm(nn.Module):
    def __init__(self, emb_dim, eps=1e-5, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(emb_dim, dtype=dtype))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dtype = cfg.get("dtype")
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False, dtype=dtype)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False, dtype=dtype)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False, dtype=dtype)

    def forward(self, x):
        return self.fc3(nn.functional.silu(self.fc1(x)) * self.fc2(x))


def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None, dtype=torch.float32):
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / theta_base ** exponents                    # (head_dim/2,)
    if freq_config is not None:
        factor, low, high = freq_config["factor"], freq_config["low_freq_factor"], freq_config["high_freq_factor"]
        original = freq_config["original_context_length"]
        wavelen = 2 * torch.pi / inv_freq
        smooth = ((original / wavelen - low) / (high - low)).clamp(0, 1)  # 0 below the band, 1 above it
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    angles = torch.arange(context_length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)                 # (context_length, head_dim)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def apply_rope(x, cos, sin):
    seq_len, half = x.shape[2], x.shape[3] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos[:seq_len] + rotated * sin[:seq_len]).to(x.dtype)


def causal(mask, tokens):
    """A (tokens, tokens) boolean mask, True where a token may not look, from whatever mask the student's code
    hands on: a (tokens, tokens) or larger (context, context) one, boolean or 0/1."""
    return mask[:tokens, :tokens].bool()


class GroupedQueryAttention(nn.Module):
    def __init__(self, d_in, d_out, num_heads, num_kv_groups, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv_groups, self.head_dim = num_heads, num_kv_groups, d_out // num_heads
        self.d_out = d_out
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.W_query = nn.Linear(d_in, d_out, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)

    def forward(self, x, mask, cos, sin):
        b, tokens, _ = x.shape

        def heads(t, n):  # (b, tokens, n * head_dim) -> (b, n, tokens, head_dim)
            return t.view(b, tokens, n, self.head_dim).transpose(1, 2)

        queries = apply_rope(heads(self.W_query(x), self.num_heads), cos, sin)
        keys = apply_rope(heads(self.W_key(x), self.num_kv_groups), cos, sin)
        values = heads(self.W_value(x), self.num_kv_groups)
        group_size = self.num_heads // self.num_kv_groups
        keys = keys.repeat_interleave(group_size, dim=1)
        values = values.repeat_interleave(group_size, dim=1)
        scores = (queries @ keys.transpose(2, 3)).masked_fill(causal(mask, tokens), float("-inf"))
        weights = torch.softmax(scores / self.head_dim ** 0.5, dim=-1)
        return self.out_proj((weights @ values).transpose(1, 2).reshape(b, tokens, self.d_out))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"],
                                         dtype=cfg.get("dtype"))
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"])
        self.norm2 = RMSNorm(cfg["emb_dim"])

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)
        return x + self.ff(self.norm2(x))


class Llama3Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=cfg.get("dtype"))
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=cfg.get("dtype"))
        cos, sin = compute_rope_params(cfg["emb_dim"] // cfg["n_heads"], cfg["rope_base"], cfg["context_length"],
                                       cfg["rope_freq"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx)
        tokens = x.shape[1]
        mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool, device=x.device), diagonal=1)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)
        return self.out_head(self.final_norm(x))



STAND_INS = {part.__name__: part for part in (RMSNorm, FeedForward, compute_rope_params, apply_rope,
                                              GroupedQueryAttention, TransformerBlock, Llama3Model)}


def on_stand_ins(student, names):
    """The student's module with each of `names` bound to its stand-in while the `with` block runs."""
    return replaced(student, **{name: STAND_INS[name] for name in names})
