"""Chapter 5 bonus: from GPT to Llama 3.2 (the book's ch05/07_gpt_to_llama).

Llama 3.2 is chapter 4's GPT with five changes, each kept in the book's names:

- :class:`RMSNorm` replaces LayerNorm: no mean subtraction and no shift, only a division by the root mean square
  (with ``eps`` inside the square root) and a learned scale, ``weight``.
- :class:`FeedForward` is SiLU-gated: ``fc1`` (the gate) and ``fc2`` (the up projection) both map ``emb_dim`` to
  ``hidden_dim``; ``silu(fc1(x)) * fc2(x)`` goes through ``fc3`` (the down projection). No biases anywhere.
- Rotary position embeddings (RoPE) replace the position embedding layer: :func:`compute_rope_params` gives the
  cosines and sines of each position's angles once (with Llama 3's frequency scaling, ``freq_config``), and
  :func:`apply_rope` rotates the queries and the keys (never the values) by them, the first half of each head's
  dimensions paired with the second half.
- :class:`GroupedQueryAttention`: ``num_heads`` query heads share ``num_kv_groups`` key/value heads; each group's
  keys and values are repeated for the ``group_size`` consecutive query heads that use them.
- No dropout, and the output head shares the token embedding's weight (weight tying), as Llama 3.2 does.

:func:`load_weights_into_llama` maps a Hugging Face checkpoint (``model.layers.N.self_attn.q_proj.weight``, ...)
into :class:`Llama3Model`; when the file has no ``lm_head.weight`` the head is tied to the embedding.
``dtype`` in a configuration is the book's: the published weights are bfloat16; the course's tiny model is float32.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LLAMA32_CONFIG_1B", "RMSNorm", "FeedForward", "compute_rope_params", "apply_rope",
           "GroupedQueryAttention", "TransformerBlock", "Llama3Model", "assign", "load_weights_into_llama",
           "config_from_hf"]

# Llama 3.2 1B, as the book configures it (ch05/07_gpt_to_llama/standalone-llama32.ipynb).
LLAMA32_CONFIG_1B = {
    "vocab_size": 128_256,      # vocabulary size
    "context_length": 131_072,  # the longest context the model supports (8,192 before the RoPE scaling)
    "emb_dim": 2048,            # embedding dimension
    "n_heads": 32,              # query heads
    "n_layers": 16,             # transformer blocks
    "hidden_dim": 8192,         # FeedForward's intermediate size
    "n_kv_groups": 8,           # key/value heads of grouped-query attention
    "rope_base": 500_000.0,     # RoPE's theta
    "dtype": torch.bfloat16,    # the published weights' dtype
    "rope_freq": {              # Llama 3's RoPE frequency scaling
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 8192,
    },
}


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: x / sqrt(mean(x^2) + eps), times a learned scale (no shift)."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.emb_dim = emb_dim
        self.weight = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x):
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): one number per token's vector
        normed = x * torch.rsqrt(mean_square + self.eps)    # eps inside the root: safe for a vector of zeros
        return (normed * self.weight).to(x.dtype)           # the input's dtype (bfloat16 for the real model)


class FeedForward(nn.Module):
    """The SiLU-gated feed-forward network (SwiGLU): fc3(silu(fc1(x)) * fc2(x)), without biases."""

    def __init__(self, cfg):
        super().__init__()
        dtype = cfg.get("dtype")
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=dtype, bias=False)  # the gate
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=dtype, bias=False)  # the up projection
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], dtype=dtype, bias=False)  # the down projection

    def forward(self, x):
        gate = nn.functional.silu(self.fc1(x))   # (..., hidden_dim)
        up = self.fc2(x)                         # (..., hidden_dim)
        return self.fc3(gate * up)               # (..., emb_dim)


def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None, dtype=torch.float32):
    """The cosines and sines of RoPE's angles, each (context_length, head_dim).

    Pair i of a head's dimensions (i and i + head_dim/2) turns at the inverse frequency theta_base^(-2i/head_dim).
    Llama 3's scaling (``freq_config``) stretches the slow rotations for a longer context: wavelengths longer than
    original_context_length / low_freq_factor are divided by ``factor``, those shorter than
    original_context_length / high_freq_factor are kept, and those between are blended smoothly.
    """
    assert head_dim % 2 == 0, "head_dim must be even"
    inv_freq = 1.0 / theta_base ** (torch.arange(0, head_dim, 2, dtype=dtype).float() / head_dim)  # (head_dim/2,)

    if freq_config is not None:
        original = freq_config["original_context_length"]
        low_freq_wavelen = original / freq_config["low_freq_factor"]    # longer wavelengths: divided by factor
        high_freq_wavelen = original / freq_config["high_freq_factor"]  # shorter wavelengths: kept
        wavelen = 2 * torch.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / freq_config["factor"], inv_freq)
        # Between the two: a blend that goes from "divided" (smooth 0) to "kept" (smooth 1).
        smooth = (original / wavelen - freq_config["low_freq_factor"]) / (
            freq_config["high_freq_factor"] - freq_config["low_freq_factor"])
        smoothed = (1 - smooth) * inv_freq / freq_config["factor"] + smooth * inv_freq
        medium = (wavelen <= low_freq_wavelen) & (wavelen >= high_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)

    positions = torch.arange(context_length, dtype=dtype)
    angles = positions.unsqueeze(1) * inv_freq.unsqueeze(0)  # (context_length, head_dim/2)
    angles = torch.cat([angles, angles], dim=1)              # (context_length, head_dim): both halves of each pair
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate each pair (i, i + head_dim/2) of x's last dimension by its position's angle.

    x: (batch, num_heads, seq_len, head_dim); cos, sin: (at least seq_len, head_dim).
    """
    _, _, seq_len, head_dim = x.shape
    x1 = x[..., : head_dim // 2]               # (batch, num_heads, seq_len, head_dim/2): the first halves
    x2 = x[..., head_dim // 2:]                # the second halves
    cos = cos[:seq_len, :].unsqueeze(0).unsqueeze(0)  # (1, 1, seq_len, head_dim)
    sin = sin[:seq_len, :].unsqueeze(0).unsqueeze(0)
    rotated = torch.cat((-x2, x1), dim=-1)     # (x1, x2) -> (-x2, x1): a quarter turn of each pair
    return (x * cos + rotated * sin).to(dtype=x.dtype)


class GroupedQueryAttention(nn.Module):
    """Causal attention in which num_heads query heads share num_kv_groups key/value heads; RoPE on queries
    and keys."""

    def __init__(self, d_in, d_out, num_heads, num_kv_groups, dtype=None):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        assert num_heads % num_kv_groups == 0, "num_heads must be divisible by num_kv_groups"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups   # query heads per key/value head
        self.W_query = nn.Linear(d_in, d_out, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)

    def forward(self, x, mask, cos, sin):
        b, num_tokens, _ = x.shape
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        # queries: (b, num_heads, num_tokens, head_dim); keys, values: (b, num_kv_groups, num_tokens, head_dim)

        # Positions enter through the rotation of queries and keys only: the scores depend on the distance.
        keys = apply_rope(keys, cos, sin)
        queries = apply_rope(queries, cos, sin)

        # Group g serves query heads g*group_size .. (g+1)*group_size - 1: [K1, K2] -> [K1, K1, K2, K2].
        keys = keys.repeat_interleave(self.group_size, dim=1)      # (b, num_heads, num_tokens, head_dim)
        values = values.repeat_interleave(self.group_size, dim=1)  # (b, num_heads, num_tokens, head_dim)

        attn_scores = queries @ keys.transpose(2, 3)                # (b, num_heads, num_tokens, num_tokens)
        attn_scores = attn_scores.masked_fill(mask[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-1)

        context_vec = (attn_weights @ values).transpose(1, 2)      # (b, num_tokens, num_heads, head_dim)
        context_vec = context_vec.reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)                           # (b, num_tokens, d_out)


class TransformerBlock(nn.Module):
    """Llama's pre-norm block: x + att(norm1(x)), then + ff(norm2(.)); RMSNorm, no dropout."""

    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], num_heads=cfg["n_heads"],
                                         num_kv_groups=cfg["n_kv_groups"], dtype=cfg.get("dtype"))
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], eps=1e-5)
        self.norm2 = RMSNorm(cfg["emb_dim"], eps=1e-5)

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)  # (batch, num_tokens, emb_dim)
        return x + self.ff(self.norm2(x))


class Llama3Model(nn.Module):
    """Llama 3.2: token embeddings, blocks with RoPE (no position embedding layer), a final RMSNorm, the head."""

    def __init__(self, cfg):
        super().__init__()
        dtype = cfg.get("dtype")
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=dtype)
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RMSNorm(cfg["emb_dim"], eps=1e-5)
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=dtype)
        # The angles are computed once; non-persistent buffers move with the model but stay out of the state_dict.
        cos, sin = compute_rope_params(head_dim=cfg["emb_dim"] // cfg["n_heads"], theta_base=cfg["rope_base"],
                                       context_length=cfg["context_length"], freq_config=cfg["rope_freq"])
        self.register_buffer("cos", cos, persistent=False)  # (context_length, head_dim)
        self.register_buffer("sin", sin, persistent=False)
        self.cfg = cfg

    def forward(self, in_idx):
        x = self.tok_emb(in_idx)                                  # (batch, num_tokens, emb_dim)
        num_tokens = x.shape[1]
        # True above the diagonal: token i may not attend to tokens after it.
        mask = torch.triu(torch.ones(num_tokens, num_tokens, device=x.device, dtype=torch.bool), diagonal=1)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)
        x = self.final_norm(x)
        return self.out_head(x.to(self.out_head.weight.dtype))   # (batch, num_tokens, vocab_size)


def assign(left, right, tensor_name="unknown"):
    """Copy `right` into the parameter `left` (same shape), without tracking gradients; returns `left`."""
    if left.shape != right.shape:
        raise ValueError(f"{tensor_name}: the checkpoint's tensor has shape {tuple(right.shape)}, the model's "
                         f"parameter {tuple(left.shape)}")
    with torch.no_grad():
        left.copy_(right.to(dtype=left.dtype, device=left.device))
    return left


def load_weights_into_llama(model, param_config, params):
    """Copy a Hugging Face Llama checkpoint (`params`: name -> tensor) into `model`, a Llama3Model.

    q/k/v/o_proj -> W_query/W_key/W_value/out_proj; gate/up/down_proj -> fc1/fc2/fc3; input_layernorm -> norm1;
    post_attention_layernorm -> norm2; model.norm -> final_norm; lm_head (or, without it, the tied embedding) ->
    out_head. Hugging Face's nn.Linear weights are (out_features, in_features), as ours: no transpose.
    """
    model.tok_emb.weight = assign(model.tok_emb.weight, params["model.embed_tokens.weight"],
                                  "model.embed_tokens.weight")
    mapping = {  # our attribute path in a block -> the checkpoint's name in layer l
        ("att", "W_query"): "self_attn.q_proj",
        ("att", "W_key"): "self_attn.k_proj",
        ("att", "W_value"): "self_attn.v_proj",
        ("att", "out_proj"): "self_attn.o_proj",
        ("norm1",): "input_layernorm",
        ("ff", "fc1"): "mlp.gate_proj",
        ("ff", "fc2"): "mlp.up_proj",
        ("ff", "fc3"): "mlp.down_proj",
        ("norm2",): "post_attention_layernorm",
    }
    for layer in range(param_config["n_layers"]):
        block = model.trf_blocks[layer]
        for path, hf_name in mapping.items():
            module = block
            for attribute in path:
                module = getattr(module, attribute)
            name = f"model.layers.{layer}.{hf_name}.weight"
            module.weight = assign(module.weight, params[name], name)

    model.final_norm.weight = assign(model.final_norm.weight, params["model.norm.weight"], "model.norm.weight")
    if "lm_head.weight" in params:
        model.out_head.weight = assign(model.out_head.weight, params["lm_head.weight"], "lm_head.weight")
    else:
        model.out_head.weight = model.tok_emb.weight  # weight tying: one tensor for the embedding and the head


def config_from_hf(config: dict, dtype=torch.float32) -> dict:
    """The book's configuration dictionary for a transformers LlamaConfig (as a dict, e.g. a checkpoint's
    config.json or the tiny checkpoint's metadata)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config.get("rope_theta"))
    freq = None
    if rope.get("rope_type", rope.get("type")) == "llama3":
        freq = {"factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
                "high_freq_factor": rope["high_freq_factor"],
                "original_context_length": rope["original_max_position_embeddings"]}
    return {"vocab_size": config["vocab_size"], "context_length": config["max_position_embeddings"],
            "emb_dim": config["hidden_size"], "n_heads": config["num_attention_heads"],
            "n_layers": config["num_hidden_layers"], "hidden_dim": config["intermediate_size"],
            "n_kv_groups": config["num_key_value_heads"], "rope_base": theta, "dtype": dtype, "rope_freq": freq}
