"""Mutants and variants of the chapter 5 bonus: from GPT to Llama 3.2.

A mistake in a part breaks the part's own test and the headline test (the tiny checkpoint's logits through the
student's own model and loader, PARTS_FIT); the block, the model and the loader are graded on correct stand-ins
of their parts, so a bug in a part costs them nothing.
"""

from tests.submissions.catalog.base import Variant, mutant

LL = "ch05_llama"
LOGITS = "test_tiny_llama32_logits"

MUTANTS = [
    # -- the named mistakes -------------------------------------------------------------------------
    mutant("rope_applied_to_values", LL, "grouped_query_attention",
           [("        keys = apply_rope(keys, cos, sin)\n",
             "        keys = apply_rope(keys, cos, sin)\n        values = apply_rope(values, cos, sin)\n")],
           {"test_grouped_query_attention", LOGITS}, says="RoPE applied to the values"),
    mutant("rope_rotates_neighbouring_pairs", LL, "apply_rope",
           [("x1, x2 = x[..., :half], x[..., half:]", "x1, x2 = x[..., 0::2], x[..., 1::2]"),
            ("rotated = torch.cat((-x2, x1), dim=-1)", "rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)")],
           {"test_apply_rope", LOGITS}, says="neighbouring pairs"),
    mutant("rms_norm_subtracts_the_mean", LL, "rms_norm",
           [("        mean_square = x.pow(2).mean(dim=-1, keepdim=True)",
             "        x = x - x.mean(dim=-1, keepdim=True)\n"
             "        mean_square = x.pow(2).mean(dim=-1, keepdim=True)")],
           {"test_rms_norm", LOGITS}, says="subtracting the mean"),
    mutant("gate_and_up_swapped", LL, "feed_forward",
           [("gate = nn.functional.silu(self.fc1(x))", "gate = nn.functional.silu(self.fc2(x))"),
            ("up = self.fc2(x)", "up = self.fc1(x)")],
           {"test_feed_forward", LOGITS}, says="gate and up projections swapped"),
    mutant("gqa_groups_tiled", LL, "grouped_query_attention",
           [("keys = keys.repeat_interleave(self.group_size, dim=1)", "keys = keys.repeat(1, self.group_size, 1, 1)"),
            ("values = values.repeat_interleave(self.group_size, dim=1)",
             "values = values.repeat(1, self.group_size, 1, 1)")],
           {"test_grouped_query_attention", LOGITS}, says="tiled"),
    mutant("rope_scaling_missing", LL, "compute_rope_params",
           [("    if freq_config is not None:\n", "    if False:\n")],
           {"test_rope_params", LOGITS}, says="no frequency scaling"),
    mutant("rope_smoothing_reversed", LL, "compute_rope_params",
           [("blended = (1 - smooth) * divided + smooth * inv_freq",
             "blended = smooth * divided + (1 - smooth) * inv_freq")],
           {"test_rope_params", LOGITS}, says="blend the wrong way round"),
    mutant("rms_eps_outside_the_root", LL, "rms_norm",
           [("normed = x * torch.rsqrt(mean_square + self.eps)", "normed = x / (torch.sqrt(mean_square) + self.eps)")],
           {"test_rms_norm", LOGITS}, says="eps added outside the square root"),
    mutant("head_not_tied", LL, "load_weights_into_llama",
           [("    else:\n        model.out_head.weight = model.tok_emb.weight   # weight tying: one matrix for both\n",
             "")],
           {"test_load_weights_ties_head", LOGITS}, says="not tied"),
    # -- the block, the model, the loader ----------------------------------------------------------------------
    mutant("block_post_norm", LL, "transformer_block",
           [("x = x + self.att(self.norm1(x), mask, cos, sin)", "x = self.norm1(x + self.att(x, mask, cos, sin))"),
            ("return x + self.ff(self.norm2(x))", "return self.norm2(x + self.ff(x))")],
           {"test_transformer_block", LOGITS}, says="post-norm"),
    mutant("model_without_causal_mask", LL, "llama3_model",
           [("mask = torch.triu(ones, diagonal=1)", "mask = torch.triu(ones, diagonal=num_tokens)")],
           {"test_llama3_model", LOGITS}, says="without the causal mask"),
    mutant("loader_gate_and_up_swapped", LL, "load_weights_into_llama",
           [('load(block.ff.fc2, prefix + "mlp.up_proj.weight")',
             'load(block.ff.fc2, prefix + "mlp.gate_proj.weight")'),
            ('load(block.ff.fc1, prefix + "mlp.gate_proj.weight")',
             'load(block.ff.fc1, prefix + "mlp.up_proj.weight")')],
           {"test_load_weights_mapping", LOGITS}, says="gate_proj and up_proj swapped"),
]

# nn.functional's RMSNorm and SiLU, RoPE written as the rotation of each pair, the smoothing band as a clamped
# blend, grouped-query attention with expand and scaled_dot_product_attention, and a loader driven by a table.
RMS_FUNCTIONAL = '''
class RMSNorm(nn.Module):
    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.emb_dim = emb_dim
        self.weight = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x):
        return nn.functional.rms_norm(x, (self.emb_dim,), self.weight, self.eps)
'''

FF_FUNCTIONAL = '''
class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], dtype=cfg["dtype"], bias=False)

    def forward(self, x):
        gate = self.fc1(x)
        return self.fc3(gate * torch.sigmoid(gate) * self.fc2(x))
'''

ROPE_CLAMPED = '''
def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None, dtype=torch.float32):
    exponent = torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim
    inv_freq = theta_base ** -exponent
    if freq_config is not None:
        ratio = freq_config["original_context_length"] * inv_freq / (2 * torch.pi)   # positions per turn, inverted
        smooth = ((ratio - freq_config["low_freq_factor"])
                  / (freq_config["high_freq_factor"] - freq_config["low_freq_factor"])).clamp(0.0, 1.0)
        inv_freq = inv_freq * (smooth + (1 - smooth) / freq_config["factor"])
    angles = torch.outer(torch.arange(context_length, dtype=torch.float64), inv_freq)
    angles = angles.repeat(1, 2).to(torch.float32)
    return angles.cos(), angles.sin()
'''

APPLY_ROPE_PAIRS = '''
def apply_rope(x, cos, sin):
    batch_size, num_heads, seq_len, head_dim = x.shape
    half = head_dim // 2
    c, s = cos[:seq_len, :half], sin[:seq_len, :half]
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * c - second * s, second * c + first * s], dim=-1).to(x.dtype)
'''

GQA_SDPA = '''
class GroupedQueryAttention(nn.Module):
    def __init__(self, d_in, d_out, num_heads, num_kv_groups, dtype=None):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False, dtype=dtype)
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups
        self.W_query = nn.Linear(d_in, d_out, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)

    def forward(self, x, mask, cos, sin):
        b, t, _ = x.shape
        q = apply_rope(self.W_query(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(self.W_key(x).view(b, t, self.num_kv_groups, self.head_dim).transpose(1, 2), cos, sin)
        v = self.W_value(x).view(b, t, self.num_kv_groups, self.head_dim).transpose(1, 2)
        shape = (b, self.num_kv_groups, self.group_size, t, self.head_dim)
        k = k[:, :, None].expand(shape).reshape(b, self.num_heads, t, self.head_dim)
        v = v[:, :, None].expand(shape).reshape(b, self.num_heads, t, self.head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:t, :t])
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.d_out))
'''

LOADER_TABLE = '''
def assign(left, right, tensor_name="unknown"):
    if left.shape != right.shape:
        raise ValueError(f"Shape mismatch in tensor '{tensor_name}'")
    return torch.nn.Parameter(right.clone().to(left.dtype))


def load_weights_into_llama(model, param_config, params):
    names = {"att.W_query": "self_attn.q_proj", "att.W_key": "self_attn.k_proj", "att.W_value": "self_attn.v_proj",
             "att.out_proj": "self_attn.o_proj", "ff.fc1": "mlp.gate_proj", "ff.fc2": "mlp.up_proj",
             "ff.fc3": "mlp.down_proj", "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    model.tok_emb.weight = assign(model.tok_emb.weight, params["model.embed_tokens.weight"])
    for index, block in enumerate(model.trf_blocks[: param_config["n_layers"]]):
        for ours, theirs in names.items():
            module = block.get_submodule(ours)
            module.weight = assign(module.weight, params[f"model.layers.{index}.{theirs}.weight"])
    model.final_norm.weight = assign(model.final_norm.weight, params["model.norm.weight"])
    head = params.get("lm_head.weight")
    model.out_head.weight = model.tok_emb.weight if head is None else assign(model.out_head.weight, head)
'''

# The book's standalone block and model: torch's nn.RMSNorm, a block written in two lines, and the mask kept as a
# (context_length, context_length) buffer that the attention cuts.
BLOCK_TORCH_NORM = '''
class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], num_heads=cfg["n_heads"],
                                         num_kv_groups=cfg["n_kv_groups"], dtype=cfg["dtype"])
        self.ff = FeedForward(cfg)
        self.norm1 = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])
        self.norm2 = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)
        return x + self.ff(self.norm2(x))
'''

MODEL_MASK_BUFFER = '''
class Llama3Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=cfg["dtype"])
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False, dtype=cfg["dtype"])
        self.cfg = cfg
        head_dim = cfg["emb_dim"] // cfg["n_heads"]
        cos, sin = compute_rope_params(head_dim, cfg["rope_base"], cfg["context_length"], cfg["rope_freq"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", torch.ones(1024, 1024, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx)
        t = in_idx.shape[1]
        for block in self.trf_blocks:
            x = block(x, self.mask[:t, :t], self.cos, self.sin)
        return self.out_head(self.final_norm(x))
'''

VARIANTS = [
    Variant("functional_norms_sdpa_and_table_loader", LL,
            {"rms_norm": RMS_FUNCTIONAL, "feed_forward": FF_FUNCTIONAL, "grouped_query_attention": GQA_SDPA,
             "load_weights_into_llama": LOADER_TABLE}),
    Variant("clamped_rope_torch_norms_and_mask_buffer", LL,
            {"compute_rope_params": ROPE_CLAMPED, "apply_rope": APPLY_ROPE_PAIRS, "transformer_block": BLOCK_TORCH_NORM,
             "llama3_model": MODEL_MASK_BUFFER}),
]
