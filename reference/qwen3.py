"""Chapter 5 bonus: Qwen3 from scratch, and loading its published weights.

Qwen3 (the dense models, 0.6B to 32B) is built from the same parts as Llama 3: RMSNorm instead of LayerNorm,
a SiLU-gated feed-forward network, rotary position embeddings (RoPE) instead of learned ones, grouped-query
attention (GQA), no dropout and no biases. What differs from Llama 3.2:

- **QK-norm**: each head's query and key vectors go through an RMSNorm over ``head_dim`` (with its own learned
  scale, ``q_norm`` and ``k_norm``) before RoPE rotates them; it keeps the attention scores in range.
- **RoPE**: a base of 1,000,000 and no frequency scaling (plain RoPE, as in Llama 2 but with a larger base).
- **head_dim** is given by the configuration (128 for every size), not ``emb_dim // n_heads``.
- **RMSNorm's eps** is 1e-6 (Llama 3: 1e-5), and the norm is computed in float32 whatever the input's dtype.

The names, signatures and attribute names are those of the book's ``ch05/11_qwen3/standalone-qwen3.ipynb``,
so that :func:`load_weights_into_qwen` maps a Hugging Face checkpoint (``model.layers.0.self_attn.q_proj.weight``
and so on) onto them; the 0.6B model ties its output head to the token embedding, so its checkpoint has no
``lm_head.weight``.

Shapes: ``b`` batch, ``T`` tokens, ``emb_dim`` the model width, ``H`` query heads, ``G`` key/value groups,
``hd`` head_dim.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QWEN3_CONFIG_06_B", "RMSNorm", "FeedForward", "compute_rope_params", "apply_rope",
           "GroupedQueryAttention", "TransformerBlock", "Qwen3Model", "load_weights_into_qwen"]

# Qwen3 0.6B, in the book's vocabulary (the published config.json's names in the comments).
QWEN3_CONFIG_06_B = {
    "vocab_size": 151_936,  # vocab_size
    "context_length": 40_960,  # max_position_embeddings
    "emb_dim": 1024,  # hidden_size
    "n_heads": 16,  # num_attention_heads
    "n_layers": 28,  # num_hidden_layers
    "hidden_dim": 3072,  # intermediate_size: the feed-forward network's width
    "head_dim": 128,  # head_dim (16 heads of 128 = 2048, wider than emb_dim)
    "qk_norm": True,  # Qwen3 normalises queries and keys
    "n_kv_groups": 8,  # num_key_value_heads
    "rope_base": 1_000_000.0,  # rope_theta
    "dtype": torch.bfloat16,  # the published weights' dtype
}


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: x / sqrt(mean(x²) + eps) * scale, over the last dimension.

    Unlike LayerNorm, it does not subtract the mean, and has no shift unless ``bias=True``. With
    ``qwen3_compatible`` the computation runs in float32 (as Qwen3's own code does) and the result is cast back
    to the input's dtype.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-6, bias: bool = False, qwen3_compatible: bool = True):
        super().__init__()
        self.eps = eps
        self.qwen3_compatible = qwen3_compatible
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        if self.qwen3_compatible:
            x = x.to(torch.float32)  # bfloat16 has too few mantissa bits for the mean of squares

        variance = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): the mean square, no mean subtracted
        norm_x = x * torch.rsqrt(variance + self.eps)  # (..., emb_dim)
        norm_x = norm_x * self.scale
        if self.shift is not None:
            norm_x = norm_x + self.shift
        return norm_x.to(input_dtype)


class FeedForward(nn.Module):
    """The SiLU-gated feed-forward network (SwiGLU): fc3(silu(fc1(x)) * fc2(x)).

    fc1 is the gate (Hugging Face's ``gate_proj``), fc2 the up projection (``up_proj``), fc3 the down projection
    (``down_proj``); no biases.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], dtype=cfg["dtype"], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fc1 = self.fc1(x)  # (b, T, hidden_dim): the gate
        x_fc2 = self.fc2(x)  # (b, T, hidden_dim)
        x = nn.functional.silu(x_fc1) * x_fc2  # the gate decides how much of each feature passes
        return self.fc3(x)  # (b, T, emb_dim)


def compute_rope_params(head_dim: int, theta_base: float = 10_000, context_length: int = 4096,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines and sines of RoPE's angles, each (context_length, head_dim).

    Frequency i (of head_dim // 2) is theta_base ** (-2i / head_dim); position p turns pair i by p times it.
    The angles are repeated for the second half, because :func:`apply_rope` pairs dimension i with dimension
    i + head_dim // 2. Qwen3 uses theta_base 1,000,000 and no frequency scaling.
    """
    assert head_dim % 2 == 0, "head_dim must be even: RoPE turns pairs of dimensions"
    exponents = torch.arange(0, head_dim, 2, dtype=dtype).float() / head_dim  # (hd/2,): 0, 2/hd, 4/hd, ...
    inv_freq = 1.0 / theta_base**exponents  # (hd/2,): from 1 down to nearly 1 / theta_base
    positions = torch.arange(context_length, dtype=dtype).float()  # (context_length,)
    angles = positions[:, None] * inv_freq[None, :]  # (context_length, hd/2)
    angles = torch.cat([angles, angles], dim=1)  # (context_length, hd): one angle per pair, in both halves
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head's vectors by their positions' angles. x: (b, heads, T, hd); cos, sin: (>= T, hd).

    Dimension i and dimension i + hd/2 form a pair (the "split halves" layout of Hugging Face and the book),
    rotated as the 2-D point (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
    """
    batch_size, num_heads, seq_len, head_dim = x.shape
    assert head_dim % 2 == 0, "head_dim must be even: RoPE turns pairs of dimensions"
    x1 = x[..., : head_dim // 2]  # (b, heads, T, hd/2): the first of each pair
    x2 = x[..., head_dim // 2 :]  # (b, heads, T, hd/2): the second

    cos = cos[:seq_len, :].unsqueeze(0).unsqueeze(0)  # (1, 1, T, hd): positions 0 .. T-1
    sin = sin[:seq_len, :].unsqueeze(0).unsqueeze(0)

    rotated = torch.cat((-x2, x1), dim=-1)  # (b, heads, T, hd): the point turned by 90 degrees
    return (x * cos + rotated * sin).to(x.dtype)


class GroupedQueryAttention(nn.Module):
    """Causal attention in which groups of query heads share one key head and one value head.

    ``num_heads`` query heads, ``num_kv_groups`` key/value heads: query head h uses key/value head
    h // (num_heads // num_kv_groups). With ``qk_norm``, queries and keys are RMS-normalised per head (over
    head_dim) before RoPE. ``forward(x, mask, cos, sin)``: the model builds the mask and RoPE's tables once and
    hands them to every block.
    """

    def __init__(self, d_in: int, num_heads: int, num_kv_groups: int, head_dim: int | None = None,
                 qk_norm: bool = False, dtype: torch.dtype | None = None):
        super().__init__()
        assert num_heads % num_kv_groups == 0, "num_heads must be a multiple of num_kv_groups"

        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups  # query heads per key/value head

        if head_dim is None:
            assert d_in % num_heads == 0, "without head_dim, d_in must be a multiple of num_heads"
            head_dim = d_in // num_heads
        self.head_dim = head_dim
        self.d_out = num_heads * head_dim  # may differ from d_in (Qwen3 0.6B: 16 * 128 = 2048 > 1024)

        self.W_query = nn.Linear(d_in, self.d_out, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(self.d_out, d_in, bias=False, dtype=dtype)

        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps=1e-6)  # one scale per dimension of a head, shared by all heads
            self.k_norm = RMSNorm(head_dim, eps=1e-6)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, num_tokens, _ = x.shape  # (b, T, d_in)

        queries = self.W_query(x)  # (b, T, H * hd)
        keys = self.W_key(x)  # (b, T, G * hd)
        values = self.W_value(x)  # (b, T, G * hd)

        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, H, T, hd)
        keys = keys.view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)  # (b, G, T, hd)
        values = values.view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)  # (b, G, T, hd)

        # QK-norm: each head's vector normalised over head_dim, BEFORE the rotation.
        if self.q_norm:
            queries = self.q_norm(queries)
        if self.k_norm:
            keys = self.k_norm(keys)

        # RoPE turns queries and keys only: their dot product then depends on the distance between positions.
        queries = apply_rope(queries, cos, sin)
        keys = apply_rope(keys, cos, sin)

        # Each key/value head serves group_size consecutive query heads: repeat along the heads (dim 1).
        keys = keys.repeat_interleave(self.group_size, dim=1)  # (b, H, T, hd)
        values = values.repeat_interleave(self.group_size, dim=1)  # (b, H, T, hd)

        attn_scores = queries @ keys.transpose(2, 3)  # (b, H, T, T)
        attn_scores = attn_scores.masked_fill(mask, -torch.inf)  # mask: (T, T), True above the diagonal
        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)

        context = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, self.d_out)  # (b, T, H * hd)
        return self.out_proj(context)  # (b, T, d_in)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + att(norm1(x)), then x + ff(norm2(x)); no dropout."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = GroupedQueryAttention(
            d_in=cfg["emb_dim"],
            num_heads=cfg["n_heads"],
            head_dim=cfg["head_dim"],
            num_kv_groups=cfg["n_kv_groups"],
            qk_norm=cfg["qk_norm"],
            dtype=cfg["dtype"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], eps=1e-6)
        self.norm2 = RMSNorm(cfg["emb_dim"], eps=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (b, T, emb_dim)
        x = self.norm1(x)
        x = self.att(x, mask, cos, sin)  # (b, T, emb_dim)
        x = x + shortcut

        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)  # (b, T, emb_dim)
        return x + shortcut


class Qwen3Model(nn.Module):
    """Token embedding, n_layers blocks, a final RMSNorm and the output head; no position embedding (RoPE).

    RoPE's tables are computed once for the whole context and kept as non-persistent buffers (``cos``, ``sin``):
    they move with the model to a device but are not weights, so they stay out of the state_dict.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=cfg["dtype"])
        # A ModuleList, since every block needs x, mask, cos and sin (a Sequential passes one value).
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=cfg["dtype"])

        head_dim = cfg["emb_dim"] // cfg["n_heads"] if cfg["head_dim"] is None else cfg["head_dim"]
        cos, sin = compute_rope_params(head_dim=head_dim, theta_base=cfg["rope_base"],
                                       context_length=cfg["context_length"])  # each (context_length, hd)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.cfg = cfg

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(in_idx)  # (b, T, emb_dim)
        num_tokens = x.shape[1]
        # True above the diagonal: token i may not look at tokens after it.
        mask = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=x.device).triu(diagonal=1)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)  # (b, T, emb_dim)
        x = self.final_norm(x)
        return self.out_head(x.to(self.cfg["dtype"]))  # (b, T, vocab_size)


def load_weights_into_qwen(model: Qwen3Model, param_config: dict, params: dict) -> None:
    """Copy a Hugging Face Qwen3 checkpoint (``params``: name -> tensor, e.g. from safetensors' ``load_file``)
    into ``model``, in place. Each tensor's shape must match; the head is tied to the token embedding when the
    checkpoint has no ``lm_head.weight``.

    Hugging Face's nn.Linear weights are (out_features, in_features), as PyTorch's: no transpose (unlike GPT-2's
    Conv1D). The names map as follows (layer l):

        model.embed_tokens.weight                     tok_emb.weight
        model.layers.l.self_attn.{q,k,v,o}_proj       trf_blocks[l].att.{W_query, W_key, W_value, out_proj}
        model.layers.l.self_attn.{q,k}_norm           trf_blocks[l].att.{q_norm, k_norm}.scale
        model.layers.l.input_layernorm                trf_blocks[l].norm1.scale
        model.layers.l.mlp.{gate,up,down}_proj        trf_blocks[l].ff.{fc1, fc2, fc3}
        model.layers.l.post_attention_layernorm       trf_blocks[l].norm2.scale
        model.norm.weight                             final_norm.scale
        lm_head.weight (untied models only)           out_head.weight
    """

    def assign(left: torch.Tensor, right: torch.Tensor, tensor_name: str = "unknown") -> torch.Tensor:
        if left.shape != right.shape:
            raise ValueError(f"{tensor_name}: {tuple(right.shape)} in the checkpoint, {tuple(left.shape)} in the model")
        with torch.no_grad():
            left.copy_(torch.as_tensor(right, dtype=left.dtype, device=left.device))
        return left

    def copy(param: torch.Tensor, name: str) -> None:
        assign(param, params[name], name)

    copy(model.tok_emb.weight, "model.embed_tokens.weight")

    for layer in range(param_config["n_layers"]):
        block = model.trf_blocks[layer]
        att = block.att
        prefix = f"model.layers.{layer}"

        copy(att.W_query.weight, f"{prefix}.self_attn.q_proj.weight")
        copy(att.W_key.weight, f"{prefix}.self_attn.k_proj.weight")
        copy(att.W_value.weight, f"{prefix}.self_attn.v_proj.weight")
        copy(att.out_proj.weight, f"{prefix}.self_attn.o_proj.weight")
        if att.q_norm is not None:  # QK-norm's scales: Qwen3's checkpoints have them
            copy(att.q_norm.scale, f"{prefix}.self_attn.q_norm.weight")
            copy(att.k_norm.scale, f"{prefix}.self_attn.k_norm.weight")
        copy(block.norm1.scale, f"{prefix}.input_layernorm.weight")

        copy(block.ff.fc1.weight, f"{prefix}.mlp.gate_proj.weight")
        copy(block.ff.fc2.weight, f"{prefix}.mlp.up_proj.weight")
        copy(block.ff.fc3.weight, f"{prefix}.mlp.down_proj.weight")
        copy(block.norm2.scale, f"{prefix}.post_attention_layernorm.weight")

    copy(model.final_norm.scale, "model.norm.weight")

    if "lm_head.weight" in params:
        copy(model.out_head.weight, "lm_head.weight")
    else:
        model.out_head.weight = model.tok_emb.weight  # tied: one parameter, shared by the embedding and the head
