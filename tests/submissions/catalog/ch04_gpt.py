"""Mutants and variants of chapter 4: implementing a GPT model from scratch to generate text.

A mistake in a building block (LayerNorm, GELU, the transformer block) breaks only that block's tests: the tests
of the modules built on it run them on correct stand-ins of their parts. Only test_gpt_model_size builds the
whole model from the student's own parts (the grader's PARTS_FIT).
"""

from tests.submissions.catalog.base import Variant, mutant

CH04 = "ch04_gpt"

# The tests of a broken block or model: the model's tests run the student's model on stand-in blocks.
BLOCK_ALL = {"test_transformer_block", "test_transformer_block_dropout_in_training"}
MODEL_VALUES = {"test_gpt_model_logits", "test_gpt_model_shorter_input", "test_gpt_model_dropout_in_training"}
LN_ALL = {"test_layer_norm"}
GELU_ALL = {"test_gelu"}

BLOCK_BODY = '''        shortcut = x
        x = self.norm1(x)
        x = self.att(x)            # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut

        # Feed-forward sub-block: the same pattern with norm2 and ff.
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)             # (batch, num_tokens, emb_dim)
        x = self.drop_shortcut(x)
        x = x + shortcut
        return x                   # (batch, num_tokens, emb_dim)
'''


def block_body(text):
    return [(BLOCK_BODY, text)]


MUTANTS = [
    # -- LayerNorm ------------------------------------------------------------------------------------------
    mutant("ln_unbiased_variance", CH04, "layer_norm",
           [("var = x.var(dim=-1, keepdim=True, unbiased=False)", "var = x.var(dim=-1, keepdim=True)")],
           LN_ALL, says="exactly what LayerNorm with the unbiased variance"),
    mutant("ln_without_eps", CH04, "layer_norm",
           [("torch.sqrt(var + self.eps)", "torch.sqrt(var)")],
           {"test_layer_norm"}, says="exactly what LayerNorm without eps"),
    mutant("ln_eps_outside_the_square_root", CH04, "layer_norm",
           [("torch.sqrt(var + self.eps)", "(torch.sqrt(var) + self.eps)")],
           {"test_layer_norm"}, says="eps added to the standard deviation"),
    # Normalising over the tokens also lets a position see later tokens: LayerNorm's own test names it.
    mutant("ln_over_the_tokens", CH04, "layer_norm",
           [("mean = x.mean(dim=-1, keepdim=True)", "mean = x.mean(dim=1, keepdim=True)"),
            ("var = x.var(dim=-1, keepdim=True, unbiased=False)", "var = x.var(dim=1, keepdim=True, unbiased=False)")],
           LN_ALL, says="over dimension 1 (the tokens)"),
    # Large activations (far from 0): the one-pass variance loses its precision in float32.
    mutant("ln_variance_as_mean_of_squares", CH04, "layer_norm",
           [("var = x.var(dim=-1, keepdim=True, unbiased=False)",
             "var = (x ** 2).mean(dim=-1, keepdim=True) - mean ** 2")],
           LN_ALL, says="the mean of the squares minus the square of the mean"),
    mutant("ln_without_scale_and_shift", CH04, "layer_norm",
           [("return self.scale * norm_x + self.shift", "return norm_x")],
           LN_ALL, says="exactly what LayerNorm without scale and shift"),
    # -- GELU and FeedForward -------------------------------------------------------------------------------
    mutant("gelu_exact_erf", CH04, "gelu",
           [("return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x ** 3)))",
             "return torch.nn.functional.gelu(x)")],
           GELU_ALL, says="exactly what the exact GELU (with erf)"),
    mutant("gelu_without_cubic_term", CH04, "gelu",
           [("torch.tanh(c * (x + 0.044715 * x ** 3))", "torch.tanh(c * x)")],
           GELU_ALL, says="exactly what GELU without the cubic term"),
    mutant("ff_without_activation", CH04, "feed_forward",
           [("return self.layers(x)", "return self.layers[2](self.layers[0](x))")],
           {"test_feed_forward"}, says="without its activation"),
    # -- shortcut connections -------------------------------------------------------------------------------
    mutant("example_network_shortcut_without_shape_check", CH04, "example_deep_neural_network",
           [("if self.use_shortcut and x.shape == layer_output.shape:", "if self.use_shortcut:")],
           {"test_example_deep_neural_network"}),
    mutant("example_network_ignores_use_shortcut", CH04, "example_deep_neural_network",
           [("if self.use_shortcut and x.shape == layer_output.shape:", "if x.shape == layer_output.shape:")],
           {"test_example_deep_neural_network"}, says="use_shortcut=True"),
    # -- TransformerBlock -----------------------------------------------------------------------------------
    mutant("block_post_layernorm", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = self.norm1(x + shortcut)
        shortcut = x
        x = self.ff(x)
        x = self.drop_shortcut(x)
        x = self.norm2(x + shortcut)
        return x
'''), BLOCK_ALL, says="exactly what a post-LayerNorm block"),
    # The second shortcut forgotten: the public check names it, and tells it apart from a post-LayerNorm block.
    mutant("block_without_second_shortcut", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = x + shortcut
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x
'''), BLOCK_ALL, says="without the shortcut around the feed-forward network"),
    mutant("block_without_shortcuts", CH04, "transformer_block", block_body('''        x = self.norm1(x)
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x
'''), BLOCK_ALL, says="exactly what a block without shortcut connections"),
    mutant("block_shortcut_after_the_norm", CH04, "transformer_block", block_body('''        x = self.norm1(x)
        shortcut = x
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = x + shortcut
        x = self.norm2(x)
        shortcut = x
        x = self.ff(x)
        x = self.drop_shortcut(x)
        x = x + shortcut
        return x
'''), BLOCK_ALL, says="shortcuts start after the LayerNorm"),
    mutant("block_norm1_twice", CH04, "transformer_block",
           [("x = self.norm2(x)", "x = self.norm1(x)")],
           BLOCK_ALL, says="uses norm1 twice"),
    mutant("block_dropout_on_the_sum", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = self.drop_shortcut(x + shortcut)
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x + shortcut)
        return x
'''), {"test_transformer_block_dropout_in_training"}, says="not on the sum"),
    mutant("block_without_dropout", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = x + shortcut
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = x + shortcut
        return x
'''), {"test_transformer_block_dropout_in_training"}),
    mutant("block_dropout_even_in_eval", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = torch.nn.functional.dropout(x, self.drop_shortcut.p, training=True)
        x = x + shortcut
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = torch.nn.functional.dropout(x, self.drop_shortcut.p, training=True)
        x = x + shortcut
        return x
'''), BLOCK_ALL, says="dropout is still on"),
    # No attention at all: each position sees only its own token.
    mutant("block_without_attention", CH04, "transformer_block", block_body('''        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x + shortcut
'''), BLOCK_ALL, says="a block without its attention sub-block"),
    # -- GPTModel -------------------------------------------------------------------------------------------
    mutant("model_positions_from_1", CH04, "gpt_model",
           [("torch.arange(num_tokens, device=in_idx.device)",
             "torch.arange(1, num_tokens + 1, device=in_idx.device)")],
           MODEL_VALUES | {"test_gpt_model_size", "test_gpt_model_is_causal"},
           says="exactly what position ids that start at 1"),
    mutant("model_positions_of_the_whole_context", CH04, "gpt_model",
           [("torch.arange(num_tokens, device=in_idx.device)",
             "torch.arange(self.pos_emb.num_embeddings, device=in_idx.device)")],
           {"test_gpt_model_shorter_input", "test_gpt_model_dropout_in_training"},
           says="embed the positions of the input's own tokens"),
    mutant("model_without_final_norm", CH04, "gpt_model",
           [("        x = self.final_norm(x)\n", "")],
           MODEL_VALUES, says="exactly what a model without the final LayerNorm"),
    mutant("model_returns_probabilities", CH04, "gpt_model",
           [("return self.out_head(x)", "return torch.softmax(self.out_head(x), dim=-1)")],
           MODEL_VALUES, says="exactly what the softmax of the logits"),
    mutant("model_without_drop_emb", CH04, "gpt_model",
           [("        x = self.drop_emb(x)\n", "")],
           {"test_gpt_model_dropout_in_training"}, says="apply self.drop_emb"),
    mutant("model_weight_tying", CH04, "gpt_model",
           [("self.out_head = nn.Linear(cfg[\"emb_dim\"], cfg[\"vocab_size\"], bias=False)",
             "self.out_head = nn.Linear(cfg[\"emb_dim\"], cfg[\"vocab_size\"], bias=False)\n"
             "        self.out_head.weight = self.tok_emb.weight")],
           MODEL_VALUES | {"test_gpt_model_size"}, says="weight tying"),
    mutant("model_logits_of_the_last_token_only", CH04, "gpt_model",
           [("return self.out_head(x)", "return self.out_head(x[:, -1, :])")],
           MODEL_VALUES | {"test_gpt_model_size", "test_gpt_model_is_causal"}),
    # Squeezing the batch dimension works for batches of several inputs, not for a batch of one.
    mutant("model_squeezes_the_batch", CH04, "gpt_model",
           [("return self.out_head(x)", "return self.out_head(x).squeeze(0)")],
           {"test_gpt_model_shorter_input"}, says="expected (1, 6, 53)"),
    # NaN everywhere: comparisons of the student's outputs with each other must not pass on NaN == NaN.
    mutant("model_returns_nan", CH04, "gpt_model",
           [("return self.out_head(x)", "return self.out_head(x) * float('nan')")],
           MODEL_VALUES | {"test_gpt_model_is_causal"}, says="nan"),
    # -- generate_text_simple -------------------------------------------------------------------------------
    mutant("generate_keeps_the_first_tokens", CH04, "generate_text_simple",
           [("idx_cond = idx[:, -context_size:]", "idx_cond = idx[:, :context_size]")],
           {"test_generate_text_simple_crops_context"}, says="keeping the FIRST context_size tokens"),
    mutant("generate_without_cropping", CH04, "generate_text_simple",
           [("idx_cond = idx[:, -context_size:]", "idx_cond = idx")],
           {"test_generate_text_simple_crops_context"}, says="only the last context_size tokens"),
    mutant("generate_from_the_first_position", CH04, "generate_text_simple",
           [("logits = logits[:, -1, :]", "logits = logits[:, 0, :]")],
           {"test_generate_text_simple", "test_generate_text_simple_crops_context"},
           says="logits of the first position"),
    mutant("generate_returns_the_new_tokens_only", CH04, "generate_text_simple",
           [("    for _ in range(max_new_tokens):", "    new = idx[:, :0]\n    for _ in range(max_new_tokens):"),
            ("        idx = torch.cat((idx, idx_next), dim=1)    # (batch, n + 1)",
             "        idx = torch.cat((idx, idx_next), dim=1)    # (batch, n + 1)\n"
             "        new = torch.cat((new, idx_next), dim=1)"),
            ("    return idx\n", "    return new\n")],
           {"test_generate_text_simple", "test_generate_text_simple_crops_context"},
           says="the prompt followed by the new tokens"),
]


# -- correct variants -------------------------------------------------------------------------------------------

# LayerNorm through torch.nn.functional, GELU through F.gelu(approximate="tanh"), a block written as two lines,
# a model whose blocks sit in an nn.ModuleList (the state_dict keeps the book's names), generation with the
# book's softmax before the argmax.
LAYER_NORM_FUNCTIONAL = '''class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)
'''

GELU_FUNCTIONAL = '''class GELU(nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x, approximate="tanh")
'''

BLOCK_TWO_LINES = '''class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
                                      num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_resid = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop_resid(self.att(self.norm1(x)))
        return x + self.drop_resid(self.ff(self.norm2(x)))
'''

MODEL_MODULE_LIST = '''class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        positions = torch.arange(in_idx.shape[-1], device=in_idx.device).expand_as(in_idx)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))
        for block in self.trf_blocks:
            x = block(x)
        return self.out_head(self.final_norm(x))
'''

GENERATE_WITH_SOFTMAX = '''def generate_text_simple(model, idx, max_new_tokens, context_size):
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])
        probas = torch.softmax(logits[:, -1, :], dim=-1)
        idx = torch.cat((idx, torch.argmax(probas, dim=-1, keepdim=True)), dim=1)
    return idx
'''

# LayerNorm by hand with sums and rsqrt, GELU with torch.pow, a network that checks sizes instead of shapes,
# generation that crops only when needed and grows a list of ids.
LAYER_NORM_BY_HAND = '''class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        n = x.shape[-1]
        centred = x - x.sum(dim=-1, keepdim=True) / n
        variance = (centred * centred).sum(dim=-1, keepdim=True) / n
        return centred * torch.rsqrt(variance + self.eps) * self.scale + self.shift
'''

GELU_POW = '''class GELU(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        inner = torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
        return 0.5 * x * (1 + torch.tanh(inner))
'''

NETWORK_SIZES = '''class ExampleDeepNeuralNetwork(nn.Module):
    def __init__(self, layer_sizes, use_shortcut):
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(layer_sizes[i], layer_sizes[i + 1]), GELU())
                                     for i in range(5)])

    def forward(self, x):
        for layer in self.layers:
            out = layer(x)
            x = x + out if self.use_shortcut and out.size() == x.size() else out
        return x
'''

GENERATE_LIST = '''def generate_text_simple(model, idx, max_new_tokens, context_size):
    steps = [idx]
    for _ in range(max_new_tokens):
        sequence = torch.cat(steps, dim=1)
        if sequence.shape[1] > context_size:
            sequence = sequence[:, sequence.shape[1] - context_size:]
        with torch.no_grad():
            next_ids = model(sequence)[:, -1].max(dim=-1).indices
        steps.append(next_ids.unsqueeze(1))
    return torch.cat(steps, dim=1)
'''

VARIANTS = [
    Variant("functional_layers_and_module_list", CH04,
            {"layer_norm": LAYER_NORM_FUNCTIONAL, "gelu": GELU_FUNCTIONAL, "transformer_block": BLOCK_TWO_LINES,
             "gpt_model": MODEL_MODULE_LIST, "generate_text_simple": GENERATE_WITH_SOFTMAX}),
    Variant("by_hand", CH04,
            {"layer_norm": LAYER_NORM_BY_HAND, "gelu": GELU_POW, "example_deep_neural_network": NETWORK_SIZES,
             "generate_text_simple": GENERATE_LIST}),
]
