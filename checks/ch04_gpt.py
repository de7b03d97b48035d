"""Public checks of chapter 4 (implementing a GPT model from scratch to generate text), one per hidden grader test.

The worked examples are the notebook's own: the book's LayerNorm example (seed 123, variances 0.9995 and 0.9997),
GELU at a few points, the book's shortcut demo (seed 123, the gradients it prints), the parameter count of
GPT_CONFIG_124M (163,009,536, counted on the meta device), and for the model the steps the notebook's text
spells out, recomputed with the student's own layers on a small configuration. The hidden grader loads a
reference's weights into every module and compares outputs and gradients on other inputs and sizes.
"""

import torch
from torch import nn

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
HINT_NORM = ("mean and var over the last dimension (dim=-1, keepdim=True), the variance with unbiased=False, "
             "norm_x = (x - mean) / torch.sqrt(var + self.eps), then self.scale * norm_x + self.shift.")
HINT_BLOCK = ("shortcut = x; x = norm1(x); x = att(x); x = drop_shortcut(x); x = x + shortcut; then the same with "
              "norm2 and ff.")
HINT_MODEL = ("tok_emb(in_idx) + pos_emb(torch.arange(num_tokens, device=in_idx.device)), drop_emb, trf_blocks, "
              "final_norm, out_head: return the logits.")
HINT_GENERATE = ("each step: idx_cond = idx[:, -context_size:], logits = model(idx_cond)[:, -1, :], the argmax with "
                 "keepdim=True, then idx = torch.cat((idx, idx_next), dim=1).")


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


def small_model(ns, drop_rate=0.0):
    return built(ns, "GPTModel", 123, dict(SMALL, drop_rate=drop_rate))


def token_ids(seed, batch, tokens):
    return torch.randint(0, SMALL["vocab_size"], (batch, tokens), generator=torch.Generator().manual_seed(seed))


def expect_dropout_in_training(module, x, what, hint):
    first, second = run(module, x), run(module, x)
    require(torch.equal(first, second), f"{what} in eval mode gives different outputs for the same input.",
                "use the module's nn.Dropout layers, which do nothing in eval mode.")
    module.train()
    torch.manual_seed(123)
    trained = run(module, x)
    module.eval()
    require(not torch.allclose(trained, first), f"{what} in train mode gives the same output as in eval mode: no "
                "dropout is applied.", hint)


# -- section 1: layer normalization -----------------------------------------------------------------------------

@CHECKS.register("test_layer_norm", subject="LayerNorm",
                 description="LayerNorm(6) on the book's example gives mean 0 and the book's variances 0.9995, 0.9997")
def check_layer_norm(ns):
    ln = ns["LayerNorm"](6)
    require(getattr(ln, "eps", None) == 1e-5 and isinstance(getattr(ln, "scale", None), nn.Parameter)
                and isinstance(getattr(ln, "shift", None), nn.Parameter),
                "LayerNorm(6) has no eps of 1e-5, or no scale and shift parameters.", HINT_KEEP_INIT)
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)
    layer = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
    with torch.no_grad():
        out_ln = ln(layer(batch_example))
    what = "LayerNorm(6) on the book's example (seed 123)"
    expect_shape(out_ln, (2, 6), what, "the output has the shape of the input.")
    expect_finite(out_ln, what)
    expect_close(out_ln.mean(dim=-1), [0.0, 0.0], f"{what}: the mean of each row", HINT_NORM)
    expect_close(out_ln.var(dim=-1, unbiased=False), [0.9995, 0.9997], f"{what}: the (biased) variance of each row",
                 HINT_NORM)
    with torch.no_grad():
        constant = ln(torch.full((1, 6), 0.7))
    expect_finite(constant, "LayerNorm(6) on a constant vector (variance 0)")


# -- section 2: GELU and the feed-forward network ---------------------------------------------------------------

@CHECKS.register("test_gelu", subject="GELU", description="GELU at -3, -1, 0, 0.5, 1 and 3 (the tanh approximation)")
def check_gelu(ns):
    got = run(ns["GELU"](), torch.tensor(GELU_POINTS))
    expect_close(got, GELU_VALUES, "GELU()(torch.tensor([-3., -1., 0., 0.5, 1., 3.]))",
                 "0.5 * x * (1 + torch.tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))): the tanh approximation, not "
                 "the exact GELU.", atol=2e-5)


@CHECKS.register("test_feed_forward", subject="FeedForward",
                 description="FeedForward keeps the shape and runs Linear, GELU, Linear")
def check_feed_forward(ns):
    ffn = built(ns, "FeedForward", 123, SMALL)
    layers = getattr(ffn, "layers", None)
    require(isinstance(layers, nn.Sequential) and len(layers) == 3, "FeedForward(cfg).layers is not an "
                "nn.Sequential of 3 layers.", HINT_KEEP_INIT)
    x = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(1))
    got = run(ffn, x)
    expect_shape(got, (2, 3, 8), "FeedForward(cfg) on (2, 3, emb_dim)", "the output has the shape of the input.")
    expect_close(got, run(layers, x).tolist(), "FeedForward(cfg)(x) compared with self.layers(x)",
                 "return self.layers(x).")


# -- section 3: shortcut connections ----------------------------------------------------------------------------

@CHECKS.register("test_example_deep_neural_network", subject="ExampleDeepNeuralNetwork",
                 description="the book's shortcut demo (seed 123) gives the gradients the book prints for layers.0")
def check_example_deep_neural_network(ns):
    for use_shortcut, book in ((False, 0.00020173587836325169), (True, 0.22169792652130127)):
        model = built(ns, "ExampleDeepNeuralNetwork", 123, [3, 3, 3, 3, 3, 1], use_shortcut)
        output = model(torch.tensor([[1.0, 0.0, -1.0]]))
        what = f"ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut={use_shortcut})"
        expect_shape(output, (1, 1), f"{what} output", "the last layer narrows to 1 output: add a shortcut only "
                     "where x.shape == layer_output.shape.")
        nn.MSELoss()(output, torch.tensor([[0.0]])).backward()
        gradient = model.layers[0][0].weight.grad
        require(gradient is not None, f"{what}: no gradient reached layers.0.", "run every layer in forward.")
        mean = gradient.abs().mean().item()
        require(abs(mean - book) <= 1e-3 * book, f"{what}: the mean absolute gradient of layers.0.0.weight is "
                    f"{mean:.6g}, the book prints {book:.6g}.",
                    "with use_shortcut, x = x + layer_output where the shapes match, else x = layer_output.")


# -- section 4: the transformer block ---------------------------------------------------------------------------

@CHECKS.register("test_transformer_block", subject="TransformerBlock",
                 description="TransformerBlock keeps the shape and follows the pre-LayerNorm steps of the notebook")
def check_transformer_block(ns):
    block = built(ns, "TransformerBlock", 123, SMALL)
    for name in ("att", "ff", "norm1", "norm2"):
        require(hasattr(block, name), f"TransformerBlock(cfg) has no attribute {name}.", HINT_KEEP_INIT)
    x = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(2))
    got = run(block, x)
    what = "TransformerBlock(cfg) on (2, 4, emb_dim), eval mode"
    expect_shape(got, (2, 4, 8), what, "the output has the shape of the input.")
    expect_finite(got, what)
    with torch.no_grad():
        h = x + block.att(block.norm1(x))
        steps = h + block.ff(block.norm2(h))
    expect_close(got, steps.tolist(), f"{what}, compared with the steps above the stub done with your own layers",
                 HINT_BLOCK)


@CHECKS.register("test_transformer_block_dropout_in_training", subject="TransformerBlock",
                 description="TransformerBlock applies dropout in train mode only")
def check_transformer_block_dropout(ns):
    block = built(ns, "TransformerBlock", 123, dict(SMALL, drop_rate=0.5))
    expect_dropout_in_training(block, torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(3)),
                               "TransformerBlock(drop_rate=0.5)", "apply self.drop_shortcut to the output of the "
                               "attention and of the feed-forward network, before adding the shortcut.")


# -- section 5: the GPT model -----------------------------------------------------------------------------------

@CHECKS.register("test_gpt_model_logits", subject="GPTModel",
                 description="GPTModel gives (batch, num_tokens, vocab_size) logits through the notebook's steps")
def check_gpt_model_logits(ns):
    model = small_model(ns)
    idx = token_ids(4, 2, 8)
    got = run(model, idx)
    what = "GPTModel(cfg) on token ids of shape (2, 8), eval mode"
    expect_shape(got, (2, 8, 40), what, "one row of vocab_size logits per input token.")
    expect_finite(got, what)
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(8))
        steps = model.out_head(model.final_norm(model.trf_blocks(x)))
    expect_close(got, steps.tolist(), f"{what}, compared with the steps above the stub done with your own layers",
                 HINT_MODEL)


@CHECKS.register("test_gpt_model_size", subject="GPTModel",
                 description="GPTModel(GPT_CONFIG_124M) has the book's 163,009,536 parameters (on the meta device)")
def check_gpt_model_size(ns):
    with torch.device("meta"):
        model = ns["GPTModel"](GPT_CONFIG_124M)
    expect_equal(sum(p.numel() for p in model.parameters()), 163_009_536, "parameters of GPTModel(GPT_CONFIG_124M)",
                 "keep the __init__ the notebook gave you (a separate output head, without bias).")
    got = run(small_model(ns), token_ids(5, 3, 5))
    expect_shape(got, (3, 5, 40), "GPTModel(cfg) on token ids of shape (3, 5)",
                 "one row of vocab_size logits per input token.")


@CHECKS.register("test_gpt_model_shorter_input", subject="GPTModel",
                 description="GPTModel on 3 tokens (context_length 8) gives the first 3 rows of the 8-token logits")
def check_gpt_model_shorter_input(ns):
    model = small_model(ns)
    idx = token_ids(6, 2, 8)
    full, short = run(model, idx), run(model, idx[:, :3])
    what = "GPTModel(cfg) on the first 3 of 8 tokens"
    expect_shape(short, (2, 3, 40), what, "embed the positions of the input's own tokens: torch.arange(num_tokens).")
    expect_finite(short, what)
    expect_close(short, full[:, :3].tolist(), f"{what}, compared with the first 3 rows for all 8 tokens",
                 "a causal model's logits for a prefix are those of the longer input at the same positions: "
                 "positions count from 0, torch.arange(num_tokens, device=in_idx.device).")


@CHECKS.register("test_gpt_model_is_causal", subject="GPTModel",
                 description="changing the last token leaves GPTModel's earlier logits unchanged")
def check_gpt_model_is_causal(ns):
    model = small_model(ns)
    idx = token_ids(7, 2, 8)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SMALL["vocab_size"]
    before, after = run(model, idx), run(model, changed)
    expect_shape(after, (2, 8, 40), "GPTModel(cfg) logits", "")
    difference = float((after[:, :-1] - before[:, :-1]).abs().max())
    require(difference < 1e-5, f"GPTModel: changing the last token changed the logits of earlier positions (by up "
                f"to {difference:.4f}).", "LayerNorm normalises each token over its own features (dim=-1); "
                "nothing but the (masked) attention may combine tokens.")


@CHECKS.register("test_gpt_model_dropout_in_training", subject="GPTModel",
                 description="GPTModel applies dropout in train mode only")
def check_gpt_model_dropout(ns):
    expect_dropout_in_training(small_model(ns, drop_rate=0.5), token_ids(8, 2, 6), "GPTModel(drop_rate=0.5)",
                               "apply self.drop_emb to the sum of token and position embeddings.")


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
                    f"context size {self.context_size}.", "crop to the last tokens: idx[:, -context_size:].")
        return nn.functional.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()


@CHECKS.register("test_generate_text_simple", subject="generate_text_simple",
                 description="greedy generation with a model that always predicts the next id counts up")
def check_generate_text_simple(ns):
    idx = torch.tensor([[3, 4], [7, 8]])
    got = ns["generate_text_simple"](NextIdModel(10, 16), idx, 3, 16)
    what = "generate_text_simple(model, [[3, 4], [7, 8]], max_new_tokens=3, context_size=16)"
    expect_shape(got, (2, 5), what, "return the prompt followed by the new tokens: (batch, n + max_new_tokens).")
    expect_equal(got.tolist(), [[3, 4, 5, 6, 7], [7, 8, 9, 0, 1]], what, HINT_GENERATE)


@CHECKS.register("test_generate_text_simple_crops_context", subject="generate_text_simple",
                 description="generate_text_simple feeds the model at most context_size tokens")
def check_generate_text_simple_crops_context(ns):
    model = NextIdModel(10, 3)
    got = ns["generate_text_simple"](model, torch.tensor([[1, 2]]), 4, 3)
    what = "generate_text_simple(model, [[1, 2]], max_new_tokens=4, context_size=3)"
    expect_equal(got.tolist(), [[1, 2, 3, 4, 5, 6]], what, HINT_GENERATE)
    expect_equal(model.fed, [2, 3, 3, 3], f"{what}: tokens fed to the model at each step",
                 "feed the model idx[:, -context_size:], once per new token.")
