"""The catalog of derived submissions.

MUTANTS: one realistic bug each, written as exact edits of one solution cell (or whole new cell sources), with
the grader tests it must fail. Every other test must still pass ("loses the points of the tests aimed at its
bug and keeps the others"). `says` is a phrase one failing test's message must contain (the grader names the
mistake, or points at the earlier part to fix first); `not_says` a phrase none may contain (a hint that would
be wrong for this bug).
VARIANTS: correct solutions written differently (einsum, scaled_dot_product_attention, unfold, the book's own
edge-case behaviour, ...), which must score full marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mutant:
    name: str
    assignment: str
    cell: str  # grade_id of the edited cell
    edits: tuple[tuple[str, str], ...]
    breaks: frozenset[str]
    says: str = ""  # a phrase that at least one failing test's message contains: the grader names the mistake
    not_says: str = ""  # a phrase that no failing test's message may contain (a hint that does not fit)
    sources: dict[str, str] = field(default_factory=dict)  # grade_id -> whole new cell source (instead of edits)


@dataclass(frozen=True)
class Variant:
    name: str
    assignment: str
    sources: dict[str, str] = field(default_factory=dict)  # grade_id -> whole new cell source


def mutant(name, assignment, cell, edits, breaks, says="", not_says=""):
    return Mutant(name, assignment, cell, tuple(edits), frozenset(breaks), says, not_says)


def rewrite(name, assignment, sources, breaks, says="", not_says=""):
    """A mutant that replaces whole cells (a different, wrong implementation rather than a one-line slip)."""
    return Mutant(name, assignment, "", (), frozenset(breaks), says, not_says, dict(sources))


CH02, CH03 = "ch02_text_data", "ch03_attention"
MHA_ALL = {"test_mha_output", "test_mha_is_causal", "test_mha_shorter_input"}
CAUSAL_ALL = {"test_causal_attention_output", "test_causal_attention_is_causal", "test_causal_attention_shorter_input",
              "test_causal_attention_dropout_in_training", "test_wrapper_output"}
TOKENIZER_TESTS = {"test_tokenizer_v1_encode", "test_tokenizer_v2_unknown_words", "test_tokenizer_v2_endoftext"}

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
    # -- chapter 2 --------------------------------------------------------------------------------------------
    mutant("tokenize_keeps_whitespace", CH02, "simple_tokenize",
           [("return [piece.strip() for piece in pieces if piece.strip()]",
             "return [piece for piece in pieces if piece]")],
           {"test_simple_tokenize"} | TOKENIZER_TESTS, says="Fix test_simple_tokenize"),
    # The tokenizers then fail with KeyError: '' in the student's own encode: the message points at the cause.
    mutant("tokenize_keeps_empty_tokens", CH02, "simple_tokenize",
           [("return [piece.strip() for piece in pieces if piece.strip()]",
             "return [piece.strip() for piece in pieces if piece]")],
           {"test_simple_tokenize"} | TOKENIZER_TESTS, says="Fix test_simple_tokenize"),
    mutant("vocab_not_sorted", CH02, "build_vocab",
           [("vocab_tokens = sorted(set(tokens))", "vocab_tokens = list(dict.fromkeys(tokens))")],
           {"test_build_vocab"}),
    mutant("vocab_specials_first", CH02, "build_vocab",
           [("vocab_tokens.append(special)", "vocab_tokens.insert(0, special)")],
           {"test_build_vocab"}),
    mutant("v1_decode_keeps_space_before_punctuation", CH02, "simple_tokenizer_v1",
           [("return re.sub(r'\\s+([,.?!\"()\\'])', r'\\1', text)", "return text")],
           {"test_tokenizer_v1_decode"}),
    mutant("v2_no_unknown_token", CH02, "simple_tokenizer_v2",
           [('tokens = [token if token in self.str_to_int else "<|unk|>" for token in tokens]', "pass")],
           {"test_tokenizer_v2_unknown_words"}),
    mutant("v2_decode_with_v1_punctuation", CH02, "simple_tokenizer_v2",
           [("r'\\s+([,.:;?!\"()\\'])'", "r'\\s+([,.?!\"()\\'])'")],
           {"test_tokenizer_v2_endoftext"}),
    mutant("dataset_off_by_one_window", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - max_length - 1, stride)")],
           {"test_dataset_windows", "test_dataset_short_texts", "test_dataloader_batches"}),
    mutant("dataset_targets_not_shifted", CH02, "gpt_dataset_v1",
           [("token_ids[start + 1:start + max_length + 1]", "token_ids[start:start + max_length]")],
           {"test_dataset_windows", "test_dataset_short_texts", "test_dataloader_batches"}),
    # Windows that run past the end of the text are shorter: the DataLoader cannot stack them into a batch.
    mutant("dataset_windows_run_past_the_end", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - 1, stride)")],
           {"test_dataset_windows", "test_dataset_short_texts", "test_dataloader_batches"},
           says="Fix test_dataset_windows"),
    mutant("dataset_ignores_stride", CH02, "gpt_dataset_v1",
           [("range(0, len(token_ids) - max_length, stride)", "range(0, len(token_ids) - max_length, 1)")],
           {"test_dataset_windows", "test_dataloader_batches"}),
    mutant("dataloader_ignores_shuffle", CH02, "create_dataloader_v1",
           [("shuffle=shuffle,", "shuffle=False,")],
           {"test_dataloader_shuffle"}),
    mutant("dataloader_always_drops_last", CH02, "create_dataloader_v1",
           [("drop_last=drop_last,", "drop_last=True,")],
           {"test_dataloader_batches"}),
    mutant("embeddings_without_positions", CH02, "create_input_embeddings",
           [("return token_embeddings + pos_embeddings", "return token_embeddings")],
           {"test_input_embeddings"}),
    # -- chapter 3 --------------------------------------------------------------------------------------------
    mutant("simplified_without_softmax", CH03, "simplified_self_attention",
           [("attn_weights = torch.softmax(attn_scores, dim=-1)", "attn_weights = attn_scores")],
           {"test_simplified_self_attention"}),
    mutant("v1_scores_transposed", CH03, "self_attention_v1",
           [("attn_scores = queries @ keys.T", "attn_scores = keys @ queries.T")],
           {"test_self_attention_v1"}),
    mutant("v2_not_scaled", CH03, "self_attention_v2",
           [("torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)", "torch.softmax(attn_scores, dim=-1)")],
           {"test_self_attention_v2"}, says="exactly what unscaled scores give"),
    mutant("causal_missing_mask", CH03, "causal_attention",
           [("attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)", "pass")],
           {"test_causal_attention_output", "test_causal_attention_is_causal", "test_causal_attention_shorter_input",
            "test_wrapper_output"}, says="exactly what attention without the causal mask"),
    mutant("causal_mask_not_cut_to_length", CH03, "causal_attention",
           [("self.mask.bool()[:num_tokens, :num_tokens]", "self.mask.bool()")],
           {"test_causal_attention_shorter_input"}, says="cut the mask to the number of tokens"),
    mutant("causal_mask_as_plain_attribute", CH03, "causal_attention",
           [('self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))',
             "self.mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)")],
           CAUSAL_ALL, says="self.register_buffer('mask', ...)"),
    mutant("causal_dropout_even_in_eval", CH03, "causal_attention",
           [("attn_weights = self.dropout(attn_weights)",
             "attn_weights = torch.nn.functional.dropout(attn_weights, self.dropout.p, training=True)")],
           {"test_causal_attention_output", "test_causal_attention_shorter_input", "test_wrapper_output"},
           says="dropout is still on"),
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
           not_says="cut the mask"),
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
        weights = scores.exp() / scores.exp().sum()
        context[i] = (weights[:, None] * inputs).sum(dim=0)
    return context
'''

DATASET_UNFOLD = '''class GPTDatasetV1(Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        ids = torch.tensor(tokenizer.encode(txt, allowed_special={"<|endoftext|>"}))
        if len(ids) > max_length:
            for window in ids.unfold(0, max_length + 1, stride):
                self.input_ids.append(window[:-1].clone())
                self.target_ids.append(window[1:].clone())

    def __len__(self):
        return len(self.target_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]
'''

TOKENIZE_FILTER = '''def simple_tokenize(text):
    parts = map(str.strip, re.split(r'([,.:;?_!"()\\']|--|\\s)', text))
    return list(filter(None, parts))
'''

VOCAB_ONE_LINER = '''def build_vocab(tokens, special_tokens=()):
    words = sorted(set(tokens))
    extra = [s for i, s in enumerate(special_tokens) if s not in words and s not in special_tokens[:i]]
    return dict(zip(words + extra, range(len(words) + len(extra))))
'''

EMBEDDINGS_INDEXING = '''def create_input_embeddings(token_ids, token_embedding_layer, pos_embedding_layer):
    n = token_ids.size(1)
    return token_embedding_layer.weight[token_ids] + pos_embedding_layer.weight[:n].unsqueeze(0)
'''

# The book's own edge-case behaviour, written for this course: special tokens appended without a check, and a
# dataset that refuses a text too short for one window (the book's current notebook asserts).
VOCAB_AS_THE_BOOK = '''def build_vocab(tokens, special_tokens=()):
    all_tokens = sorted(set(tokens))
    all_tokens.extend(special_tokens)
    return {token: integer for integer, token in enumerate(all_tokens)}
'''

DATASET_THAT_REFUSES_SHORT_TEXTS = '''class GPTDatasetV1(Dataset):
    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        assert len(token_ids) > max_length, "the text needs at least max_length + 1 tokens"
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i:i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]
'''

VARIANTS = [
    Variant("mha_einsum", CH03, {"multi_head_attention": MHA_EINSUM, "causal_attention": CAUSAL_TRIL}),
    Variant("mha_scaled_dot_product_attention", CH03,
            {"multi_head_attention": MHA_SDPA, "simplified_self_attention": SIMPLIFIED_LOOPS}),
    Variant("book_edge_cases", CH02,
            {"build_vocab": VOCAB_AS_THE_BOOK, "gpt_dataset_v1": DATASET_THAT_REFUSES_SHORT_TEXTS}),
    Variant("dataset_unfold_and_one_liners", CH02,
            {"gpt_dataset_v1": DATASET_UNFOLD, "simple_tokenize": TOKENIZE_FILTER, "build_vocab": VOCAB_ONE_LINER,
             "create_input_embeddings": EMBEDDINGS_INDEXING}),
]
