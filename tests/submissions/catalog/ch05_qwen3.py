"""Mutants and variants of the chapter 5 bonus: Qwen3 from scratch.

A mistake in a part breaks the part's own tests and the last test, which runs the student's whole model loaded
through the student's loader from the tiny checkpoint (PARTS_FIT); the attention runs on correct RMSNorm and RoPE,
the block on correct parts, the model on correct blocks, the loader on a correct model (the grader's stand-ins).
"""

from tests.submissions.catalog.base import Variant, mutant

QW = "ch05_qwen3"
WHOLE = "test_tiny_qwen3_logits"
ATTENTION = {"test_grouped_query_attention", "test_gqa_qk_norm", WHOLE}

MUTANTS = [
    # -- RMSNorm ---------------------------------------------------------------------------------------------
    mutant("rms_norm_subtracts_the_mean", QW, "rms_norm",
           [("        variance = x.pow(2).mean(dim=-1, keepdim=True)",
             "        x = x - x.mean(dim=-1, keepdim=True)\n        variance = x.pow(2).mean(dim=-1, keepdim=True)")],
           {"test_rms_norm", WHOLE}, says="a mean subtracted first"),
    mutant("rms_norm_llama_eps", QW, "rms_norm",
           [("def __init__(self, emb_dim, eps=1e-6,", "def __init__(self, emb_dim, eps=1e-5,")],
           {"test_rms_norm"}, says="an eps of 1e-5"),
    # -- FeedForward ------------------------------------------------------------------------------------------
    mutant("gate_and_up_swapped", QW, "feed_forward",
           [("x = nn.functional.silu(x_fc1) * x_fc2", "x = nn.functional.silu(x_fc2) * x_fc1")],
           {"test_feed_forward", WHOLE}, says="the gate and the up projection swapped"),
    # -- RoPE -------------------------------------------------------------------------------------------------
    mutant("rope_angles_interleaved", QW, "rope",
           [("angles = torch.cat([angles, angles], dim=1)", "angles = angles.repeat_interleave(2, dim=1)")],
           {"test_compute_rope_params", WHOLE}, says="the angles interleaved"),
    mutant("rope_wrong_halves", QW, "rope",
           [("rotated = torch.cat((-x2, x1), dim=-1)", "rotated = torch.cat((x2, -x1), dim=-1)")],
           {"test_apply_rope", WHOLE}, says="the wrong halves rotated"),
    # -- GroupedQueryAttention --------------------------------------------------------------------------------
    mutant("rope_on_the_values", QW, "grouped_query_attention",
           [("        keys = apply_rope(keys, cos, sin)\n",
             "        keys = apply_rope(keys, cos, sin)\n        values = apply_rope(values, cos, sin)\n")],
           ATTENTION, says="RoPE applied to the values"),
    mutant("gqa_repeat_on_the_tokens", QW, "grouped_query_attention",
           [("keys = keys.repeat_interleave(self.group_size, dim=1)",
             "keys = keys.repeat_interleave(self.group_size, dim=2)"),
            ("values = values.repeat_interleave(self.group_size, dim=1)",
             "values = values.repeat_interleave(self.group_size, dim=2)")],
           ATTENTION, says="along the heads dimension"),
    mutant("qk_norm_missing", QW, "grouped_query_attention",
           [("        if self.q_norm:\n            queries = self.q_norm(queries)\n"
             "        if self.k_norm:\n            keys = self.k_norm(keys)\n", "")],
           {"test_gqa_qk_norm", WHOLE}, says="attention without QK-norm"),
    mutant("qk_norm_after_rope", QW, "grouped_query_attention",
           [("        if self.q_norm:\n            queries = self.q_norm(queries)\n"
             "        if self.k_norm:\n            keys = self.k_norm(keys)\n\n"
             "        queries = apply_rope(queries, cos, sin)\n        keys = apply_rope(keys, cos, sin)\n",
             "        queries = apply_rope(queries, cos, sin)\n        keys = apply_rope(keys, cos, sin)\n\n"
             "        if self.q_norm:\n            queries = self.q_norm(queries)\n"
             "        if self.k_norm:\n            keys = self.k_norm(keys)\n")],
           {"test_gqa_qk_norm", WHOLE}, says="QK-norm applied after RoPE"),
    mutant("qk_norm_over_the_model_width", QW, "grouped_query_attention",
           [("self.q_norm = RMSNorm(head_dim, eps=1e-6)", "self.q_norm = RMSNorm(d_in, eps=1e-6)"),
            ("self.k_norm = RMSNorm(head_dim, eps=1e-6)", "self.k_norm = RMSNorm(d_in, eps=1e-6)")],
           {"test_gqa_qk_norm", WHOLE}, says="not RMSNorm(d_in)"),
    # -- TransformerBlock -------------------------------------------------------------------------------------
    mutant("block_without_the_ff_shortcut", QW, "transformer_block",
           [("        x = self.ff(x)\n        x = x + shortcut\n", "        x = self.ff(x)\n")],
           {"test_transformer_block", WHOLE}, says="without the shortcut around the feed-forward"),
    # -- Qwen3Model -------------------------------------------------------------------------------------------
    mutant("rope_base_not_passed", QW, "qwen3_model",
           [("compute_rope_params(head_dim=head_dim, theta_base=cfg[\"rope_base\"],",
             "compute_rope_params(head_dim=head_dim,")],
           {"test_qwen3_model", WHOLE}, says="the default base 10,000"),
    # -- load_weights_into_qwen -------------------------------------------------------------------------------
    mutant("qk_norm_weights_not_loaded", QW, "load_weights",
           [("        if att.q_norm is not None:\n"
             "            load(att.q_norm.scale, f\"{prefix}.self_attn.q_norm.weight\")\n"
             "            load(att.k_norm.scale, f\"{prefix}.self_attn.k_norm.weight\")\n", "")],
           {"test_load_weights_into_qwen", WHOLE}, says="leaves q_norm and k_norm unloaded"),
    mutant("head_not_tied", QW, "load_weights",
           [("        model.out_head.weight = model.tok_emb.weight      # tied: one parameter",
             "        pass")],
           {"test_load_weights_ties_the_head", WHOLE}, says="does not tie the head"),
]

# Written differently: RMSNorm through torch's rms_norm, RoPE as complex multiplication, the attention with
# scaled_dot_product_attention and expanded key/value heads, the loader from a table of names, tying by copying.
RMS_NORM_FUNCTIONAL = '''
class RMSNorm(nn.Module):
    """x / sqrt(mean(x**2) + eps) * scale (+ shift), with torch's rms_norm."""

    def __init__(self, emb_dim, eps=1e-6, bias=False, qwen3_compatible=True):
        super().__init__()
        self.eps = eps
        self.qwen3_compatible = qwen3_compatible
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x):
        wide = x.float() if self.qwen3_compatible else x
        out = nn.functional.rms_norm(wide, wide.shape[-1:], eps=self.eps) * self.scale
        return (out if self.shift is None else out + self.shift).to(x.dtype)
'''

ROPE_COMPLEX = '''
def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, dtype=torch.float32):
    """RoPE's tables: (cos, sin), each of shape (context_length, head_dim)."""
    assert head_dim % 2 == 0, "head_dim must be even: RoPE turns pairs of dimensions"
    exponents = torch.arange(head_dim // 2) * 2 / head_dim
    angles = torch.outer(torch.arange(context_length, dtype=torch.float32), theta_base ** -exponents.float())
    return angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)


def apply_rope(x, cos, sin):
    """x: (batch, num_heads, seq_len, head_dim), rotated as complex numbers x1 + i x2."""
    seq_len, half = x.shape[2], x.shape[-1] // 2
    turned = torch.complex(x[..., :half].float(), x[..., half:].float())
    turned = turned * torch.complex(cos[:seq_len, :half], sin[:seq_len, :half])
    return torch.cat([turned.real, turned.imag], dim=-1).to(x.dtype)
'''

ATTENTION_SDPA = '''
class GroupedQueryAttention(nn.Module):
    """Grouped-query attention with torch's scaled_dot_product_attention; QK-norm before RoPE."""

    def __init__(self, d_in, num_heads, num_kv_groups, head_dim=None, qk_norm=False, dtype=None):
        super().__init__()
        assert num_heads % num_kv_groups == 0, "num_heads must be a multiple of num_kv_groups"
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups

        if head_dim is None:
            assert d_in % num_heads == 0, "without head_dim, d_in must be a multiple of num_heads"
            head_dim = d_in // num_heads
        self.head_dim = head_dim
        self.d_out = num_heads * head_dim

        self.W_query = nn.Linear(d_in, self.d_out, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(self.d_out, d_in, bias=False, dtype=dtype)

        self.q_norm = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=1e-6) if qk_norm else None

    def forward(self, x, mask, cos, sin):
        b, t, _ = x.shape
        q = self.W_query(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.W_key(x).unflatten(-1, (self.num_kv_groups, self.head_dim)).transpose(1, 2)
        v = self.W_value(x).unflatten(-1, (self.num_kv_groups, self.head_dim)).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = (b, self.num_kv_groups, self.group_size, t, self.head_dim)
        k = k.unsqueeze(2).expand(groups).reshape(b, self.num_heads, t, self.head_dim)
        v = v.unsqueeze(2).expand(groups).reshape(b, self.num_heads, t, self.head_dim)
        context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
        return self.out_proj(context.transpose(1, 2).flatten(2))
'''

LOADER_TABLE = '''
def load_weights_into_qwen(model, param_config, params):
    """Copy the checkpoint `params` (name -> tensor, Hugging Face's names) into `model`, in place."""

    def assign(left, right, tensor_name="unknown"):
        if left.shape != right.shape:
            raise ValueError(f"{tensor_name}: {tuple(right.shape)} in the checkpoint, {tuple(left.shape)} in the model")
        with torch.no_grad():
            left.copy_(torch.as_tensor(right, dtype=left.dtype, device=left.device))
        return left

    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight"}
    parts = {"att.W_query.weight": "self_attn.q_proj", "att.W_key.weight": "self_attn.k_proj",
             "att.W_value.weight": "self_attn.v_proj", "att.out_proj.weight": "self_attn.o_proj",
             "att.q_norm.scale": "self_attn.q_norm", "att.k_norm.scale": "self_attn.k_norm",
             "norm1.scale": "input_layernorm", "norm2.scale": "post_attention_layernorm",
             "ff.fc1.weight": "mlp.gate_proj", "ff.fc2.weight": "mlp.up_proj", "ff.fc3.weight": "mlp.down_proj"}
    for layer in range(param_config["n_layers"]):
        for mine, theirs in parts.items():
            names[f"trf_blocks.{layer}.{mine}"] = f"model.layers.{layer}.{theirs}.weight"
    found = dict(model.named_parameters())
    for mine, theirs in names.items():
        if mine in found:
            assign(found[mine], params[theirs], theirs)
    head = params.get("lm_head.weight", params["model.embed_tokens.weight"])
    assign(model.out_head.weight, head, "lm_head.weight")
'''

BLOCK_TWO_LINES = '''
class TransformerBlock(nn.Module):
    """Pre-norm block: attention, then the feed-forward network, each with a shortcut."""

    def __init__(self, cfg):
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

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)
        return x + self.ff(self.norm2(x))
'''

VARIANTS = [
    Variant("functional_norm_and_complex_rope", QW, {"rms_norm": RMS_NORM_FUNCTIONAL, "rope": ROPE_COMPLEX}),
    Variant("sdpa_attention_and_table_loader", QW, {"grouped_query_attention": ATTENTION_SDPA,
                                                    "transformer_block": BLOCK_TWO_LINES,
                                                    "load_weights": LOADER_TABLE}),
]
