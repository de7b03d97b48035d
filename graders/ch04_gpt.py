"""Grader of chapter 4: implementing a GPT model from scratch to generate text.

Module by module, bottom up: every test builds the reference module from a seed (with LayerNorm scales and
shifts drawn at random, so that a forward pass that ignores them shows), sends its weights and seeded inputs
to the worker, where a probe loads them into the student's module of the same name and runs it forward and
backward; outputs and gradients (of every parameter and of the input) come back and are compared here. When an
output is wrong, the grader recomputes the reference with one classic mistake switched on (post-LayerNorm,
the unbiased variance, the exact GELU, position ids from 1, ...) and names the mistake when it matches.

Properties are checked on the student's own outputs: causality of the whole model on token ids; dropout in
train mode only, and in the book's places (on the embeddings, and on each sub-block's output before the
shortcut is added), by replaying the same random draws through the student's own submodules; each property
test also demands the reference's output in eval mode, so code that does not do the work cannot earn it.

generate_text_simple is graded on its own, with a small causal toy model built inside the probe from weights
sent by the grader (a model that refuses inputs longer than its context, and records the lengths it is fed),
so a broken GPTModel does not hide a correct generation loop. The same probe, run here with the reference's
generate_text_simple, gives the expected token ids. Greedy decoding is exact: the ids must be equal.

A bug costs the points of its component: a composite runs on correct stand-ins of its parts
(probe_kit/gpt_parts.py, declared with @pytest.mark.stand_ins): FeedForward and ExampleDeepNeuralNetwork on a
stand-in GELU, TransformerBlock on stand-in LayerNorms and FeedForward, GPTModel on stand-in blocks and norms.
Only the parameter count (PARTS_FIT) builds the student's whole model from the student's own parts.

Beyond the book's examples, the tests probe a batch of one, a single token, inputs shorter than and exactly as
long as the context, a prompt exactly as long as the context, and large activations (a LayerNorm whose variance
loses its precision far from 0).

The book's repository calls the shortcut dropout `drop_resid` in one edition and `drop_shortcut` in another:
dropout layers have no weights, so the grader relies on neither name.
"""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from checks.ch04_gpt import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, Mistake, error_mentions, expect_close, expect_count, expect_equal, probe
from course.grading.compare import GradingFailure, expect_tensor, expect_true
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, shape_mismatch, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.grading.mistakes import name_mistake
from course.grading.probes import OnStandIns, run_module, run_module_with_gradients
from course.grading.properties import (
    HINT_GRADIENT,
    HINT_MASK,
    expect_causal,
    expect_module_gradients,
    reference_gradients,
)
from reference import gpt as ref

# Tiny configurations: the book's architecture at a size that grades in milliseconds.
CFG = {"vocab_size": 53, "context_length": 8, "emb_dim": 12, "n_heads": 3, "n_layers": 2, "drop_rate": 0.1,
       "qkv_bias": False}
CFG_BIAS = {"vocab_size": 40, "context_length": 6, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
            "qkv_bias": True}

# The student's parts that a composite calls, replaced by correct stand-ins (probe_kit/gpt_parts.py) while the
# test runs it: a bug in a part then costs only the part's own tests.
KIT = "gpt_parts"  # the probe_kit module of the stand-ins
FF_PARTS = ("GELU",)
BLOCK_PARTS = ("LayerNorm", "FeedForward")
MODEL_PARTS = ("TransformerBlock", "LayerNorm")

# Tests that must run the student's own parts together, and why (tests/test_fairness.py).
PARTS_FIT = {"test_gpt_model_size": "it counts the parameters of the whole model the student's __init__ builds, "
                                    "blocks and LayerNorms included: whether the parts fit together"}

HINT_NORM = ("normalise each vector over its last dimension (its features, with keepdim=True so that the "
             "statistics broadcast): subtract its mean, divide by the square root of its biased variance (divided "
             "by n, as GPT-2 was trained) plus eps, then apply the trainable scale and shift (section 4.2, "
             "listing 4.2).")
HINT_BLOCK = ("pre-LayerNorm (section 4.5, listing 4.6): each of the two sub-blocks (norm1 then att, norm2 then "
              "ff) works on a normalised copy of its input, its output goes through the dropout, and its "
              "un-normalised input is added back (the shortcut) before the next sub-block starts.")
HINT_MODEL = ("section 4.6, listing 4.7: embed the tokens, add the embeddings of their positions 0 .. num_tokens - 1, "
              "apply drop_emb, run the transformer blocks, final_norm, then out_head; return its output, the logits "
              "(batch, num_tokens, vocab_size). The blocks and LayerNorms were correct stand-ins here: the "
              "difference comes from your forward.")
HINT_POSITIONS = ("an input may be shorter than context_length: embed the positions of the input's own tokens "
                  "(as many as it has, counted from 0, made on the input's device).")
HINT_MODEL_CAUSAL = ("the blocks and LayerNorms were correct stand-ins here (their attention is masked), so something "
                     "in your forward mixes the positions: nothing outside the blocks may combine different tokens.")
HINT_GELU = ("GELU in the tanh approximation of section 4.3 (listing 4.3): 0.5 times x times (1 plus the tanh of "
             "sqrt(2 / pi) times (x + 0.044715 x^3)); GELU(1) is about 0.8412 and GELU(-1) about -0.1588.")
HINT_CROP = ("the model takes at most context_size tokens: at each step, feed it only the last context_size tokens "
             "of the sequence so far (section 4.7).")
HINT_DROPOUT_PLACE = ("dropout belongs on the output of each sub-block, before its input is added back: not on the "
                      "sum, and not on the shortcut (section 4.5).")

POSITION_IDS = error_mentions("index out of range", hint="positions are counted from 0 to num_tokens - 1, one per "
                              "token of the input (there are context_length position embeddings).")
CONTEXT_EXCEEDED = error_mentions("more than its context size", hint=HINT_CROP)
# A block or a model is built from other graded modules: its gradients are compared with at least this tolerance
# (see expect_module_gradients), so that a LayerNorm slightly off fails its own test, not every test built on it.
COMPOSITE = 1e-4


# -- the reference's modules (trusted side) --------------------------------------------------------------------

def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """Draw every LayerNorm's scale and shift at random (a fresh LayerNorm is the identity on normalised
    input, which would hide a forward pass that forgets them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ref.LayerNorm):
                module.scale.copy_(1 + 0.5 * torch.randn(module.scale.shape, generator=generator))
                module.shift.copy_(0.3 * torch.randn(module.shift.shape, generator=generator))
    return model


def gpt_model(cfg: dict, seed: int):
    """The seeded reference GPTModel, with random LayerNorm scales and shifts, and embeddings 4 times larger than
    nn.Embedding draws them (so that every LayerNorm sees a variance far above eps: a LayerNorm that gets eps
    slightly wrong fails its own test, not every test of the model by a hair)."""
    model = randomise_norms(reference_module(ref.GPTModel, seed, cfg=cfg), seed + 1)
    with torch.no_grad():
        model.tok_emb.weight.mul_(4)
        model.pos_emb.weight.mul_(4)
    return model


# -- probes (run in the worker) ------------------------------------------------------------------------------

@probe(returns=Fields("eval", "train", "replayed"))
def train_mode_replayed(student, stand_ins, class_name, cfg, state, x):
    """The student's TransformerBlock or GPTModel, built on stand-ins of its parts: .eval and .train outputs, and
    .replayed, the book's train-mode forward replayed with the same random draws through the module's own
    submodules."""
    from probe_kit.gpt_parts import on_stand_ins

    with on_stand_ins(student, stand_ins):
        module = getattr(student, class_name)(cfg).to(DEVICE)
        module.load_state_dict(state)
        p = cfg["drop_rate"]
        with torch.no_grad():
            out_eval = module.eval()(x)
            module.train()
            torch.manual_seed(5)
            out_train = module(x)
            torch.manual_seed(5)
            if class_name == "TransformerBlock":  # dropout on each sub-block's output, before the shortcut
                h = x + F.dropout(module.att(module.norm1(x)), p, training=True)
                replayed = h + F.dropout(module.ff(module.norm2(h)), p, training=True)
            else:  # GPTModel: dropout on the embeddings; the blocks draw their own
                h = module.tok_emb(x) + module.pos_emb(torch.arange(x.shape[1], device=x.device))
                h = F.dropout(h, p, training=True)
                for block in module.trf_blocks:
                    h = block(h)
                replayed = module.out_head(module.final_norm(h))
        return {"eval": out_eval, "train": out_train, "replayed": replayed}


@probe(returns=Fields("count", "shapes", "logits_shape"))
def model_size(student, cfg, idx):
    """The student's GPTModel: .count (its number of parameters), .shapes ({state_dict entry: shape}) and
    .logits_shape (of the logits for idx)."""
    model = student.GPTModel(cfg).to(DEVICE).eval()
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        logits = model(idx)
    shape = list(logits.shape) if isinstance(logits, torch.Tensor) else None
    return {"count": sum(p.numel() for p in model.parameters()), "shapes": shapes, "logits_shape": shape}


@probe(returns=ListOf(Fields("ids", "fed"), length="cases"))
def generate_with_toy_model(student, weights, cases):
    """For each (prompt, max_new_tokens, context_size): .ids, what the student's generate_text_simple returns, and
    .fed, the number of tokens the model was fed at each step, with a small causal model that accepts at most
    context_size tokens. Run on the trusted side with the reference module as `student`, it gives the expected
    values (the same code on both sides)."""

    class ToyModel(nn.Module):
        """Causal: the logits at position i depend on tokens 0..i only (a running mean of embeddings)."""

        def __init__(self, context_size):
            super().__init__()
            self.tok = nn.Parameter(weights["tok"].clone())
            self.pos = nn.Parameter(weights["pos"][:context_size].clone())
            self.head = nn.Parameter(weights["head"].clone())
            self.fed = []

        def forward(self, idx):
            n = idx.shape[1]
            self.fed.append(n)
            if n > self.pos.shape[0]:
                raise ValueError(f"the model was fed {n} tokens, more than its context size {self.pos.shape[0]}")
            h = self.tok[idx] + self.pos[:n]  # (batch, n, emb)
            counts = torch.arange(1, n + 1, device=idx.device, dtype=h.dtype).unsqueeze(-1)
            h = torch.tanh(h.cumsum(dim=1) / counts)
            return h @ self.head.T  # (batch, n, vocab)

    results = []
    for prompt, max_new_tokens, context_size in cases:
        model = ToyModel(context_size).eval()
        ids = student.generate_text_simple(model, prompt, max_new_tokens, context_size)
        results.append({"ids": ids, "fed": list(model.fed)})
    return results


# -- section 4.2: layer normalization ------------------------------------------------------------------------

def layer_norm_with(ln, x, *, unbiased=False, eps=None, eps_outside=False, dim=-1, affine=True, std=True,
                    one_pass=False):
    """LayerNorm of `x` with `ln`'s scale and shift, with one mistake switched on (none by default)."""
    if dim == 1 and x.dim() != 3:
        raise ValueError("only a 3-D input has a dimension of tokens to normalise over by mistake")
    eps = ln.eps if eps is None else eps
    mean = x.mean(dim=dim, keepdim=True)
    if one_pass:  # the mean of the squares minus the square of the mean: cancels badly for large activations
        var = (x * x).mean(dim=dim, keepdim=True) - mean ** 2
    else:
        var = x.var(dim=dim, keepdim=True, unbiased=unbiased)
    if eps_outside:
        norm_x = (x - mean) / (torch.sqrt(var) + eps)
    elif std:
        norm_x = (x - mean) / torch.sqrt(var + eps)
    else:
        norm_x = (x - mean) / (var + eps)
    return ln.scale * norm_x + ln.shift if affine else norm_x


LAYER_NORM_MISTAKES = [
    Mistake("LayerNorm with the unbiased variance (divided by n - 1)",
            "GPT-2 uses the biased variance, divided by n: in the line that computes var, ask x.var for "
            "unbiased=False.", unbiased=True),
    Mistake("LayerNorm without eps", "add self.eps to the variance, inside the square root: a constant vector has "
            "variance 0.", eps=0.0),
    Mistake("LayerNorm with eps added to the standard deviation", "eps belongs inside the square root, added to "
            "the variance, not to the standard deviation.", eps_outside=True),
    Mistake("LayerNorm that divides by the variance instead of the standard deviation",
            "divide by the square root of (variance + eps).", std=False),
    Mistake("LayerNorm without scale and shift", "the last step multiplies the normalised x by self.scale and adds "
            "self.shift (both trainable, of size emb_dim).", affine=False),
    Mistake("LayerNorm over dimension 1 (the tokens) instead of the last dimension (each token's features)",
            "take the mean and the variance over the last dimension, dim=-1.", dim=1),
    Mistake("a variance computed as the mean of the squares minus the square of the mean", "for activations far "
            "from 0 the two terms are large and nearly equal, and float32 loses the difference: take the "
            "variance of x itself (x.var, which centres x first).", one_pass=True),
]


@pytest.mark.points(2)
@pytest.mark.runs("LayerNorm")
def test_layer_norm(submission):
    """LayerNorm: outputs and gradients on 2-D and 3-D inputs, a constant vector and large activations among them.

    Each vector is normalised over its last dimension (biased variance, eps), then scaled and shifted."""
    ln = randomise_norms(ref.LayerNorm(6), 40)
    flat = randn(41, 4, 6) * 2 + 0.5
    flat[1] = 0.7  # a constant vector: variance 0, only eps keeps the division finite
    flat[2] = 0.003 * randn(42, 6)  # a variance of the order of eps (around 0: no cancellation in x - mean)
    inputs = [flat, randn(43, 2, 5, 6) * 1.5 - 0.4, randn(45, 3, 4, 6) * 2 + 100]  # the last: far from 0
    expect_module_gradients(submission, ln, "LayerNorm", {"emb_dim": 6}, inputs, what="LayerNorm output",
                            hint=HINT_NORM, seed=44, mistakes=LAYER_NORM_MISTAKES,
                            mistaken=partial(layer_norm_with, ln))


# -- section 4.3: GELU and the feed-forward network ------------------------------------------------------------

def gelu_with(x, *, form="tanh", cubic=0.044715, half=0.5):
    """GELU of `x` in the tanh approximation, or with one mistake: another form (erf, relu), a cubic
    coefficient or a factor in front other than the book's."""
    if form == "erf":
        return F.gelu(x)
    if form == "relu":
        return torch.relu(x)
    return half * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + cubic * x ** 3)))


GELU_MISTAKES = [
    Mistake("the exact GELU (with erf)", "use the tanh approximation that the book and GPT-2 use (the formula of "
            "section 4.3 in the notebook).", form="erf"),
    Mistake("GELU without the cubic term", "inside the tanh, sqrt(2 / pi) multiplies x plus 0.044715 times x cubed.",
            cubic=0.0),
    Mistake("GELU without the factor 0.5", "the formula starts with 0.5 * x.", half=1.0),
    Mistake("a ReLU", "GELU is smooth: use the tanh formula of section 4.3.", form="relu"),
]


@pytest.mark.points(1)
@pytest.mark.runs("GELU")
def test_gelu(submission):
    """GELU in the tanh approximation, values and gradients from -6 to 6."""
    inputs = [torch.linspace(-6, 6, 97).reshape(1, 97), randn(50, 2, 3, 7) * 2.5]
    for index, x in enumerate(inputs):
        upstream = randn(51 + index, *x.shape)
        expected, _, expected_grad = reference_gradients(ref.GELU(), x, upstream)
        got = submission.run(run_module_with_gradients, class_name="GELU", init={}, state={}, x=x, upstream=upstream)
        label = f"GELU output, input of shape {tuple(x.shape)}"
        expect_close(got.output, expected, what=label, atol=1e-5, rtol=1e-5, mistakes=GELU_MISTAKES,
                     mistaken=partial(gelu_with, x), hint=HINT_GELU)
        expect_close(got.input_gradient, expected_grad, what=f"{label}: gradient of the input", atol=1e-5,
                     rtol=1e-5, hint=HINT_GRADIENT)


def feed_forward_with(ff, x, *, activation=True):
    """The reference FeedForward's layers, with or without the GELU between them."""
    hidden = ff.layers[0](x)
    return ff.layers[2](ff.layers[1](hidden) if activation else hidden)


@pytest.mark.points(1)
@pytest.mark.runs("FeedForward")
@pytest.mark.stand_ins(*FF_PARTS)
def test_feed_forward(submission):
    """FeedForward: Linear to 4 * emb_dim, GELU, Linear back to emb_dim; outputs and gradients.

    Run with a correct GELU in place of yours."""
    ff = reference_module(ref.FeedForward, 60, cfg=CFG)
    no_activation = Mistake("a feed-forward network without its activation", "self.layers holds three layers "
                            "(Linear, GELU, Linear): the input goes through all of them, in order.", activation=False)
    inputs = [randn(61, 2, 5, 12), randn(63, 1, 1, 12)]  # a batch, and one token of a batch of one
    expect_module_gradients(OnStandIns(submission, KIT, FF_PARTS), ff, "FeedForward", {"cfg": CFG}, inputs,
                            what="FeedForward output", hint="the three layers of self.layers, applied in order "
                            "(section 4.3, listing 4.4): (batch, num_tokens, emb_dim) in and out.", seed=62,
                            mistakes=[no_activation], mistaken=partial(feed_forward_with, ff))


# -- section 4.4: shortcut connections ----------------------------------------------------------------------

def network_with(model, x, *, use_shortcut):
    """The reference ExampleDeepNeuralNetwork's forward with use_shortcut set to the given value."""
    kept, model.use_shortcut = model.use_shortcut, use_shortcut
    try:
        return model(x)
    finally:
        model.use_shortcut = kept


@pytest.mark.points(1)
@pytest.mark.runs("ExampleDeepNeuralNetwork")
@pytest.mark.stand_ins(*FF_PARTS)
def test_example_deep_neural_network(submission):
    """ExampleDeepNeuralNetwork: outputs and gradients, with and without shortcut connections.

    A layer's input is added to its output when use_shortcut is on and the shapes match (run with a correct
    GELU in place of yours)."""
    cases = [([3, 3, 3, 3, 3, 1], True), ([3, 3, 3, 3, 3, 1], False), ([2, 4, 4, 4, 4, 4], True)]
    for index, (layer_sizes, use_shortcut) in enumerate(cases):
        init = {"layer_sizes": layer_sizes, "use_shortcut": use_shortcut}
        model = reference_module(ref.ExampleDeepNeuralNetwork, 70 + index, **init)
        flipped = Mistake(f"the network with use_shortcut={not use_shortcut}", "add a layer's input to its output "
                          "only when self.use_shortcut is True (and the shapes match).",
                          use_shortcut=not use_shortcut)
        expect_module_gradients(OnStandIns(submission, KIT, FF_PARTS), model, "ExampleDeepNeuralNetwork", init,
                                [randn(75 + index, 2, layer_sizes[0])],
                                what=f"ExampleDeepNeuralNetwork(layer_sizes={layer_sizes}, "
                                     f"use_shortcut={use_shortcut}) output",
                                hint="run the layers in order (section 4.4, listing 4.5); where use_shortcut is "
                                     "on and a layer's output has the shape of its input, the next layer gets "
                                     "their sum, else the output alone.",
                                seed=78 + index, mistakes=[flipped], mistaken=partial(network_with, model))


# -- section 4.5: the transformer block ----------------------------------------------------------------------

def block_with(block, x, *, pre_norm=True, att_shortcut=True, ff_shortcut=True, shortcut_from_norm=False,
               one_norm=False, attention=True):
    """The reference block's forward (eval mode) with one mistake switched on (none by default)."""
    if not attention:
        return x + block.ff(block.norm2(x))
    norm1 = block.norm1
    norm2 = block.norm1 if one_norm else block.norm2
    if pre_norm:
        h = norm1(x)
        h = block.att(h) + (h if shortcut_from_norm else x) * att_shortcut
        z = norm2(h)
        return block.ff(z) + (z if shortcut_from_norm else h) * ff_shortcut
    h = norm1(block.att(x) + x * att_shortcut)
    return norm2(block.ff(h) + h * ff_shortcut)


BLOCK_MISTAKES = [
    Mistake("a post-LayerNorm block (LayerNorm after adding the shortcut, as in the original transformer)",
            "GPT-2 normalises BEFORE each sub-block: the LayerNorm takes the sub-block's input, and the sum with "
            "the shortcut is not normalised.", pre_norm=False),
    Mistake("a block without shortcut connections", "remember each sub-block's input and add it back to the "
            "sub-block's output, in both sub-blocks.", att_shortcut=False, ff_shortcut=False),
    Mistake("a block without the shortcut around the attention", "remember the input before norm1 and add it back "
            "after the attention's dropout.", att_shortcut=False),
    Mistake("a block without the shortcut around the feed-forward network", "remember the input before norm2 and "
            "add it back after the feed-forward network's dropout.", ff_shortcut=False),
    Mistake("a block whose shortcuts start after the LayerNorm", "the shortcut is the sub-block's input BEFORE the "
            "LayerNorm: remember it first, then normalise.", shortcut_from_norm=True),
    Mistake("a block that uses norm1 twice", "the feed-forward sub-block has its own LayerNorm, self.norm2.",
            one_norm=True),
    Mistake("a block without its attention sub-block", "the block starts with the attention sub-block (norm1, "
            "att, dropout, shortcut), then the feed-forward one.", attention=False),
]


@pytest.mark.points(3)
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_transformer_block(submission):
    """TransformerBlock: outputs and gradients in eval mode, with and without qkv_bias.

    Pre-LayerNorm attention and feed-forward sub-blocks, each inside a shortcut connection (run with correct
    LayerNorms and feed-forward network in place of yours)."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        block = randomise_norms(reference_module(ref.TransformerBlock, 90 + index, cfg=cfg), 92 + index)
        x = 4 * randn(94 + index, 2, cfg["context_length"], cfg["emb_dim"])  # a variance far above eps
        expect_module_gradients(OnStandIns(submission, KIT, BLOCK_PARTS), block, "TransformerBlock", {"cfg": cfg}, [x],
                                what=f"TransformerBlock output ({cfg['n_heads']} heads, qkv_bias={cfg['qkv_bias']})",
                                hint=HINT_BLOCK, seed=96 + index, mistakes=BLOCK_MISTAKES,
                                mistaken=partial(block_with, block), gradient_floor=COMPOSITE)


def check_train_mode(submission, model, class_name, parts, cfg, x, *, what, noun, eval_hint, replay_hint,
                     unchanged_hint=None, errors=()):
    """The student's module with cfg's drop_rate, built on stand-ins of its `parts`: the reference's output in
    eval mode; in train mode, with drop_rate > 0, the book's forward replayed with the same random draws (after
    differing from eval mode, when `unchanged_hint` is given); with drop_rate 0, the output of eval mode."""
    with explain_errors(state_dict_mismatch, *errors):
        got = submission.run(train_mode_replayed, stand_ins=parts, class_name=class_name, cfg=cfg,
                             state=model.state_dict(), x=x)
    what = f"{what} with drop_rate={cfg['drop_rate']}"
    with torch.no_grad():
        expected = model(x)
    expect_close(got.eval, expected, what=f"{what} in eval mode", hint=eval_hint)
    out_train = expect_tensor(got.train, what=f"{what} in train mode", shape=expected.shape)
    replayed = expect_tensor(got.replayed, what=f"{what} in train mode", shape=expected.shape)
    if cfg["drop_rate"] == 0:
        expect_close(out_train, got.eval, what=f"{what}, train vs eval mode",
                     hint=f"with drop_rate 0 the {noun} must behave the same in train and eval mode.")
        return
    if unchanged_hint is not None:
        expect_true(bool((out_train - got.eval).abs().max() > 1e-3), what=f"{what} in train mode",
                    problem="the output equals the output in eval mode, so no dropout was applied.",
                    hint=unchanged_hint)
    expect_close(out_train, replayed, what=f"{what} in train mode (seeded)", hint=replay_hint)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_transformer_block")
@pytest.mark.runs("TransformerBlock")
@pytest.mark.stand_ins(*BLOCK_PARTS)
def test_transformer_block_dropout_in_training(submission):
    """TransformerBlock applies dropout to each sub-block's output, before the shortcut, in train mode only."""
    for drop_rate in (0.5, 0.0):
        cfg = dict(CFG, drop_rate=drop_rate)
        block = randomise_norms(reference_module(ref.TransformerBlock, 100, cfg=cfg), 101)
        check_train_mode(submission, block, "TransformerBlock", BLOCK_PARTS, cfg, 4 * randn(102, 2, 6, 12),
                         what="TransformerBlock", noun="block", eval_hint=HINT_BLOCK,
                         unchanged_hint="apply self.drop_shortcut to the output of the attention and to the output "
                                        "of the feed-forward network, each time before adding the shortcut.",
                         replay_hint=HINT_DROPOUT_PLACE)


# -- section 4.6: the GPT model ------------------------------------------------------------------------------

def model_with(model, idx, *, first_position=0, positions=True, blocks=True, final_norm=True, softmax=False,
               tied=False):
    """The reference GPTModel's forward (eval mode) with one mistake switched on (none by default). `tied`: the
    output head and the token embedding share one matrix, which then holds the output head's weights (the
    grader loads tok_emb.weight, then out_head.weight, into the same tensor)."""
    seq_len = idx.shape[1]
    x = F.embedding(idx, model.out_head.weight) if tied else model.tok_emb(idx)
    if positions:
        x = x + model.pos_emb(torch.arange(first_position, first_position + seq_len))
    if blocks:
        x = model.trf_blocks(x)
    if final_norm:
        x = model.final_norm(x)
    logits = model.out_head(x)
    return torch.softmax(logits, dim=-1) if softmax else logits


MODEL_MISTAKES = [
    Mistake("position ids that start at 1", "positions are counted from 0 to num_tokens - 1.", first_position=1),
    Mistake("a model without position embeddings", "add the position embeddings of positions 0 .. num_tokens - 1 "
            "to the token embeddings.", positions=False),
    Mistake("a model that skips the transformer blocks", "the embeddings go through self.trf_blocks before the "
            "final LayerNorm.", blocks=False),
    Mistake("a model without the final LayerNorm", "apply self.final_norm between the blocks and self.out_head.",
            final_norm=False),
    Mistake("the softmax of the logits", "return the logits themselves; the softmax comes later (in the loss, or "
            "when sampling).", softmax=True),
    Mistake("a model whose output head shares the token embedding's weight (weight tying)", "the book keeps them "
            "separate in this chapter: keep the __init__ the notebook gives.", tied=True),
]


@pytest.mark.points(3)
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_logits(submission):
    """GPTModel: logits and gradients in eval mode, on inputs of context_length tokens, with and without qkv_bias.

    Token and position embeddings, the transformer blocks, the final LayerNorm and the output head (run with
    correct transformer blocks and LayerNorms in place of yours)."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        model = gpt_model(cfg, 110 + index)
        idx = randint(112 + index, cfg["vocab_size"], 2, cfg["context_length"])
        expect_module_gradients(OnStandIns(submission, KIT, MODEL_PARTS), model, "GPTModel", {"cfg": cfg},
                                [idx],
                                what=f"GPTModel logits ({cfg['n_layers']} blocks, qkv_bias={cfg['qkv_bias']})",
                                hint=HINT_MODEL, seed=114 + index, mistakes=MODEL_MISTAKES,
                                mistaken=partial(model_with, model), errors=(POSITION_IDS,), gradient_floor=COMPOSITE)


@pytest.mark.points(1)
@pytest.mark.runs("GPTModel", "TransformerBlock", "LayerNorm", "FeedForward", "GELU")
def test_gpt_model_size(submission):
    """GPTModel has the book's parameters (counted on tiny configurations) and logits of the right shape.

    A separate output head without bias; (batch, num_tokens) token ids give (batch, num_tokens, vocab_size)
    logits."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        model = ref.GPTModel(cfg)
        expected_count = sum(p.numel() for p in model.parameters())
        idx = randint(120 + index, cfg["vocab_size"], 3, cfg["context_length"])
        with explain_errors(POSITION_IDS):
            got = submission.run(model_size, cfg=cfg, idx=idx)
        what = f"GPTModel with {cfg}"
        tied = model.out_head.weight.numel()
        expect_count(got.count, expected_count, what=f"number of parameters of {what}",
                     hint=("your output head shares the token embedding's weight (weight tying): the book keeps them "
                           "separate in this chapter (chapter 5 loads GPT-2's tied weights into both)."
                           if got.count == expected_count - tied else
                           "keep the __init__ the notebook gives (one output head without bias, n_layers blocks)."))
        expect_equal(got.shapes, {name: list(t.shape) for name, t in model.state_dict().items()},
                     what=f"the weights and buffers (state_dict) of {what}",
                     hint="keep the attribute names and layers of the __init__ the notebook gives.")
        expect_equal(got.logits_shape, [3, cfg["context_length"], cfg["vocab_size"]],
                     what=f"the shape of the logits of {what} for a batch of 3 inputs",
                     hint="return one row of vocab_size logits per input token: (batch, num_tokens, vocab_size).")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt_model_logits")
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_shorter_input(submission):
    """GPTModel on inputs shorter than context_length (down to one token), and on a batch of one."""
    model = gpt_model(CFG, 130)
    inputs = [randint(131, CFG["vocab_size"], 2, 5), randint(132, CFG["vocab_size"], 3, 1),
              randint(133, CFG["vocab_size"], 1, 6)]
    with explain_errors(state_dict_mismatch, shape_mismatch(HINT_POSITIONS), POSITION_IDS):
        got = submission.run(run_module, stand_ins=MODEL_PARTS, kit=KIT, class_name="GPTModel",
                             init={"cfg": CFG}, state=model.state_dict(), inputs=inputs)
    for idx, out in zip(inputs, got):
        with torch.no_grad():
            expected = model(idx)
        expect_close(out, expected, what=f"GPTModel logits, input of shape {tuple(idx.shape)}", hint=HINT_POSITIONS,
                     mistakes=MODEL_MISTAKES, mistaken=partial(model_with, model, idx))


@pytest.mark.points(1)
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_is_causal(submission):
    """GPTModel: the logits at a position do not depend on later tokens, and do depend on earlier ones."""
    model = gpt_model(dict(CFG, drop_rate=0.0), 140)
    idx = randint(141, CFG["vocab_size"], 2, CFG["context_length"])
    try:
        with explain_errors(POSITION_IDS):
            expect_causal(OnStandIns(submission, KIT, MODEL_PARTS), model, "GPTModel",
                          {"cfg": dict(CFG, drop_rate=0.0)}, idx, what="GPTModel logits", vocab_size=CFG["vocab_size"])
    except GradingFailure as failure:
        # The attention (chapter 3's, from the setup cell) is masked: the hint about masking does not fit here.
        raise GradingFailure(str(failure).replace(HINT_MASK, HINT_MODEL_CAUSAL)) from None


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt_model_logits")
@pytest.mark.runs("GPTModel")
@pytest.mark.stand_ins(*MODEL_PARTS)
def test_gpt_model_dropout_in_training(submission):
    """GPTModel applies drop_emb to the sum of token and position embeddings, in train mode only."""
    for drop_rate in (0.5, 0.0):
        cfg = dict(CFG, drop_rate=drop_rate)
        check_train_mode(submission, gpt_model(cfg, 150), "GPTModel", MODEL_PARTS, cfg,
                         randint(151, cfg["vocab_size"], 2, 7), what="GPTModel", noun="model", eval_hint=HINT_MODEL,
                         replay_hint="apply self.drop_emb to the sum of the token and position embeddings, before "
                                     "the transformer blocks (and nowhere else in GPTModel's forward).",
                         errors=(shape_mismatch(HINT_POSITIONS), POSITION_IDS))


# -- section 4.7: generating text ----------------------------------------------------------------------------

TOY_VOCAB, TOY_EMB, TOY_CONTEXT = 23, 6, 16


# (prompt ids, max_new_tokens, context_size): batches of prompts, one token, no new token; then contexts shorter
# than prompt + new tokens, a prompt already longer than the context, and one exactly as long as the context.
GREEDY_CASES = [(randint(170, TOY_VOCAB, 3, 4), 6, TOY_CONTEXT), (randint(171, TOY_VOCAB, 1, 1), 3, TOY_CONTEXT),
                (randint(172, TOY_VOCAB, 2, 5), 0, TOY_CONTEXT)]
CROP_CASES = [(randint(180, TOY_VOCAB, 2, 3), 6, 5), (randint(181, TOY_VOCAB, 1, 9), 4, 6),
              (randint(182, TOY_VOCAB, 2, 5), 3, 5)]


def toy_weights():
    """The toy model's weights: large output weights, so that greedy choices are clear-cut on every device."""
    return {"tok": randn(160, TOY_VOCAB, TOY_EMB), "pos": randn(161, TOY_CONTEXT, TOY_EMB),
            "head": 4 * randn(162, TOY_VOCAB, TOY_EMB)}


def generate_with(model, idx, max_new_tokens, context_size, *, crop="last", position=-1):
    """Greedy generation with one mistake switched on (crop the first tokens, or none; read another position)."""
    for _ in range(max_new_tokens):
        idx_cond = {"last": idx[:, -context_size:], "first": idx[:, :context_size], "none": idx}[crop]
        with torch.no_grad():
            logits = model(idx_cond)[:, position, :]
        idx = torch.cat((idx, logits.argmax(dim=-1, keepdim=True)), dim=1)
    return idx


GENERATION_MISTAKES = [
    Mistake("keeping the FIRST context_size tokens", "keep the LAST context_size tokens: slice from the end.",
            crop="first"),
    Mistake("choosing from the logits of the first position", "the next token is scored by the LAST position's "
            "logits (index -1 of the token dimension).", position=0),
]


def toy_ids(weights, case, **change):
    """The ids that generate_with, with `change`'s mistake, gives for one case with the toy model."""
    mistaken = SimpleNamespace(generate_text_simple=partial(generate_with, **change))
    return generate_with_toy_model(mistaken, weights, [case])[0]["ids"]


def same_ids(got, mistaken) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == mistaken.shape and torch.equal(got, mistaken)


def generation_hint(ids, weights, case) -> str:
    """A classic mistake that gives exactly the student's ids; else the new tokens returned without the prompt;
    else the idea of greedy decoding."""
    prompt, max_new_tokens, _ = case
    named = name_mistake(ids, GENERATION_MISTAKES, partial(toy_ids, weights, case), matches=same_ids,
                         yours="your ids are")
    if named:
        return named
    if isinstance(ids, torch.Tensor) and tuple(ids.shape) == (prompt.shape[0], max_new_tokens):
        return ("return the prompt followed by the new tokens: append each new token to idx (along dim=1) and "
                "return idx, of shape (batch, n + max_new_tokens).")
    return ("append the argmax of the last position's logits, one token per step, max_new_tokens times "
            "(greedy decoding: no sampling).")


def check_generation(submission, cases, *, what):
    weights = toy_weights()
    expected = generate_with_toy_model(ref, weights, cases)
    with explain_errors(CONTEXT_EXCEEDED):
        got = submission.run(generate_with_toy_model, weights=weights, cases=cases)
    for case, mine, reference in zip(cases, got, expected):
        prompt, max_new_tokens, context_size = case
        label = (f"{what}: a batch of {prompt.shape[0]} prompt(s) of {prompt.shape[1]} token(s), "
                 f"max_new_tokens={max_new_tokens}, context_size={context_size}")
        expect_equal(mine.ids, reference["ids"], what=f"token ids from {label}",
                     hint=partial(generation_hint, mine.ids, weights, case))
        expect_equal(mine.fed, reference["fed"], what=f"the number of tokens fed to the model at each step, {label}",
                     hint="call the model once per new token, on the (cropped) sequence so far.")


@pytest.mark.points(2)
@pytest.mark.runs("generate_text_simple")
def test_generate_text_simple(submission):
    """generate_text_simple appends the most likely next token max_new_tokens times, for batches of prompts.

    Greedy decoding, so the ids must be exactly the reference's."""
    check_generation(submission, GREEDY_CASES, what="greedy generation")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_generate_text_simple")
@pytest.mark.runs("generate_text_simple")
def test_generate_text_simple_crops_context(submission):
    """generate_text_simple feeds the model at most context_size tokens: the last ones."""
    check_generation(submission, CROP_CASES, what="generation with a short context")
