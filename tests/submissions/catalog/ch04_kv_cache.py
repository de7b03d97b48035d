"""Mutants and variants of the chapter 4 bonus: a KV cache for faster generation.

A mistake in the attention breaks only the attention's tests: the block runs on a correct cached attention, the
model on correct cached blocks, the generation on a correct cached GPT (the grader's stand-ins).
"""

from tests.submissions.catalog.base import Variant, mutant

KV = "ch04_kv_cache"

CACHED_STEPS = {"test_attention_cache_one_token_at_a_time", "test_attention_cache_in_chunks"}

MUTANTS = [
    # -- MultiHeadAttention ---------------------------------------------------------------------------------
    mutant("mask_rows_not_offset", KV, "multi_head_attention",
           [("self.mask.bool()[first_row:first_row + num_tokens, :num_tokens_K]",
             "self.mask.bool()[:num_tokens, :num_tokens_K]")],
           CACHED_STEPS, says="rows start at 0 for every call"),
    mutant("keys_concatenated_on_the_heads", KV, "multi_head_attention",
           [("self.cache_k = torch.cat([self.cache_k, keys_new], dim=1)",
             "self.cache_k = torch.cat([self.cache_k, keys_new], dim=2)"),
            ("self.cache_v = torch.cat([self.cache_v, values_new], dim=1)",
             "self.cache_v = torch.cat([self.cache_v, values_new], dim=2)")],
           CACHED_STEPS, says="along the token dimension"),
    mutant("cache_filled_but_not_read", KV, "multi_head_attention",
           [("keys, values = self.cache_k, self.cache_v", "keys, values = keys_new, values_new")],
           CACHED_STEPS, says="the new tokens only"),
    mutant("no_mask_with_the_cache", KV, "multi_head_attention",
           [("attn_scores = attn_scores.masked_fill(mask_bool, -torch.inf)",
             "attn_scores = attn_scores if use_cache else attn_scores.masked_fill(mask_bool, -torch.inf)")],
           CACHED_STEPS | {"test_attention_reset_cache_and_state_dict"}, says="without the causal mask"),
    mutant("cache_in_the_state_dict", KV, "multi_head_attention",
           [('self.register_buffer("cache_k", None, persistent=False)', 'self.register_buffer("cache_k", None)'),
            ('self.register_buffer("cache_v", None, persistent=False)', 'self.register_buffer("cache_v", None)')],
           {"test_attention_reset_cache_and_state_dict"}, says="persistent=False"),
    mutant("reset_cache_keeps_the_position", KV, "multi_head_attention",
           [("        self.cache_k, self.cache_v = None, None\n        self.ptr_current_pos = 0\n",
             "        self.cache_k, self.cache_v = None, None\n")],
           {"test_attention_reset_cache_and_state_dict"}, says="reset_cache() empties them"),
    mutant("uncached_call_fills_the_cache", KV, "multi_head_attention",
           [("        if use_cache:\n            if self.cache_k is None:",
             "        if True:\n            if self.cache_k is None:")],
           {"test_attention_without_cache"}, says="neither reads nor fills the cache"),
    # -- TransformerBlock -----------------------------------------------------------------------------------
    mutant("block_drops_use_cache", KV, "transformer_block",
           [("x = self.att(self.norm1(x), use_cache=use_cache)", "x = self.att(self.norm1(x))")],
           {"test_transformer_block_passes_use_cache"}, says="does not hand use_cache on"),
    # -- GPTModel -------------------------------------------------------------------------------------------
    mutant("positions_restart_at_zero", KV, "gpt_model",
           [("start = self.current_pos if use_cache else 0", "start = 0")],
           {"test_gpt_model_cache_positions"}, says="restart at 0 for every call"),
    mutant("current_pos_advanced_too_early", KV, "gpt_model",
           [("        start = self.current_pos if use_cache else 0\n"
             "        pos_ids = torch.arange(start, start + seq_len, device=in_idx.device)\n"
             "        if use_cache:\n            self.current_pos += seq_len\n",
             "        if use_cache:\n            self.current_pos += seq_len\n"
             "        start = self.current_pos if use_cache else 0\n"
             "        pos_ids = torch.arange(start, start + seq_len, device=in_idx.device)\n")],
           {"test_gpt_model_cache_positions", "test_gpt_model_reset_kv_cache"}),
    mutant("model_drops_use_cache", KV, "gpt_model",
           [("x = blk(x, use_cache=use_cache)", "x = blk(x)")],
           {"test_gpt_model_cache_positions"}, says="does not hand use_cache on to its blocks"),
    mutant("model_always_caches", KV, "gpt_model",
           [("x = blk(x, use_cache=use_cache)", "x = blk(x, use_cache=True)")],
           {"test_gpt_model_without_cache"}, says="neither fill nor read their caches"),
    mutant("reset_forgets_the_blocks", KV, "gpt_model",
           [("        for blk in self.trf_blocks:\n            blk.att.reset_cache()\n        self.current_pos = 0\n",
             "        self.current_pos = 0\n")],
           {"test_gpt_model_reset_kv_cache"}, says="reset_kv_cache() empties the cache of every block"),
    mutant("reset_forgets_the_position", KV, "gpt_model",
           [("        for blk in self.trf_blocks:\n            blk.att.reset_cache()\n        self.current_pos = 0\n",
             "        for blk in self.trf_blocks:\n            blk.att.reset_cache()\n")],
           {"test_gpt_model_reset_kv_cache"}, says="current_pos back to 0"),
    # -- generate_text_simple_cached ------------------------------------------------------------------------
    mutant("generation_without_reset", KV, "generate_text_simple_cached",
           [("        model.reset_kv_cache()\n        logits = model(idx[:, -ctx_len:], use_cache=True)              #",
             "        logits = model(idx[:, -ctx_len:], use_cache=True)              #")],
           {"test_generate_cached_resets_between_prompts"}, says="reset"),
    # The cache grown past the context: the whole prompt goes into it.
    mutant("prompt_not_cropped", KV, "generate_text_simple_cached",
           [("logits = model(idx[:, -ctx_len:], use_cache=True)              # the prefill",
             "logits = model(idx, use_cache=True)              # the prefill")],
           {"test_generate_cached_crops_the_prompt"}, says="prefill of the whole prompt"),
    mutant("cache_never_used", KV, "generate_text_simple_cached",
           [("                logits = model(next_idx, use_cache=True)               # only the new token",
             "                logits = model(idx[:, -ctx_len:], use_cache=False)")],
           {"test_generate_cached_equals_uncached"}, says="only the newest token"),
    mutant("first_position_logits", KV, "generate_text_simple_cached",
           [("            next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)      # (batch, 1)",
             "            next_idx = logits[:, 0].argmax(dim=-1, keepdim=True)      # (batch, 1)")],
           {"test_generate_cached_equals_uncached", "test_generate_cached_resets_between_prompts",
            "test_generate_cached_crops_the_prompt"}),
]

# A cache kept as Python lists of the chunks' keys and values (concatenated when used), a model that resets
# every module that has a reset_cache, and generation as the book writes it (the last new token fed too, the
# cache growing past context_size).
ATTENTION_LISTS = '''
class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with a cache kept as lists of the keys and values of each call."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))
        self.past_keys, self.past_values = [], []

    def forward(self, x, use_cache=False):
        b, t, _ = x.shape
        split = lambda z: z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        seen = sum(part.shape[2] for part in self.past_keys) if use_cache else 0
        if use_cache:
            self.past_keys.append(k)
            self.past_values.append(v)
            k, v = torch.cat(self.past_keys, dim=2), torch.cat(self.past_values, dim=2)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / self.head_dim ** 0.5
        scores = scores.masked_fill(self.mask[seen:seen + t, :seen + t].bool(), float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out_proj(torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, t, self.d_out))

    def reset_cache(self):
        self.past_keys, self.past_values = [], []
'''

MODEL_RESET_MODULES = '''
class GPTModel(nn.Module):
    """GPT-2 with a KV cache: forward(in_idx, use_cache=False), reset_kv_cache()."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.current_pos = 0

        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx, use_cache=False):
        offset = self.current_pos if use_cache else 0
        n = in_idx.shape[1]
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb.weight[offset:offset + n])
        self.current_pos = offset + n if use_cache else self.current_pos
        for block in self.trf_blocks:
            x = block(x, use_cache)
        return self.out_head(self.final_norm(x))

    def reset_kv_cache(self):
        for module in self.modules():
            if module is not self and hasattr(module, "reset_cache"):
                module.reset_cache()
        self.current_pos = 0
'''

GENERATE_GROWING = '''
def generate_text_simple_cached(model, idx, max_new_tokens, context_size=None, use_cache=True):
    """Greedy decoding with the cache; the cache keeps growing after the prompt."""
    model.eval()
    ctx_len = context_size or model.pos_emb.num_embeddings
    with torch.no_grad():
        if use_cache:
            model.reset_kv_cache()
            logits = model(idx[:, -ctx_len:], use_cache=True)
            for _ in range(max_new_tokens):
                new = torch.argmax(logits[:, -1, :], dim=-1).unsqueeze(-1)
                idx = torch.cat((idx, new), dim=-1)
                logits = model(new, use_cache=True)
        else:
            for _ in range(max_new_tokens):
                new = torch.argmax(model(idx[:, -ctx_len:])[:, -1, :], dim=-1).unsqueeze(-1)
                idx = torch.cat((idx, new), dim=-1)
    return idx
'''

# A preallocated cache (one tensor of context_length slots per batch, filled in place), a block written in two
# lines, and generation that collects the new ids in a list.
ATTENTION_PREALLOCATED = '''
class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with a preallocated cache of context_length slots."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1),
                             persistent=False)
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)
        self.ptr_current_pos = 0

    def forward(self, x, use_cache=False):
        b, t, _ = x.shape
        q = self.W_query(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        start = 0
        if use_cache:
            if self.cache_k is None or self.cache_k.shape[0] != b:
                slots = (b, self.num_heads, self.context_length, self.head_dim)
                self.cache_k = torch.zeros(slots, dtype=k.dtype, device=k.device)
                self.cache_v = torch.zeros(slots, dtype=v.dtype, device=v.device)
            start = self.ptr_current_pos
            self.cache_k[:, :, start:start + t] = k
            self.cache_v[:, :, start:start + t] = v
            self.ptr_current_pos = start + t
            k, v = self.cache_k[:, :, :start + t], self.cache_v[:, :, :start + t]
        scores = q @ k.transpose(-1, -2) / self.head_dim ** 0.5
        scores = scores.masked_fill(self.mask[start:start + t, :k.shape[2]].bool(), -torch.inf)
        context = self.dropout(torch.softmax(scores, dim=-1)) @ v
        return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))

    def reset_cache(self):
        self.cache_k, self.cache_v = None, None
        self.ptr_current_pos = 0
'''

BLOCK_TWO_LINES = '''
class TransformerBlock(nn.Module):
    """GPT-2's pre-LayerNorm block; forward(x, use_cache=False) passes use_cache to the attention."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, use_cache=False):
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))
'''

GENERATE_LIST = '''
def generate_text_simple_cached(model, idx, max_new_tokens, context_size=None, use_cache=True):
    """Greedy decoding; the new ids are collected in a list and joined at the end."""
    model.eval()
    ctx_len = context_size or model.pos_emb.num_embeddings
    new_ids = []
    with torch.no_grad():
        if use_cache:
            model.reset_kv_cache()
            logits = model(idx[:, -ctx_len:], use_cache=True)
        for step in range(max_new_tokens):
            if not use_cache:
                sequence = torch.cat([idx, *new_ids], dim=1)
                logits = model(sequence[:, -ctx_len:])
            new_ids.append(logits[:, -1].max(dim=-1).indices.unsqueeze(1))
            if use_cache and step + 1 < max_new_tokens:
                logits = model(new_ids[-1], use_cache=True)
    return torch.cat([idx, *new_ids], dim=1)
'''

VARIANTS = [
    Variant("list_cache_and_growing_generation", KV,
            {"multi_head_attention": ATTENTION_LISTS, "gpt_model": MODEL_RESET_MODULES,
             "generate_text_simple_cached": GENERATE_GROWING}),
    Variant("preallocated_cache", KV,
            {"multi_head_attention": ATTENTION_PREALLOCATED, "transformer_block": BLOCK_TWO_LINES,
             "generate_text_simple_cached": GENERATE_LIST}),
]
