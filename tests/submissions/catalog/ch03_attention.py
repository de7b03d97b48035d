"""Mutants and variants of chapter 3: coding attention mechanisms."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

CH03 = "ch03_attention"
MHA_ALL = {"test_mha_output", "test_mha_is_causal", "test_mha_shorter_input"}
# The wrapper is graded on correct CausalAttention heads: a bug in CausalAttention costs only its own tests.
CAUSAL_ALL = {"test_causal_attention_output", "test_causal_attention_is_causal", "test_causal_attention_shorter_input",
              "test_causal_attention_dropout_in_training"}

# Attention-free modules with the stubs' __init__: each output depends on its own token only.
NO_ATTENTION_CAUSAL = '''class CausalAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        return self.dropout(self.W_value(x))
'''

NO_ATTENTION_MHA = '''class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        return self.out_proj(self.dropout(self.W_value(x)))
'''


MUTANTS = [
    mutant("simplified_without_softmax", CH03, "simplified_self_attention",
           [("attn_weights = torch.softmax(attn_scores, dim=-1)", "attn_weights = attn_scores")],
           {"test_simplified_self_attention"}),
    # The book's softmax_naive (section 3.3.1): exp overflows for large scores, and inf / inf is NaN.
    mutant("simplified_naive_softmax", CH03, "simplified_self_attention",
           [("attn_weights = torch.softmax(attn_scores, dim=-1)",
             "attn_weights = torch.exp(attn_scores) / torch.exp(attn_scores).sum(dim=-1, keepdim=True)")],
           {"test_simplified_self_attention"}, says="subtracts each row's maximum first"),
    mutant("v1_scores_transposed", CH03, "self_attention_v1",
           [("attn_scores = queries @ keys.T", "attn_scores = keys @ queries.T")],
           {"test_self_attention_v1"}),
    mutant("v2_not_scaled", CH03, "self_attention_v2",
           [("torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)", "torch.softmax(attn_scores, dim=-1)")],
           {"test_self_attention_v2"}, says="exactly what unscaled scores give"),
    mutant("causal_missing_mask", CH03, "causal_attention",
           [("attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)", "pass")],
           {"test_causal_attention_output", "test_causal_attention_is_causal", "test_causal_attention_shorter_input"},
           says="exactly what attention without the causal mask"),
    mutant("causal_mask_not_cut_to_length", CH03, "causal_attention",
           [("self.mask.bool()[:num_tokens, :num_tokens]", "self.mask.bool()")],
           {"test_causal_attention_shorter_input"}, says="top-left num_tokens x num_tokens corner"),
    mutant("causal_mask_as_plain_attribute", CH03, "causal_attention",
           [('self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))',
             "self.mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)")],
           CAUSAL_ALL, says="self.register_buffer('mask', ...)"),
    mutant("causal_dropout_even_in_eval", CH03, "causal_attention",
           [("attn_weights = self.dropout(attn_weights)",
             "attn_weights = torch.nn.functional.dropout(attn_weights, self.dropout.p, training=True)")],
           {"test_causal_attention_output", "test_causal_attention_shorter_input"}, says="dropout is still on"),
    mutant("causal_without_dropout", CH03, "causal_attention",
           [("attn_weights = self.dropout(attn_weights)", "attn_weights = attn_weights")],
           {"test_causal_attention_dropout_in_training"}),
    mutant("wrapper_concatenates_tokens", CH03, "multi_head_attention_wrapper",
           [("dim=-1)", "dim=1)")],
           {"test_wrapper_output"}),
    # The mask is cut right: the shorter-input test must not tell the student to cut it.
    mutant("mha_scaled_by_d_out", CH03, "multi_head_attention",
           [("attn_scores / self.head_dim ** 0.5", "attn_scores / self.d_out ** 0.5")],
           {"test_mha_output", "test_mha_shorter_input"}, says="exactly what scores scaled by sqrt(d_out)",
           not_says="top-left num_tokens x num_tokens corner"),
    mutant("mha_softmax_over_queries", CH03, "multi_head_attention",
           [("torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-1)",
             "torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-2)")],
           MHA_ALL, says="exactly what a softmax over the wrong dimension"),
    mutant("mha_mask_filled_with_zero", CH03, "multi_head_attention",
           [("-torch.inf)", "0.0)")],
           MHA_ALL),
    mutant("mha_heads_viewed_without_transpose", CH03, "multi_head_attention",
           [(f"{name} = {name}.view(b, num_tokens, self.num_heads, self.head_dim)",
             f"{name} = {name}.view(b, self.num_heads, num_tokens, self.head_dim)")
            for name in ("keys", "queries", "values")] + [
            ("keys = keys.transpose(1, 2)", "keys = keys"),
            ("queries = queries.transpose(1, 2)", "queries = queries"),
            ("values = values.transpose(1, 2)", "values = values")],
           MHA_ALL),
    mutant("mha_missing_out_proj", CH03, "multi_head_attention",
           [("return self.out_proj(context_vecs)", "return context_vecs")],
           {"test_mha_output", "test_mha_shorter_input"}, says="exactly what attention without the output projection"),
    mutant("mha_dropout_even_in_eval", CH03, "multi_head_attention",
           [("attn_weights = self.dropout(attn_weights)",
             "attn_weights = torch.nn.functional.dropout(attn_weights, self.dropout.p, training=True)")],
           {"test_mha_output", "test_mha_shorter_input"}, says="dropout is still on"),
    mutant("mha_without_dropout", CH03, "multi_head_attention",
           [("attn_weights = self.dropout(attn_weights)", "attn_weights = attn_weights")],
           {"test_mha_dropout_in_training"}),
    mutant("mha_class_renamed", CH03, "multi_head_attention",
           [("class MultiHeadAttention(nn.Module):", "class MultiHeadAttn(nn.Module):")],
           MHA_ALL | {"test_mha_dropout_in_training"}),
    # A solution cell that uses a name only a demo cell defines.
    mutant("simplified_uses_a_demo_variable", CH03, "simplified_self_attention",
           [("attn_scores = inputs @ inputs.T", "attn_scores = inputs @ inputs.T + 0 * attn_scores_2.sum()")],
           {"test_simplified_self_attention"}, says="demo cells are not run when grading"),
    # No attention at all: each output depends on its own token only. It must not earn the property tests.
    rewrite("no_attention_at_all", CH03,
            {"causal_attention": NO_ATTENTION_CAUSAL, "multi_head_attention": NO_ATTENTION_MHA},
            CAUSAL_ALL | MHA_ALL | {"test_mha_dropout_in_training"}, says="do not depend on earlier tokens"),
    # NaN everywhere: comparisons of the student's outputs with each other must not pass on NaN == NaN.
    mutant("mha_returns_nan", CH03, "multi_head_attention",
           [("return self.out_proj(context_vecs)", "return self.out_proj(context_vecs) * float('nan')")],
           MHA_ALL | {"test_mha_dropout_in_training"}, says="nan"),
]


# -- correct variants -----------------------------------------------------------------------------------------

MHA_HEADER = '''class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))
'''

MHA_EINSUM = MHA_HEADER + '''
    def forward(self, x):
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.head_dim ** 0.5
        scores = scores.masked_fill(self.mask[:n, :n] == 1, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.d_out)
        return self.out_proj(context)
'''

MHA_SDPA = MHA_HEADER + '''
    def forward(self, x):
        b, n, _ = x.shape
        heads = lambda t: t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        context = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout.p if self.training else 0.0)
        return self.out_proj(context.transpose(1, 2).reshape(b, n, self.d_out))
'''

CAUSAL_TRIL = '''class CausalAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        n = x.shape[1]
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
        scores = self.W_query(x) @ self.W_key(x).mT / self.d_out ** 0.5
        weights = torch.softmax(torch.where(allowed, scores, torch.tensor(float("-inf"), device=x.device)), dim=-1)
        return self.dropout(weights) @ self.W_value(x)
'''

SIMPLIFIED_LOOPS = '''def simplified_self_attention(inputs):
    context = torch.empty_like(inputs)
    for i, query in enumerate(inputs):
        scores = torch.stack([torch.dot(query, key) for key in inputs])
        scores = scores - scores.max()  # exp of large scores overflows: subtract the row's maximum first
        weights = scores.exp() / scores.exp().sum()
        context[i] = (weights[:, None] * inputs).sum(dim=0)
    return context
'''

VARIANTS = [
    Variant("mha_einsum", CH03, {"multi_head_attention": MHA_EINSUM, "causal_attention": CAUSAL_TRIL}),
    Variant("mha_scaled_dot_product_attention", CH03,
            {"multi_head_attention": MHA_SDPA, "simplified_self_attention": SIMPLIFIED_LOOPS}),
]
