"""Public checks of chapter 4 (implementing a GPT model from scratch to generate text), one per hidden grader test.

The worked examples are the notebook's own: the book's LayerNorm example (seed 123, variances 0.9995 and 0.9997),
GELU at a few points, the book's shortcut demo (seed 123, the gradients it prints), the parameter count of
GPT_CONFIG_124M (163,009,536, counted on the meta device), and for the block and the model the steps the
notebook's text describes, recomputed with the student's own submodules (norm1, att, ff, drop_shortcut,
tok_emb, ...) on a small configuration, so that a bug in a part does not fail the check of the whole. Where the
student's output equals what a classic mistake gives with those same submodules (a post-LayerNorm block, a
missing shortcut, dropout on the sum), the message names it. The hidden grader loads a reference's weights into
every module and compares outputs and gradients on other inputs and sizes.
"""

import torch
from torch import nn
from torch.nn import functional as F

from checks import (
    Checks,
    Class,
    Function,
    Interface,
    expect_close,
    expect_equal,
    expect_finite,
    expect_shape,
    require,
)

CFG_EXAMPLE = {"vocab_size": 11, "context_length": 4, "emb_dim": 6, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
               "qkv_bias": False}

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("LayerNorm", "(emb_dim)", example={"emb_dim": 6}, attributes=("eps", "scale", "shift"),
          methods={"forward": "(x)"}),
    Class("GELU", "()", example={}, methods={"forward": "(x)"}),
    Class("FeedForward", "(cfg)", example={"cfg": CFG_EXAMPLE}, attributes=("layers",), methods={"forward": "(x)"}),
    Class("ExampleDeepNeuralNetwork", "(layer_sizes, use_shortcut)",
          example={"layer_sizes": [3, 3, 3, 3, 3, 1], "use_shortcut": True}, attributes=("use_shortcut", "layers"),
          methods={"forward": "(x)"}),
    Class("TransformerBlock", "(cfg)", example={"cfg": CFG_EXAMPLE}, attributes=("att", "ff", "norm1", "norm2"),
          methods={"forward": "(x)"}),
    Class("GPTModel", "(cfg)", example={"cfg": CFG_EXAMPLE},
          attributes=("tok_emb", "pos_emb", "drop_emb", "trf_blocks", "final_norm", "out_head"),
          methods={"forward": "(in_idx)"}),
    Function("generate_text_simple", "(model, idx, max_new_tokens, context_size)"),
)

CHECKS = Checks("ch04_gpt", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

# A small GPT for the checks: GPT-2's architecture, a tiny vocabulary.
SMALL = {"vocab_size": 40, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
         "qkv_bias": False}
GPT_CONFIG_124M = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
                   "drop_rate": 0.1, "qkv_bias": False}

# GELU (tanh approximation) at x = -3, -1, 0, 0.5, 1, 3; the exact GELU differs by up to 4e-4 here.
GELU_POINTS = [-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]
GELU_VALUES = [-0.00364, -0.15881, 0.0, 0.34571, 0.84119, 2.99636]

HINT_KEEP_INIT = "keep the __init__ the notebook gave you."
HINT_NORM = ("normalise each vector over its last dimension (its features, with keepdim=True so that the statistics "
             "broadcast): subtract its mean, divide by the square root of its biased variance (divided by n, as "
             "GPT-2 was trained) plus eps, then apply the trainable scale and shift (section 4.2, listing 4.2).")
HINT_GELU = ("GELU in the tanh approximation of section 4.3 (listing 4.3): 0.5 times x times (1 plus the tanh of "
             "sqrt(2 / pi) times (x + 0.044715 x^3)); not the exact GELU with erf.")
HINT_FEED_FORWARD = ("the three layers of self.layers (Linear, GELU, Linear), applied in order (section 4.3, listing "
                     "4.4): (batch, num_tokens, emb_dim) in and out.")
HINT_SHORTCUT = ("run the layers in order (section 4.4, listing 4.5); where use_shortcut is on and a layer's output "
                 "has the shape of its input, the next layer gets their sum, else the output alone.")
HINT_BLOCK = ("pre-LayerNorm (section 4.5, listing 4.6): each of the two sub-blocks (norm1 then att, norm2 then ff) "
              "works on a normalised copy of its input, its output goes through the dropout, and its un-normalised "
              "input is added back (the shortcut) before the next sub-block starts.")
HINT_DROPOUT_PLACE = ("dropout belongs on the output of each sub-block, before its input is added back: not on the "
                      "sum, and not on the shortcut (section 4.5).")
HINT_MODEL = ("section 4.6, listing 4.7: embed the tokens, add the embeddings of their positions 0 .. num_tokens - 1 "
              "(made on the input's device), apply drop_emb, run the transformer blocks, final_norm, then out_head; "
              "return its output, the logits (batch, num_tokens, vocab_size).")
HINT_POSITIONS = ("an input may be shorter than context_length: embed the positions of the input's own tokens (as "
                  "many as it has, counted from 0, made on the input's device).")
HINT_GENERATE = ("section 4.7, listing 4.8: max_new_tokens times, feed the model the last context_size tokens of the "
                 "sequence so far, take the logits of its LAST position, pick the id with the largest logit (one per "
                 "row, keeping a dimension of size 1), and append it to the sequence; return the prompt followed by "
                 "the new ids.")


def named_mistake(got, mistakes, hint):
    """The hint for an output that is wrong: `mistakes` are (what, fix, output that mistake gives with the
    student's own submodules); the first that `got` equals is named, else `hint`."""
    for what, fix, output in mistakes:
        if isinstance(got, torch.Tensor) and got.shape == output.shape and torch.allclose(got, output, atol=1e-5):
            return f"your output is exactly what {what} gives: {fix}"
    return hint


def randomise_norms(module, seed):
    """Give every LayerNorm of the student's `module` (its scale and shift) random values: a fresh one leaves
    normalised vectors unchanged, which would hide a forward pass that uses the wrong one, or none."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in module.modules():
            if isinstance(getattr(part, "scale", None), nn.Parameter) and isinstance(getattr(part, "shift", None),
                                                                                     nn.Parameter):
                part.scale.copy_(1 + 0.5 * torch.randn(part.scale.shape, generator=generator))
                part.shift.copy_(0.3 * torch.randn(part.shift.shape, generator=generator))
    return module


def built(ns, name, seed, *args):
    """The student's module built right after torch.manual_seed(seed), in eval mode."""
    torch.manual_seed(seed)
    module = ns[name](*args)
    require(isinstance(module, nn.Module), f"{name}(...) is not a torch.nn.Module.",
                "keep `class ...(nn.Module)` and the super().__init__() call of the notebook.")
    return module.eval()


def run(module, x):
    with torch.no_grad():
        return module(x)


class PrefixMean(nn.Module):
    """A simple stand-in for a transformer block in the model's checks (not GPT-2's block): each token adds the
    tanh of the mean of itself and the earlier tokens, with dropout. It is causal and mixes the positions."""

    def __init__(self, drop_rate):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x):
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).unsqueeze(-1)  # (num_tokens, 1)
        return x + self.drop(torch.tanh(x.cumsum(dim=1) / counts))


def small_model(ns, drop_rate=0.0, own_parts=False):
    """The student's GPTModel on SMALL; unless `own_parts`, its blocks and final LayerNorm swapped for simple
    stand-ins (PrefixMean, torch's nn.LayerNorm), so that the check looks at GPTModel's own forward only, as the
    hidden grader does."""
    model = built(ns, "GPTModel", 123, dict(SMALL, drop_rate=drop_rate))
    if not own_parts:
        model.trf_blocks = nn.Sequential(*[PrefixMean(drop_rate) for _ in range(SMALL["n_layers"])])
        model.final_norm = nn.LayerNorm(SMALL["emb_dim"])
    return model.eval()


def token_ids(seed, batch, tokens):
    return torch.randint(0, SMALL["vocab_size"], (batch, tokens), generator=torch.Generator().manual_seed(seed))


def expect_eval_mode_repeatable(module, x, what):
    first, second = run(module, x), run(module, x)
    require(torch.equal(first, second), f"{what} in eval mode gives different outputs for the same input.",
            "use the module's nn.Dropout layers, which do nothing in eval mode.")
    return first


def in_train_mode(module, x, seed):
    """The module's output in train mode, right after torch.manual_seed(seed); the module is left in eval mode."""
    module.train()
    try:
        torch.manual_seed(seed)
        return run(module, x)
    finally:
        module.eval()


def replayed(module, steps, seed):
    """`steps()` run in train mode right after torch.manual_seed(seed), without gradients (eval mode after)."""
    module.train()
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            return steps()
    finally:
        module.eval()


# -- section 1: layer normalization -----------------------------------------------------------------------------

@CHECKS.register("test_layer_norm", subject="LayerNorm", error_hint=HINT_NORM,
                 description="LayerNorm(6) on the book's example gives mean 0 and the book's variances 0.9995, 0.9997; "
                             "also as a batch of one, with a scale and shift, and far from 0")
def check_layer_norm(ns):
    ln = ns["LayerNorm"](6)
    require(getattr(ln, "eps", None) == 1e-5 and isinstance(getattr(ln, "scale", None), nn.Parameter)
            and isinstance(getattr(ln, "shift", None), nn.Parameter),
            "LayerNorm(6) has no eps of 1e-5, or no scale and shift parameters.", HINT_KEEP_INIT)
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)
    layer = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
    with torch.no_grad():
        out = layer(batch_example)
        out_ln = ln(out)
    what = "LayerNorm(6) on the book's example (seed 123)"
    expect_shape(out_ln, (2, 6), what, "the output has the shape of the input.")
    expect_finite(out_ln, what)
    expect_close(out_ln.mean(dim=-1), [0.0, 0.0], f"{what}: the mean of each row", HINT_NORM)
    expect_close(out_ln.var(dim=-1, unbiased=False), [0.9995, 0.9997], f"{what}: the (biased) variance of each row",
                 HINT_NORM)
    with torch.no_grad():
        constant = ln(torch.full((1, 6), 0.7))
        batched = ln(out.unsqueeze(0))
    expect_finite(constant, "LayerNorm(6) on a constant vector (variance 0)")
    expect_close(batched, out_ln.unsqueeze(0).tolist(), "LayerNorm(6) on the example as a batch of one, shape "
                 "(1, 2, 6), compared with the rows for shape (2, 6)", "normalise each token over its own features, "
                 "the LAST dimension (dim=-1): for an input (batch, num_tokens, emb_dim), dimension 1 is the tokens.")
    # The same example with scale 2 and shift 0.5: every row then has mean 0.5 and twice the standard deviation.
    with torch.no_grad():
        ln.scale.fill_(2.0)
        ln.shift.fill_(0.5)
        scaled = ln(out)
    what = f"{what}, with scale 2 and shift 0.5"
    expect_close(scaled.mean(dim=-1), [0.5, 0.5], f"{what}: the mean of each row",
                 "after normalising, multiply by self.scale and add self.shift (both trainable, of size emb_dim).")
    expect_close(scaled.var(dim=-1, unbiased=False), [4 * 0.9995, 4 * 0.9997], f"{what}: the variance of each row",
                 "after normalising, multiply by self.scale and add self.shift (both trainable, of size emb_dim).",
                 atol=1e-3)
    # Adding 100 to every value changes nothing for a LayerNorm: it subtracts the mean.
    with torch.no_grad():
        shifted = ln(out + 100.0)
    expect_close(shifted, scaled.tolist(), "LayerNorm(6) on the book's example plus 100, compared with the example "
                 "itself", "a variance computed as the mean of the squares minus the square of the mean loses its "
                 "precision in float32 for values far from 0: take the variance of x itself (x.var, which centres "
                 "x first).", atol=2e-3)


# -- section 2: GELU and the feed-forward network ---------------------------------------------------------------

@CHECKS.register("test_gelu", subject="GELU", error_hint=HINT_GELU,
                 description="GELU at -3, -1, 0, 0.5, 1 and 3 (the tanh approximation)")
def check_gelu(ns):
    got = run(ns["GELU"](), torch.tensor(GELU_POINTS))
    expect_close(got, GELU_VALUES, "GELU()(torch.tensor([-3., -1., 0., 0.5, 1., 3.]))", HINT_GELU, atol=2e-5)


@CHECKS.register("test_feed_forward", subject="FeedForward", error_hint=HINT_FEED_FORWARD,
                 description="FeedForward keeps the shape and runs its three layers, Linear, GELU, Linear, in order")
def check_feed_forward(ns):
    ffn = built(ns, "FeedForward", 123, SMALL)
    layers = getattr(ffn, "layers", None)
    require(isinstance(layers, nn.Sequential) and len(layers) == 3, "FeedForward(cfg).layers is not an "
            "nn.Sequential of 3 layers.", HINT_KEEP_INIT)
    x = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(1))
    got = run(ffn, x)
    expect_shape(got, (2, 3, 8), "FeedForward(cfg) on (2, 3, emb_dim)", "the output has the shape of the input.")
    with torch.no_grad():
        steps = layers[2](layers[1](layers[0](x)))
        mistakes = [("a feed-forward network without its activation", "the input goes through all three layers of "
                     "self.layers, GELU in the middle.", layers[2](layers[0](x)))]
    expect_close(got, steps.tolist(), "FeedForward(cfg)(x) compared with its three layers applied in order",
                 named_mistake(got, mistakes, HINT_FEED_FORWARD))


# -- section 3: shortcut connections ----------------------------------------------------------------------------

@CHECKS.register("test_example_deep_neural_network", subject="ExampleDeepNeuralNetwork", error_hint=HINT_SHORTCUT,
                 description="the book's shortcut demo (seed 123) gives the gradients the book prints for layers.0 "
                             "(with torch's GELU in place of yours)")
def check_example_deep_neural_network(ns):
    for use_shortcut, book in ((False, 0.00020173587836325169), (True, 0.22169792652130127)):
        model = built(ns, "ExampleDeepNeuralNetwork", 123, [3, 3, 3, 3, 3, 1], use_shortcut)
        for layer in model.layers:  # torch's GELU (tanh) in place of yours: a slip in GELU fails GELU's check only
            if isinstance(layer, nn.Sequential) and len(layer) == 2:
                layer[1] = nn.GELU(approximate="tanh")
        output = model(torch.tensor([[1.0, 0.0, -1.0]]))
        what = f"ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut={use_shortcut})"
        expect_shape(output, (1, 1), f"{what} output", "the last layer narrows to 1 output: add a shortcut only "
                     "where a layer's output has the shape of its input.")
        nn.MSELoss()(output, torch.tensor([[0.0]])).backward()
        gradient = model.layers[0][0].weight.grad
        require(gradient is not None, f"{what}: no gradient reached layers.0.", "run every layer in forward.")
        mean = gradient.abs().mean().item()
        require(abs(mean - book) <= 1e-3 * book, f"{what}: the mean absolute gradient of layers.0.0.weight is "
                f"{mean:.6g}, the book prints {book:.6g}.", HINT_SHORTCUT)


# -- section 4: the transformer block ---------------------------------------------------------------------------

def block_mistakes(block, x):
    """What classic mistakes give with the student's own norm1, att, ff (eval mode, no dropout)."""
    att, ff, norm1, norm2 = block.att, block.ff, block.norm1, block.norm2
    n1 = norm1(x)
    h = x + att(n1)  # the right first sub-block
    post = norm1(x + att(x))  # post-LayerNorm: the sum is normalised
    from_norm = norm2(att(n1) + n1)  # shortcuts taken after the LayerNorm
    return [
        ("a post-LayerNorm block (LayerNorm after adding the shortcut, as in the original transformer)",
         "GPT-2 normalises BEFORE each sub-block: the LayerNorm takes the sub-block's input, and the sum with the "
         "shortcut is not normalised.", norm2(post + ff(post))),
        ("a block without the shortcut around the feed-forward network (the second shortcut)", "remember the input "
         "before norm2 and add it back after the feed-forward network's dropout.", ff(norm2(h))),
        ("a block without the shortcut around the attention (the first shortcut)", "remember the input before norm1 "
         "and add it back after the attention's dropout.", att(n1) + ff(norm2(att(n1)))),
        ("a block without shortcut connections", "remember each sub-block's input and add it back to the "
         "sub-block's output, in both sub-blocks.", ff(norm2(att(n1)))),
        ("a block whose shortcuts start after the LayerNorm", "the shortcut is the sub-block's input BEFORE the "
         "LayerNorm: remember it first, then normalise.", ff(from_norm) + from_norm),
        ("a block that uses norm1 twice", "the feed-forward sub-block has its own LayerNorm, self.norm2.",
         h + ff(norm1(h))),
        ("a block without its attention sub-block", "the block starts with the attention sub-block (norm1, att, "
         "dropout, shortcut), then the feed-forward one.", x + ff(norm2(x))),
    ]


@CHECKS.register("test_transformer_block", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock keeps the shape and follows the pre-LayerNorm steps of the notebook, "
                             "recomputed with its own norm1, att, norm2 and ff")
def check_transformer_block(ns):
    block = built(ns, "TransformerBlock", 123, SMALL)
    for name in ("att", "ff", "norm1", "norm2"):
        require(hasattr(block, name), f"TransformerBlock(cfg) has no attribute {name}.", HINT_KEEP_INIT)
    randomise_norms(block, 9)  # norm1 and norm2 then differ, and neither leaves its input as it is
    x = 3 * torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(2))
    got = run(block, x)
    what = "TransformerBlock(cfg) on (2, 4, emb_dim), eval mode"
    expect_shape(got, (2, 4, 8), what, "the output has the shape of the input.")
    expect_finite(got, what)
    with torch.no_grad():
        h = x + block.att(block.norm1(x))
        steps = h + block.ff(block.norm2(h))
        hint = named_mistake(got, block_mistakes(block, x), HINT_BLOCK)
    expect_close(got, steps.tolist(), f"{what}, compared with the steps of the notebook done with your own norm1, "
                 "att, norm2 and ff (their scales and shifts set at random)", hint, atol=1e-5)


@CHECKS.register("test_transformer_block_dropout_in_training", subject="TransformerBlock", error_hint=HINT_BLOCK,
                 description="TransformerBlock applies dropout in train mode only, on each sub-block's output before "
                             "the shortcut (replayed with the same random draws through its own submodules)")
def check_transformer_block_dropout(ns):
    block = built(ns, "TransformerBlock", 123, dict(SMALL, drop_rate=0.5))
    x = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(3))
    what = "TransformerBlock(drop_rate=0.5)"
    first = expect_eval_mode_repeatable(block, x, what)
    trained = in_train_mode(block, x, 123)
    require(not torch.allclose(trained, first), f"{what} in train mode gives the same output as in eval mode: no "
            "dropout is applied.", "apply self.drop_shortcut to the output of the attention and to the output of "
            "the feed-forward network, each time before adding the shortcut.")
    att, ff, norm1, norm2 = block.att, block.ff, block.norm1, block.norm2

    def book():
        h = x + F.dropout(att(norm1(x)), 0.5)
        return h + F.dropout(ff(norm2(h)), 0.5)

    def on_the_sum():
        h = F.dropout(x + att(norm1(x)), 0.5)
        return F.dropout(h + ff(norm2(h)), 0.5)

    def without_dropout():
        h = x + att(norm1(x))
        return h + ff(norm2(h))

    mistakes = [("dropout on the sum (after adding the shortcut)", HINT_DROPOUT_PLACE,
                 replayed(block, on_the_sum, 123)),
                ("a block without its own dropout (only the attention's)", "apply self.drop_shortcut to the output "
                 "of each sub-block, before adding the shortcut.", replayed(block, without_dropout, 123))]
    expect_close(trained, replayed(block, book, 123).tolist(), f"{what} in train mode (seed 123), compared with the "
                 "book's steps replayed with the same random draws through your own submodules",
                 named_mistake(trained, mistakes, HINT_DROPOUT_PLACE), atol=1e-5)


# -- section 5: the GPT model -----------------------------------------------------------------------------------

def through_blocks(model, x):
    for block in model.trf_blocks:  # an nn.Sequential or an nn.ModuleList
        x = block(x)
    return x


def model_steps(model, idx, drop=lambda x: x):
    """The notebook's steps through the student's own submodules (`drop` on the embeddings)."""
    x = drop(model.tok_emb(idx) + model.pos_emb(torch.arange(idx.shape[1])))
    return model.out_head(model.final_norm(through_blocks(model, x)))


@CHECKS.register("test_gpt_model_logits", subject="GPTModel", error_hint=HINT_MODEL,
                 description="GPTModel gives (batch, num_tokens, vocab_size) logits through the notebook's steps, "
                             "recomputed with its own layers (its blocks and final LayerNorm swapped for simple "
                             "stand-ins, so that only GPTModel's forward is checked)")
def check_gpt_model_logits(ns):
    model = small_model(ns)
    idx = token_ids(4, 2, 8)
    got = run(model, idx)
    what = "GPTModel(cfg) on token ids of shape (2, 8), eval mode"
    expect_shape(got, (2, 8, 40), what, "one row of vocab_size logits per input token.")
    expect_finite(got, what)
    with torch.no_grad():
        steps = model_steps(model, idx)
        tokens_only = model.out_head(model.final_norm(through_blocks(model, model.tok_emb(idx))))
        mistakes = [("the softmax of the logits", "return the logits themselves; the softmax comes later (in the "
                     "loss, or when sampling).", torch.softmax(steps, dim=-1)),
                    ("a model without position embeddings", "add the position embeddings of positions 0 .. "
                     "num_tokens - 1 to the token embeddings.", tokens_only)]
    expect_close(got, steps.tolist(), f"{what}, compared with the steps of the notebook done with your own layers "
                 "(its blocks and final LayerNorm are simple stand-ins here)", named_mistake(got, mistakes, HINT_MODEL))


@CHECKS.register("test_gpt_model_size", subject="GPTModel", error_hint=HINT_MODEL,
                 description="GPTModel(GPT_CONFIG_124M) has the book's 163,009,536 parameters (on the meta device), "
                             "and logits of the right shape for a full context")
def check_gpt_model_size(ns):
    with torch.device("meta"):
        model = ns["GPTModel"](GPT_CONFIG_124M)
    expect_equal(sum(p.numel() for p in model.parameters()), 163_009_536, "parameters of GPTModel(GPT_CONFIG_124M)",
                 "keep the __init__ the notebook gave you (a separate output head, without bias).")
    got = run(small_model(ns, own_parts=True), token_ids(5, 3, 8))
    expect_shape(got, (3, 8, 40), "GPTModel(cfg), with your own blocks and LayerNorms, on token ids of shape (3, 8)",
                 "one row of vocab_size logits per input token.")


@CHECKS.register("test_gpt_model_shorter_input", subject="GPTModel", error_hint=HINT_POSITIONS,
                 description="GPTModel on the first 3 of 8 tokens (context_length 8), for a batch of two and of one, "
                             "gives the first 3 rows of the 8-token logits (on stand-in blocks and final LayerNorm)")
def check_gpt_model_shorter_input(ns):
    model = small_model(ns)
    idx = token_ids(6, 2, 8)
    full = run(model, idx)
    for rows in (2, 1):
        short = run(model, idx[:rows, :3])
        what = f"GPTModel(cfg) on the first 3 of 8 tokens, a batch of {rows}"
        expect_shape(short, (rows, 3, 40), what, "one row of vocab_size logits per input token, for every input of "
                     "the batch (a batch of one too): " + HINT_POSITIONS)
        expect_finite(short, what)
        expect_close(short, full[:rows, :3].tolist(), f"{what}, compared with the first 3 rows for all 8 tokens",
                     "a causal model's logits for a prefix are those of the longer input at the same positions: "
                     + HINT_POSITIONS)


@CHECKS.register("test_gpt_model_is_causal", subject="GPTModel", error_hint=HINT_MODEL,
                 description="changing the last token leaves GPTModel's earlier logits unchanged (on stand-in blocks "
                             "and final LayerNorm)")
def check_gpt_model_is_causal(ns):
    model = small_model(ns)
    idx = token_ids(7, 2, 8)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SMALL["vocab_size"]
    before, after = run(model, idx), run(model, changed)
    expect_shape(after, (2, 8, 40), "GPTModel(cfg) logits", "")
    difference = float((after[:, :-1] - before[:, :-1]).abs().max())
    require(difference < 1e-5, f"GPTModel: changing the last token changed the logits of earlier positions (by up "
            f"to {difference:.4f}), with causal stand-ins for the blocks.", "nothing in GPTModel's forward outside "
            "the blocks may combine different tokens: embeddings, dropout, final_norm and out_head work on each "
            "token on its own.")


@CHECKS.register("test_gpt_model_dropout_in_training", subject="GPTModel", error_hint=HINT_MODEL,
                 description="GPTModel applies drop_emb to the embeddings in train mode only (replayed with the same "
                             "random draws through its own submodules, on stand-in blocks and final LayerNorm)")
def check_gpt_model_dropout(ns):
    model = small_model(ns, drop_rate=0.5)
    idx = token_ids(8, 2, 6)
    what = "GPTModel(drop_rate=0.5)"
    expect_eval_mode_repeatable(model, idx, what)
    trained = in_train_mode(model, idx, 123)
    with_drop = replayed(model, lambda: model_steps(model, idx, lambda x: F.dropout(x, 0.5)), 123)
    without = replayed(model, lambda: model_steps(model, idx), 123)
    mistakes = [("a model without drop_emb", "apply self.drop_emb to the sum of the token and position embeddings, "
                 "before the transformer blocks.", without)]
    expect_close(trained, with_drop.tolist(), f"{what} in train mode (seed 123), compared with the notebook's steps "
                 "replayed with the same random draws through your own submodules",
                 named_mistake(trained, mistakes, "apply self.drop_emb to the sum of the token and position "
                               "embeddings, before the transformer blocks (and nowhere else in GPTModel's forward)."),
                 atol=1e-5)


# -- section 6: generating text ---------------------------------------------------------------------------------

class NextIdModel(nn.Module):
    """A stand-in for a GPT: at every position the highest logit is the next id after that position's token
    (modulo the vocabulary), so greedy decoding counts up. It accepts at most `context_size` tokens, as a model
    with that many position embeddings does, and records how many tokens it is fed."""

    def __init__(self, vocab_size, context_size):
        super().__init__()
        self.vocab_size, self.context_size, self.fed = vocab_size, context_size, []

    def forward(self, idx):
        self.fed.append(idx.shape[1])
        require(idx.shape[1] <= self.context_size, f"the model was fed {idx.shape[1]} tokens, more than its "
                f"context size {self.context_size}.", "feed the model only the last context_size tokens of the "
                "sequence so far.")
        return nn.functional.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()


@CHECKS.register("test_generate_text_simple", subject="generate_text_simple", error_hint=HINT_GENERATE,
                 description="greedy generation with a model that always predicts the next id counts up")
def check_generate_text_simple(ns):
    idx = torch.tensor([[3, 4], [7, 8]])
    got = ns["generate_text_simple"](NextIdModel(10, 16), idx, 3, 16)
    what = "generate_text_simple(model, [[3, 4], [7, 8]], max_new_tokens=3, context_size=16)"
    expect_shape(got, (2, 5), what, "return the prompt followed by the new tokens: (batch, n + max_new_tokens).")
    expect_equal(got.tolist(), [[3, 4, 5, 6, 7], [7, 8, 9, 0, 1]], what, HINT_GENERATE)


@CHECKS.register("test_generate_text_simple_crops_context", subject="generate_text_simple", error_hint=HINT_GENERATE,
                 description="generate_text_simple feeds the model at most context_size tokens, the last ones")
def check_generate_text_simple_crops_context(ns):
    model = NextIdModel(10, 3)
    got = ns["generate_text_simple"](model, torch.tensor([[1, 2]]), 4, 3)
    what = "generate_text_simple(model, [[1, 2]], max_new_tokens=4, context_size=3)"
    expect_equal(got.tolist(), [[1, 2, 3, 4, 5, 6]], what, HINT_GENERATE)
    expect_equal(model.fed, [2, 3, 3, 3], f"{what}: tokens fed to the model at each step",
                 "feed the model the last context_size tokens of the sequence so far, once per new token.")
