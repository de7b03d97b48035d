"""Mutants and variants of the chapter 4 bonus: grouped-query attention and a mixture of experts.

A mistake in GroupedQueryAttention or MoEFeedForward breaks only their own tests: the block runs on a correct
GQA and MoE, the model on correct blocks (the grader's stand-ins).
"""

from tests.submissions.catalog.base import Variant, mutant

GM = "ch04_gqa_moe"
GQA = "grouped_query_attention"
MOE = "moe_feed_forward"
GQA_ALL = {"test_gqa_output", "test_gqa_with_groups_equal_to_heads_is_mha", "test_gqa_cache_holds_kv_groups"}
MOE_ALL = {"test_moe_routing", "test_moe_output"}

MUTANTS = [
    # -- GroupedQueryAttention --------------------------------------------------------------------------------
    mutant("gqa_repeat_not_interleaved", GM, GQA,
           [("keys = keys.repeat_interleave(self.group_size, dim=1)", "keys = keys.repeat(1, self.group_size, 1, 1)"),
            ("values = values.repeat_interleave(self.group_size, dim=1)",
             "values = values.repeat(1, self.group_size, 1, 1)")],
           {"test_gqa_output"}, says="instead of repeat_interleave"),
    mutant("gqa_repeat_on_the_tokens", GM, GQA,
           [("keys = keys.repeat_interleave(self.group_size, dim=1)", "keys = keys.repeat_interleave(self.group_size, "
             "dim=2)"),
            ("values = values.repeat_interleave(self.group_size, dim=1)",
             "values = values.repeat_interleave(self.group_size, dim=2)")],
           {"test_gqa_output", "test_gqa_cache_holds_kv_groups"}, says="along the heads dimension"),
    mutant("gqa_no_causal_mask", GM, GQA,
           [("attn_scores = attn_scores.masked_fill(future, -torch.inf)", "attn_scores = attn_scores")],
           GQA_ALL, says="without the causal mask"),
    mutant("gqa_groups_not_checked", GM, GQA,
           [('        assert num_heads % num_kv_groups == 0, "num_heads must be divisible by num_kv_groups"\n', "")],
           {"test_gqa_projection_sizes_and_groups"}, says="must divide num_heads"),
    # The keys and values repeated before they are cached: the output is right, the memory saving is lost.
    mutant("gqa_cache_holds_all_heads", GM, GQA,
           [("keys_new = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)",
             "keys_new = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)"
             ".repeat_interleave(self.group_size, dim=1)"),
            ("values_new = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)",
             "values_new = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)"
             ".repeat_interleave(self.group_size, dim=1)"),
            ("keys = keys.repeat_interleave(self.group_size, dim=1)", "keys = keys"),
            ("values = values.repeat_interleave(self.group_size, dim=1)", "values = values")],
           {"test_gqa_cache_holds_kv_groups"}, says="repeat them only after they are cached"),
    # -- MoEFeedForward -----------------------------------------------------------------------------------------
    mutant("moe_softmax_over_all_experts", GM, MOE,
           [("topk_probs = torch.softmax(topk_scores, dim=-1)",
             "topk_probs = torch.softmax(scores, dim=-1).gather(-1, topk_indices)")],
           MOE_ALL, says="a softmax over all the experts"),
    mutant("moe_topk_over_the_tokens", GM, MOE,
           [("torch.topk(scores, self.num_experts_per_tok, dim=-1)", "torch.topk(scores, self.num_experts_per_tok, "
             "dim=1)")],
           MOE_ALL, says="the last dimension of the scores"),
    mutant("moe_gate_and_up_swapped", GM, MOE,
           [("hidden = nn.functional.silu(self.fc1[expert_id](expert_in)) * self.fc2[expert_id](expert_in)",
             "hidden = nn.functional.silu(self.fc2[expert_id](expert_in)) * self.fc1[expert_id](expert_in)")],
           {"test_moe_output"}, says="fc1 and fc2 swapped"),
    mutant("moe_weights_not_applied", GM, MOE,
           [("out_flat.index_add_(0, token_idx, self.fc3[expert_id](hidden) * weight)",
             "out_flat.index_add_(0, token_idx, self.fc3[expert_id](hidden))")],
           MOE_ALL, says="not weighted"),
    # -- TransformerBlock -------------------------------------------------------------------------------------
    mutant("block_ignores_the_experts", GM, "transformer_block",
           [('self.ff = MoEFeedForward(cfg) if cfg["num_experts"] > 0 else FeedForward(cfg)',
             "self.ff = FeedForward(cfg)")],
           {"test_block_with_experts"}, says="a MoEFeedForward(cfg) when"),
    mutant("block_always_moe", GM, "transformer_block",
           [('self.ff = MoEFeedForward(cfg) if cfg["num_experts"] > 0 else FeedForward(cfg)',
             "self.ff = MoEFeedForward(cfg)")],
           {"test_block_without_experts"}, says="else chapter 4's FeedForward(cfg)"),
    # -- GPTModel -----------------------------------------------------------------------------------------------
    mutant("model_positions_restart_at_zero", GM, "gpt_model",
           [("start = self.current_pos if use_cache else 0", "start = 0")],
           {"test_gpt_model"}, says="positions from current_pos on"),
]

# GQA with expand and einsum, an MoE that takes the softmax over all experts and renormalises the top k (as
# Qwen3's router does: the same weights), computed densely, and a block written in two lines.
GQA_EXPAND = '''
class GroupedQueryAttention(nn.Module):
    """GQA with the key/value heads expanded to the query heads, and einsum for the attention."""

    def __init__(self, d_in, d_out, dropout, num_heads, num_kv_groups, dtype=None, qkv_bias=False):
        super().__init__()
        if d_out % num_heads != 0 or num_heads % num_kv_groups != 0:
            raise ValueError("num_heads must divide d_out and num_kv_groups must divide num_heads")
        self.d_out, self.num_heads, self.num_kv_groups = d_out, num_heads, num_kv_groups
        self.head_dim = d_out // num_heads
        self.group_size = num_heads // num_kv_groups
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)
        self.ptr_current_pos = 0

    def forward(self, x, use_cache=False):
        b, t, _ = x.shape
        q = self.W_query(x).view(b, t, self.num_heads, self.head_dim)
        k = self.W_key(x).view(b, t, self.num_kv_groups, 1, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.num_kv_groups, 1, self.head_dim).transpose(1, 2)
        offset = 0
        if use_cache:
            offset = self.ptr_current_pos
            if self.cache_k is not None:
                k, v = torch.cat([self.cache_k, k], dim=2), torch.cat([self.cache_v, v], dim=2)
            self.cache_k, self.cache_v = k, v   # (b, groups, tokens, 1, head_dim)
            self.ptr_current_pos += t
        n = k.shape[2]
        k = k.expand(b, self.num_kv_groups, n, self.group_size, self.head_dim)
        v = v.expand(b, self.num_kv_groups, n, self.group_size, self.head_dim)
        k = k.permute(0, 1, 3, 2, 4).reshape(b, self.num_heads, n, self.head_dim)
        v = v.permute(0, 1, 3, 2, 4).reshape(b, self.num_heads, n, self.head_dim)
        scores = torch.einsum("bqhd,bhkd->bhqk", q, k) / self.head_dim ** 0.5
        later = torch.arange(n, device=x.device) > torch.arange(offset, offset + t, device=x.device)[:, None]
        weights = self.dropout(torch.softmax(scores.masked_fill(later, float("-inf")), dim=-1))
        return self.out_proj(torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, t, self.d_out))

    def reset_cache(self):
        self.cache_k, self.cache_v = None, None
        self.ptr_current_pos = 0
'''

MOE_DENSE = '''
class MoEFeedForward(nn.Module):
    """Every expert on every token; the router's weights are zero outside each token's top k."""

    def __init__(self, cfg):
        super().__init__()
        self.num_experts_per_tok = cfg["num_experts_per_tok"]
        self.num_experts = cfg["num_experts"]
        self.emb_dim = cfg["emb_dim"]

        self.gate = nn.Linear(cfg["emb_dim"], cfg["num_experts"], bias=False)   # the router
        self.fc1 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc2 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc3 = nn.ModuleList([nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)
                                  for _ in range(self.num_experts)])

    def forward(self, x):
        probs = torch.softmax(self.gate(x), dim=-1)
        top = probs.topk(self.num_experts_per_tok, dim=-1)
        kept = top.values / top.values.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter_(-1, top.indices, kept)
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            expert = self.fc3[e](nn.functional.silu(self.fc1[e](x)) * self.fc2[e](x))
            out = out + weights[..., e:e + 1] * expert
        return out
'''

BLOCK_TWO_LINES = '''
class TransformerBlock(nn.Module):
    """Pre-LayerNorm block with GQA and, given experts, the MoE feed-forward."""

    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["drop_rate"], cfg["n_heads"],
                                         cfg["n_kv_groups"], qkv_bias=cfg["qkv_bias"])
        if cfg["num_experts"]:
            self.ff = MoEFeedForward(cfg)
        else:
            self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, use_cache=False):
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))
'''

# GQA through torch's scaled_dot_product_attention with the cache kept as lists, an MoE that loops over the
# k slots of the routing (each slot's expert in turn), and a model that slices the position table.
GQA_SDPA = '''
class GroupedQueryAttention(nn.Module):
    """GQA with scaled_dot_product_attention; the cache is a list of the calls' keys and values."""

    def __init__(self, d_in, d_out, dropout, num_heads, num_kv_groups, dtype=None, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0 and num_heads % num_kv_groups == 0
        self.d_out, self.num_heads, self.num_kv_groups = d_out, num_heads, num_kv_groups
        self.head_dim = d_out // num_heads
        self.group_size = num_heads // num_kv_groups
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias, dtype=dtype)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias, dtype=dtype)
        self.out_proj = nn.Linear(d_out, d_out, bias=False, dtype=dtype)
        self.dropout_p = dropout
        self.past = []
        self.cache_k = None

    def forward(self, x, use_cache=False):
        b, t, _ = x.shape
        split = lambda z, h: z.view(b, t, h, self.head_dim).transpose(1, 2)  # noqa: E731
        q = split(self.W_query(x), self.num_heads)
        k, v = split(self.W_key(x), self.num_kv_groups), split(self.W_value(x), self.num_kv_groups)
        seen = 0
        if use_cache:
            seen = sum(part[0].shape[2] for part in self.past)
            self.past.append((k, v))
            k = torch.cat([part[0] for part in self.past], dim=2)
            v = torch.cat([part[1] for part in self.past], dim=2)
            self.cache_k = k
        heads = torch.arange(self.num_heads, device=x.device) // self.group_size
        allowed = torch.arange(k.shape[2], device=x.device) <= torch.arange(seen, seen + t, device=x.device)[:, None]
        context = nn.functional.scaled_dot_product_attention(q, k[:, heads], v[:, heads], attn_mask=allowed,
                                                 dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))

    def reset_cache(self):
        self.past, self.cache_k = [], None
'''

MOE_SLOTS = '''
class MoEFeedForward(nn.Module):
    """Routing slot by slot: for the j-th choice of every token, each expert runs on the tokens that chose it."""

    def __init__(self, cfg):
        super().__init__()
        self.num_experts_per_tok = cfg["num_experts_per_tok"]
        self.num_experts = cfg["num_experts"]
        self.emb_dim = cfg["emb_dim"]

        self.gate = nn.Linear(cfg["emb_dim"], cfg["num_experts"], bias=False)   # the router
        self.fc1 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc2 = nn.ModuleList([nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
                                  for _ in range(self.num_experts)])
        self.fc3 = nn.ModuleList([nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)
                                  for _ in range(self.num_experts)])

    def forward(self, x):
        tokens = x.reshape(-1, self.emb_dim)
        scores, experts = self.gate(tokens).topk(self.num_experts_per_tok, dim=1)
        weights = scores.softmax(dim=1)
        out = torch.zeros_like(tokens)
        for slot in range(self.num_experts_per_tok):
            for e in range(self.num_experts):
                rows = (experts[:, slot] == e).nonzero(as_tuple=True)[0]
                if len(rows):
                    h = tokens[rows]
                    y = self.fc3[e](nn.functional.silu(self.fc1[e](h)) * self.fc2[e](h))
                    out[rows] += weights[rows, slot, None] * y
        return out.view_as(x)
'''

MODEL_SLICED = '''
class GPTModel(nn.Module):
    """GPT with GQA (and MoE) blocks and a KV cache: forward(in_idx, use_cache=False), reset_kv_cache()."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.current_pos = 0   # how many tokens the cache holds: where the next positions start

        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx, use_cache=False):
        n = in_idx.shape[1]
        offset = self.current_pos if use_cache else 0
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb.weight[offset:offset + n])
        if use_cache:
            self.current_pos = offset + n
        for block in self.trf_blocks:
            x = block(x, use_cache)
        return self.out_head(self.final_norm(x))

    def reset_kv_cache(self):
        for blk in self.trf_blocks:
            blk.att.reset_cache()
        self.current_pos = 0
'''

VARIANTS = [
    Variant("expand_einsum_and_dense_moe", GM, {GQA: GQA_EXPAND, MOE: MOE_DENSE, "transformer_block": BLOCK_TWO_LINES}),
    Variant("sdpa_and_moe_by_slot", GM, {GQA: GQA_SDPA, MOE: MOE_SLOTS, "gpt_model": MODEL_SLICED}),
]
