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

The book's repository calls the shortcut dropout `drop_resid` in one edition and `drop_shortcut` in another:
dropout layers have no weights, so the grader relies on neither name.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from checks.ch04_gpt import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import (
    DEVICE,
    ListOf,
    compare,
    expect_close,
    expect_count,
    expect_equal,
    expect_tensor,
    expect_true,
    probe,
)
from course.grading.compare import GradingFailure
from course.grading.diagnosis import explain_errors, shape_mismatch, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from course.grading.probes import run_module, run_module_with_gradients
from course.grading.properties import HINT_MASK, eval_dropout_left_on, expect_causal
from course.worker.runtime.records import ErrorKind
from reference import gpt as ref

# Tiny configurations: the book's architecture at a size that grades in milliseconds.
CFG = {"vocab_size": 53, "context_length": 8, "emb_dim": 12, "n_heads": 3, "n_layers": 2, "drop_rate": 0.1,
       "qkv_bias": False}
CFG_BIAS = {"vocab_size": 40, "context_length": 6, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
            "qkv_bias": True}

# The student's code that a transformer block and a whole model run (@pytest.mark.runs): the attention comes
# from the setup cell (chapter 3's reference), everything else is the student's.
BLOCK = ("TransformerBlock", "LayerNorm", "FeedForward", "GELU")
MODEL = ("GPTModel", *BLOCK)

HINT_NORM = ("subtract the mean and divide by sqrt(var + eps) over the last dimension (dim=-1, keepdim=True), "
             "with the biased variance (unbiased=False), then return self.scale * norm_x + self.shift.")
HINT_BLOCK = ("pre-LayerNorm with two shortcuts: shortcut = x; x = norm1(x); x = att(x); x = drop_shortcut(x); "
              "x = x + shortcut; then the same with norm2 and ff.")
HINT_MODEL = ("token embeddings plus position embeddings of positions 0..num_tokens-1, drop_emb, the transformer "
              "blocks, final_norm, then out_head: return the logits.")
HINT_POSITIONS = ("an input may be shorter than context_length: embed the positions of the input's own tokens, "
                  "torch.arange(seq_len, device=in_idx.device).")
HINT_MODEL_CAUSAL = ("the attention of chapter 3 is masked, so something else mixes the positions: LayerNorm must "
                     "normalise each token over its own features (dim=-1), and nothing else in the block or the "
                     "model may combine different tokens.")
HINT_CROP = "feed the model only the last context_size tokens: idx[:, -context_size:]."


# -- helpers on the trusted side --------------------------------------------------------------------------------

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


def reference_gradients(model: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """What run_module_with_gradients returns for the reference: [output, {parameter: gradient}, input gradient]."""
    x = x.clone().requires_grad_(True) if x.is_floating_point() else x
    output = model(x)
    named = list(model.named_parameters())
    inputs = [p for _, p in named] + ([x] if x.is_floating_point() else [])
    grads = torch.autograd.grad((output * upstream).sum(), inputs, allow_unused=True)
    param_grads = {name: g for (name, _), g in zip(named, grads) if g is not None}
    x_grad = grads[-1] if x.is_floating_point() else None
    return output.detach(), param_grads, x_grad


def same(got, mistaken: torch.Tensor) -> bool:
    """The student's output equals what a known mistake gives (NaN where it gives NaN)."""
    return (isinstance(got, torch.Tensor) and got.is_floating_point() and got.shape == mistaken.shape
            and torch.allclose(got.double(), mistaken.double(), atol=1e-4, rtol=1e-4, equal_nan=True))


def name_first_mistake(got, candidates) -> str | None:
    """candidates: (description, fix, function computing the mistaken output); the first that matches."""
    for description, fix, compute in candidates:
        try:
            with torch.no_grad():
                mistaken = compute()
        except (RuntimeError, IndexError, ValueError):
            continue  # this mistake cannot even run on this input
        if same(got, mistaken):
            return f"your output is exactly what {description} gives: {fix}"
    return None


HINT_GRADIENT = ("the output matches within the tolerance but a gradient does not: a small difference in the formula "
                 "shows more in the gradients; also avoid in-place changes and .detach() in the forward pass.")


def gradient_tolerance(composite: bool) -> dict:
    """Tolerances for gradients: the device's for a single layer; for a block or a whole model at least 1e-4, so
    that a LayerNorm that gets eps slightly wrong fails its own test and not, by a hair, every test built on it."""
    if not composite:
        return {}
    atol, rtol = compare.TOLERANCES.get(compare._device, compare.TOLERANCES["cuda"])
    return {"atol": max(atol, 1e-4), "rtol": max(rtol, 1e-4)}


def check_module(submission, model, class_name, init, inputs, *, what, hint, seed, mistakes=None, errors=(),
                 composite=False):
    """The student's `class_name(**init)`, loaded with `model`'s weights, gives the reference's output, parameter
    gradients and input gradient for each input (eval mode; loss = (output * upstream).sum()).

    mistakes(x) lists (description, fix, compute) candidates to name when the output is wrong; `composite` for
    modules built from other graded modules (looser gradient tolerances, see gradient_tolerance)."""
    tolerance = gradient_tolerance(composite)
    state = model.state_dict()
    for index, x in enumerate(inputs):
        with torch.no_grad():
            upstream = randn(seed + index, *model(x).shape)
        expected, expected_grads, expected_x_grad = reference_gradients(model, x, upstream)
        with explain_errors(state_dict_mismatch, output_shape_mismatch(tuple(expected.shape)), *errors):
            got = submission.run(run_module_with_gradients, class_name=class_name, init=init, state=state, x=x,
                                 upstream=upstream)
        out, grads, x_grad = got.output, got.gradients, got.input_gradient
        label = f"{what}, input of shape {tuple(x.shape)}"

        def diagnose(x=x, got=out):
            return ((name_first_mistake(got, mistakes(x)) if mistakes else None)
                    or dropout_left_on(submission, class_name, init, state, x, got) or hint)

        expect_close(out, expected, what=label, hint=diagnose)
        grads = grads if isinstance(grads, dict) else {}
        missing = [name for name in expected_grads if name not in grads]
        expect_true(not missing, what=f"{label}: gradients",
                    problem=f"no gradient reached {', '.join(missing[:3])} after backward().",
                    hint="every parameter must take part in the forward pass, and the computation must stay in "
                         "torch (no .item(), .detach() or numpy in between).")
        for name, expected_grad in expected_grads.items():
            expect_close(grads[name], expected_grad, what=f"{label}: gradient of {name}", hint=HINT_GRADIENT,
                         **tolerance)
        if expected_x_grad is not None:
            expect_close(x_grad, expected_x_grad, what=f"{label}: gradient of the input", hint=HINT_GRADIENT,
                         **tolerance)


def dropout_left_on(submission, class_name, init, state, x, got) -> str | None:
    """eval_dropout_left_on, asked only about finite outputs (two NaN outputs are unequal without any dropout)."""
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not bool(torch.isfinite(got).all()):
        return None
    return eval_dropout_left_on(submission, class_name, init, state, x)


def output_shape_mismatch(shape: tuple[int, ...]):
    """A diagnosis for the probe's (output * upstream) failing on an output of the wrong shape."""

    def diagnose(record) -> str | None:
        if record.kind is ErrorKind.UNUSABLE and "must match the size" in record.message:
            return f"the output must have the shape {shape}, one vector per input position."
        return None

    return diagnose


# -- classic mistakes, recomputed with the reference's weights -----------------------------------------------------

def layer_norm_with(ln, x, *, unbiased=False, eps=None, eps_outside=False, dim=-1, affine=True, std=True):
    """LayerNorm of `x` with `ln`'s scale and shift, with one mistake switched on (none by default)."""
    eps = ln.eps if eps is None else eps
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, keepdim=True, unbiased=unbiased)
    if eps_outside:
        norm_x = (x - mean) / (torch.sqrt(var) + eps)
    elif std:
        norm_x = (x - mean) / torch.sqrt(var + eps)
    else:
        norm_x = (x - mean) / (var + eps)
    return ln.scale * norm_x + ln.shift if affine else norm_x


def layer_norm_mistakes(ln, x):
    candidates = [
        ("LayerNorm with the unbiased variance (divided by n - 1)",
         "GPT-2 uses the biased variance: x.var(dim=-1, keepdim=True, unbiased=False).",
         lambda: layer_norm_with(ln, x, unbiased=True)),
        ("LayerNorm without eps", "add self.eps to the variance inside the square root: a constant vector has "
         "variance 0.", lambda: layer_norm_with(ln, x, eps=0.0)),
        ("LayerNorm with eps added to the standard deviation", "torch.sqrt(var + self.eps): eps goes inside the "
         "square root.", lambda: layer_norm_with(ln, x, eps_outside=True)),
        ("LayerNorm that divides by the variance instead of the standard deviation",
         "divide by torch.sqrt(var + self.eps).", lambda: layer_norm_with(ln, x, std=False)),
        ("LayerNorm without scale and shift", "return self.scale * norm_x + self.shift.",
         lambda: layer_norm_with(ln, x, affine=False)),
    ]
    if x.dim() == 3:
        candidates.append(("LayerNorm over dimension 1 (the tokens) instead of the last dimension (each token's "
                           "features)", "take the mean and the variance over dim=-1.",
                           lambda: layer_norm_with(ln, x, dim=1)))
    return candidates


def gelu_mistakes(x):
    cubic = torch.sqrt(torch.tensor(2.0 / torch.pi))
    return [
        ("the exact GELU (with erf)", "use the tanh approximation the book and GPT-2 use: 0.5 * x * (1 + "
         "tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))).", lambda: F.gelu(x)),
        ("GELU without the cubic term", "the tanh's argument is sqrt(2 / pi) * (x + 0.044715 * x**3).",
         lambda: 0.5 * x * (1 + torch.tanh(cubic * x))),
        ("GELU without the factor 0.5", "GELU(x) = 0.5 * x * (1 + tanh(...)).",
         lambda: x * (1 + torch.tanh(cubic * (x + 0.044715 * x ** 3)))),
        ("a ReLU", "GELU is smooth: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))).",
         lambda: torch.relu(x)),
    ]


def feed_forward_mistakes(ff, x):
    return [
        ("a feed-forward network without its activation", "run all three layers of self.layers (Linear, GELU, "
         "Linear): return self.layers(x).", lambda: ff.layers[2](ff.layers[0](x))),
    ]


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


def block_mistakes(block, x):
    return [
        ("a post-LayerNorm block (LayerNorm after adding the shortcut, as in the original transformer)",
         "GPT-2 normalises BEFORE each sub-block: x = x + att(norm1(x)), then x = x + ff(norm2(x)).",
         lambda: block_with(block, x, pre_norm=False)),
        ("a block without shortcut connections", "add the input of each sub-block back to its output: "
         "x = x + shortcut, twice.", lambda: block_with(block, x, att_shortcut=False, ff_shortcut=False)),
        ("a block without the shortcut around the attention", "keep shortcut = x before norm1 and add it back "
         "after the attention.", lambda: block_with(block, x, att_shortcut=False)),
        ("a block without the shortcut around the feed-forward network", "keep shortcut = x before norm2 and add "
         "it back after ff.", lambda: block_with(block, x, ff_shortcut=False)),
        ("a block whose shortcuts start after the LayerNorm", "the shortcut is the sub-block's input before the "
         "LayerNorm: shortcut = x, then x = self.norm1(x).", lambda: block_with(block, x, shortcut_from_norm=True)),
        ("a block that uses norm1 twice", "the feed-forward sub-block has its own LayerNorm, self.norm2.",
         lambda: block_with(block, x, one_norm=True)),
        ("a block without its attention sub-block", "first x = x + drop_shortcut(att(norm1(x))), then the "
         "feed-forward sub-block.", lambda: block_with(block, x, attention=False)),
    ]


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


def model_mistakes(model, idx):
    return [
        ("position ids that start at 1", "positions are counted from 0: torch.arange(seq_len).",
         lambda: model_with(model, idx, first_position=1)),
        ("a model without position embeddings", "add self.pos_emb(torch.arange(seq_len, device=in_idx.device)) "
         "to the token embeddings.", lambda: model_with(model, idx, positions=False)),
        ("a model that skips the transformer blocks", "run x through self.trf_blocks.",
         lambda: model_with(model, idx, blocks=False)),
        ("a model without the final LayerNorm", "apply self.final_norm before self.out_head.",
         lambda: model_with(model, idx, final_norm=False)),
        ("the softmax of the logits", "return the logits themselves; the softmax comes later (in the loss, or "
         "when sampling).", lambda: model_with(model, idx, softmax=True)),
        ("a model whose output head shares the token embedding's weight (weight tying)", "the book keeps them "
         "separate in this chapter: keep the __init__ the notebook gives.", lambda: model_with(model, idx, tied=True)),
    ]


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

@probe(returns=ListOf(length=3))
def block_in_train_mode(student, cfg, state, x):
    """[eval output, train output, the book's train-mode forward replayed with the same random draws through the
    student's own submodules] of the student's TransformerBlock."""
    block = student.TransformerBlock(cfg).to(DEVICE)
    block.load_state_dict(state)
    p = cfg["drop_rate"]
    with torch.no_grad():
        out_eval = block.eval()(x)
        block.train()
        torch.manual_seed(5)
        out_train = block(x)
        torch.manual_seed(5)
        h = x + F.dropout(block.att(block.norm1(x)), p, training=True)
        replayed = h + F.dropout(block.ff(block.norm2(h)), p, training=True)
    return [out_eval, out_train, replayed]


@probe(returns=ListOf(length=3))
def model_in_train_mode(student, cfg, state, idx):
    """[eval logits, train logits, the book's train-mode forward replayed with the same random draws through the
    student's own submodules] of the student's GPTModel."""
    model = student.GPTModel(cfg).to(DEVICE)
    model.load_state_dict(state)
    with torch.no_grad():
        out_eval = model.eval()(idx)
        model.train()
        torch.manual_seed(5)
        out_train = model(idx)
        torch.manual_seed(5)
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        x = F.dropout(x, cfg["drop_rate"], training=True)
        for block in model.trf_blocks:
            x = block(x)
        replayed = model.out_head(model.final_norm(x))
    return [out_eval, out_train, replayed]


@probe(returns=ListOf(length=3))
def model_size(student, cfg, idx):
    """[number of parameters, {state_dict entry: shape}, shape of the logits for idx] of the student's GPTModel."""
    model = student.GPTModel(cfg).to(DEVICE).eval()
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        logits = model(idx)
    shape = list(logits.shape) if isinstance(logits, torch.Tensor) else None
    return [sum(p.numel() for p in model.parameters()), shapes, shape]


@probe(returns=ListOf(ListOf(length=2), length="cases"))
def generate_with_toy_model(student, weights, cases):
    """For each (prompt, max_new_tokens, context_size): [the ids the student's generate_text_simple returns, the
    number of tokens the model was fed at each step], with a small causal model that accepts at most
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
        results.append([ids, list(model.fed)])
    return results


# -- section 4.2: layer normalization ------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("LayerNorm")
def test_layer_norm(submission):
    """LayerNorm: outputs and gradients on 2-D and 3-D inputs, a constant vector among them.

    Each vector is normalised over its last dimension (biased variance, eps), then scaled and shifted."""
    ln = randomise_norms(ref.LayerNorm(6), 40)
    flat = randn(41, 4, 6) * 2 + 0.5
    flat[1] = 0.7  # a constant vector: variance 0, only eps keeps the division finite
    flat[2] = 0.003 * randn(42, 6)  # a variance of the order of eps (around 0: no cancellation in x - mean)
    inputs = [flat, randn(43, 2, 5, 6) * 1.5 - 0.4]
    check_module(submission, ln, "LayerNorm", {"emb_dim": 6}, inputs, what="LayerNorm output", hint=HINT_NORM,
                 seed=44, mistakes=lambda x: layer_norm_mistakes(ln, x))


# -- section 4.3: GELU and the feed-forward network ------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("GELU")
def test_gelu(submission):
    """GELU in the tanh approximation, values and gradients from -6 to 6."""
    inputs = [torch.linspace(-6, 6, 97).reshape(1, 97), randn(50, 2, 3, 7) * 2.5]
    gelu = ref.GELU()
    for index, x in enumerate(inputs):
        upstream = randn(51 + index, *x.shape)
        expected, _, expected_grad = reference_gradients(gelu, x, upstream)
        got = submission.run(run_module_with_gradients, class_name="GELU", init={}, state={}, x=x, upstream=upstream)
        out, x_grad = got.output, got.input_gradient
        label = f"GELU output, input of shape {tuple(x.shape)}"
        expect_close(out, expected, what=label, atol=1e-5, rtol=1e-5,
                     hint=lambda x=x, got=out: name_first_mistake(got, gelu_mistakes(x))
                     or "0.5 * x * (1 + torch.tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))).")
        expect_close(x_grad, expected_grad, what=f"{label}: gradient of the input", atol=1e-5, rtol=1e-5,
                     hint=HINT_GRADIENT)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gelu")
@pytest.mark.runs("FeedForward", "GELU")
def test_feed_forward(submission):
    """FeedForward: Linear to 4 * emb_dim, GELU, Linear back to emb_dim; outputs and gradients."""
    ff = reference_module(ref.FeedForward, 60, cfg=CFG)
    check_module(submission, ff, "FeedForward", {"cfg": CFG}, [randn(61, 2, 5, 12)], what="FeedForward output",
                 hint="return self.layers(x).", seed=62, mistakes=lambda x: feed_forward_mistakes(ff, x))


# -- section 4.4: shortcut connections ----------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.depends_on("test_gelu")
@pytest.mark.runs("ExampleDeepNeuralNetwork", "GELU")
def test_example_deep_neural_network(submission):
    """ExampleDeepNeuralNetwork: outputs and gradients, with and without shortcut connections.

    A layer's input is added to its output when use_shortcut is on and the shapes match."""
    cases = [([3, 3, 3, 3, 3, 1], True), ([3, 3, 3, 3, 3, 1], False), ([2, 4, 4, 4, 4, 4], True)]
    for index, (layer_sizes, use_shortcut) in enumerate(cases):
        init = {"layer_sizes": layer_sizes, "use_shortcut": use_shortcut}
        model = reference_module(ref.ExampleDeepNeuralNetwork, 70 + index, **init)

        def flipped(x, model=model, use_shortcut=use_shortcut):
            def compute():
                model.use_shortcut = not use_shortcut
                try:
                    return model(x)
                finally:
                    model.use_shortcut = use_shortcut
            return [(f"the network with use_shortcut={not use_shortcut}",
                     "add the shortcut (x = x + layer_output) only when self.use_shortcut is True.", compute)]

        check_module(submission, model, "ExampleDeepNeuralNetwork", init, [randn(75 + index, 2, layer_sizes[0])],
                     what=f"ExampleDeepNeuralNetwork(layer_sizes={layer_sizes}, use_shortcut={use_shortcut}) "
                          "output",
                     hint="run the layers in order; with use_shortcut, x = x + layer_output where "
                          "x.shape == layer_output.shape, else x = layer_output.",
                     seed=78 + index, mistakes=flipped)


# -- section 4.5: the transformer block ----------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.depends_on("test_layer_norm", "test_feed_forward")
@pytest.mark.runs(*BLOCK)
def test_transformer_block(submission):
    """TransformerBlock: outputs and gradients in eval mode, with and without qkv_bias.

    Pre-LayerNorm attention and feed-forward sub-blocks, each inside a shortcut connection."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        block = randomise_norms(reference_module(ref.TransformerBlock, 90 + index, cfg=cfg), 92 + index)
        x = 4 * randn(94 + index, 2, cfg["context_length"], cfg["emb_dim"])  # a variance far above eps
        check_module(submission, block, "TransformerBlock", {"cfg": cfg}, [x],
                     what=f"TransformerBlock output ({cfg['n_heads']} heads, qkv_bias={cfg['qkv_bias']})",
                     hint=HINT_BLOCK, seed=96 + index, mistakes=lambda x, block=block: block_mistakes(block, x),
                     composite=True)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_transformer_block")
@pytest.mark.runs(*BLOCK)
def test_transformer_block_dropout_in_training(submission):
    """TransformerBlock applies dropout to each sub-block's output, before the shortcut, in train mode only."""
    for drop_rate in (0.5, 0.0):
        cfg = dict(CFG, drop_rate=drop_rate)
        block = randomise_norms(reference_module(ref.TransformerBlock, 100, cfg=cfg), 101)
        x = 4 * randn(102, 2, 6, 12)
        with explain_errors(state_dict_mismatch):
            out_eval, out_train, replayed = submission.run(block_in_train_mode, cfg=cfg, state=block.state_dict(),
                                                           x=x)
        what = f"TransformerBlock with drop_rate={drop_rate}"
        with torch.no_grad():
            expected = block(x)
        expect_close(out_eval, expected, what=f"{what} in eval mode", hint=HINT_BLOCK)
        out_train = expect_tensor(out_train, what=f"{what} in train mode", shape=expected.shape)
        replayed = expect_tensor(replayed, what=f"{what} in train mode", shape=expected.shape)
        if drop_rate > 0:
            expect_true(bool((out_train - out_eval).abs().max() > 1e-3), what=f"{what} in train mode",
                        problem="the output equals the output in eval mode, so no dropout was applied.",
                        hint="apply self.drop_shortcut to the output of the attention and of the feed-forward "
                             "network, before adding the shortcut.")
            expect_close(out_train, replayed, what=f"{what} in train mode (seeded)",
                         hint="dropout goes on the output of each sub-block, before the shortcut is added: "
                              "x = self.drop_shortcut(self.att(self.norm1(x))) + shortcut, and the same for ff; "
                              "not on the sum, and not on the shortcut.")
        else:
            expect_close(out_train, out_eval, what=f"{what}, train vs eval mode",
                         hint="with drop_rate 0 the block must behave the same in train and eval mode.")


# -- section 4.6: the GPT model ------------------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.depends_on("test_transformer_block")
@pytest.mark.runs(*MODEL)
def test_gpt_model_logits(submission):
    """GPTModel: logits and gradients in eval mode, on inputs of context_length tokens, with and without qkv_bias.

    Token and position embeddings, the transformer blocks, the final LayerNorm and the output head."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        model = gpt_model(cfg, 110 + index)
        idx = randint(112 + index, cfg["vocab_size"], 2, cfg["context_length"])
        check_module(submission, model, "GPTModel", {"cfg": cfg}, [idx],
                     what=f"GPTModel logits ({cfg['n_layers']} blocks, qkv_bias={cfg['qkv_bias']})", hint=HINT_MODEL,
                     seed=114 + index, mistakes=lambda idx, model=model: model_mistakes(model, idx),
                     errors=(_position_ids_out_of_range,), composite=True)


def _position_ids_out_of_range(record) -> str | None:
    if record.kind is ErrorKind.RAISED and "index out of range" in record.message:
        return "positions are counted from 0 to num_tokens - 1: torch.arange(seq_len, device=in_idx.device)."
    return None


@pytest.mark.points(1)
@pytest.mark.runs(*MODEL)
def test_gpt_model_size(submission):
    """GPTModel has the book's parameters (counted on tiny configurations) and logits of the right shape.

    A separate output head without bias; (batch, num_tokens) token ids give (batch, num_tokens, vocab_size)
    logits."""
    for index, cfg in enumerate((CFG, CFG_BIAS)):
        model = ref.GPTModel(cfg)
        expected_count = sum(p.numel() for p in model.parameters())
        idx = randint(120 + index, cfg["vocab_size"], 3, cfg["context_length"])
        with explain_errors(_position_ids_out_of_range):
            count, shapes, logits_shape = submission.run(model_size, cfg=cfg, idx=idx)
        what = f"GPTModel with {cfg}"
        tied = model.out_head.weight.numel()
        expect_count(count, expected_count, what=f"number of parameters of {what}",
                     hint=("your output head shares the token embedding's weight (weight tying): the book keeps them "
                           "separate in this chapter (chapter 5 loads GPT-2's tied weights into both)."
                           if count == expected_count - tied else
                           "keep the __init__ the notebook gives (one output head without bias, n_layers blocks)."))
        expect_equal(shapes, {name: list(t.shape) for name, t in model.state_dict().items()},
                     what=f"the weights and buffers (state_dict) of {what}",
                     hint="keep the attribute names and layers of the __init__ the notebook gives.")
        expect_equal(logits_shape, [3, cfg["context_length"], cfg["vocab_size"]],
                     what=f"the shape of the logits of {what} for a batch of 3 inputs",
                     hint="return one row of vocab_size logits per input token: (batch, num_tokens, vocab_size).")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt_model_logits")
@pytest.mark.runs(*MODEL)
def test_gpt_model_shorter_input(submission):
    """GPTModel on inputs shorter than context_length (down to one token)."""
    model = gpt_model(CFG, 130)
    inputs = [randint(131, CFG["vocab_size"], 2, 5), randint(132, CFG["vocab_size"], 3, 1)]
    with explain_errors(state_dict_mismatch, shape_mismatch(HINT_POSITIONS), _position_ids_out_of_range):
        got = submission.run(run_module, class_name="GPTModel", init={"cfg": CFG}, state=model.state_dict(),
                             inputs=inputs)
    for idx, out in zip(inputs, got):
        with torch.no_grad():
            expected = model(idx)
        expect_close(out, expected, what=f"GPTModel logits, input of shape {tuple(idx.shape)}",
                     hint=lambda idx=idx, got=out: name_first_mistake(got, model_mistakes(model, idx))
                     or HINT_POSITIONS)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_layer_norm", "test_transformer_block")
@pytest.mark.runs(*MODEL)
def test_gpt_model_is_causal(submission):
    """GPTModel: the logits at a position do not depend on later tokens, and do depend on earlier ones."""
    model = gpt_model(dict(CFG, drop_rate=0.0), 140)
    idx = randint(141, CFG["vocab_size"], 2, CFG["context_length"])
    try:
        with explain_errors(_position_ids_out_of_range):
            expect_causal(submission, model, "GPTModel", {"cfg": dict(CFG, drop_rate=0.0)}, idx,
                          what="GPTModel logits", vocab_size=CFG["vocab_size"])
    except GradingFailure as failure:
        # The attention (chapter 3's, from the setup cell) is masked: the hint about masking does not fit here.
        raise GradingFailure(str(failure).replace(HINT_MASK, HINT_MODEL_CAUSAL)) from None


@pytest.mark.points(1)
@pytest.mark.depends_on("test_gpt_model_logits", "test_transformer_block_dropout_in_training")
@pytest.mark.runs(*MODEL)
def test_gpt_model_dropout_in_training(submission):
    """GPTModel applies drop_emb to the sum of token and position embeddings, in train mode only."""
    for drop_rate in (0.5, 0.0):
        cfg = dict(CFG, drop_rate=drop_rate)
        model = gpt_model(cfg, 150)
        idx = randint(151, cfg["vocab_size"], 2, 7)
        with explain_errors(state_dict_mismatch, shape_mismatch(HINT_POSITIONS), _position_ids_out_of_range):
            out_eval, out_train, replayed = submission.run(model_in_train_mode, cfg=cfg, state=model.state_dict(),
                                                           idx=idx)
        what = f"GPTModel with drop_rate={drop_rate}"
        with torch.no_grad():
            expected = model(idx)
        expect_close(out_eval, expected, what=f"{what} in eval mode", hint=HINT_MODEL)
        out_train = expect_tensor(out_train, what=f"{what} in train mode", shape=expected.shape)
        replayed = expect_tensor(replayed, what=f"{what} in train mode", shape=expected.shape)
        if drop_rate > 0:
            expect_close(out_train, replayed, what=f"{what} in train mode (seeded)",
                         hint="apply self.drop_emb to tok_embeds + pos_embeds, before the transformer blocks.")
        else:
            expect_close(out_train, out_eval, what=f"{what}, train vs eval mode",
                         hint="with drop_rate 0 the model must behave the same in train and eval mode.")


# -- section 4.7: generating text ----------------------------------------------------------------------------

TOY_VOCAB, TOY_EMB, TOY_CONTEXT = 23, 6, 16


# (prompt ids, max_new_tokens, context_size): batches of prompts, one token, no new token; then contexts shorter
# than prompt + new tokens, and a prompt already longer than the context.
GREEDY_CASES = [(randint(170, TOY_VOCAB, 3, 4), 6, TOY_CONTEXT), (randint(171, TOY_VOCAB, 1, 1), 3, TOY_CONTEXT),
                (randint(172, TOY_VOCAB, 2, 5), 0, TOY_CONTEXT)]
CROP_CASES = [(randint(180, TOY_VOCAB, 2, 3), 6, 5), (randint(181, TOY_VOCAB, 1, 9), 4, 6)]


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
    ("keeping the FIRST context_size tokens", "crop to the last ones: idx[:, -context_size:].", {"crop": "first"}),
    ("choosing from the logits of the first position", "the next token is predicted by the last position: "
     "logits[:, -1, :].", {"position": 0}),
]


def check_generation(submission, cases, *, what):
    weights = toy_weights()
    expected = generate_with_toy_model(ref, weights, cases)
    with explain_errors(_context_exceeded):
        got = submission.run(generate_with_toy_model, weights=weights, cases=cases)
    for (prompt, max_new_tokens, context_size), (ids, fed), (expected_ids, expected_fed) in zip(cases, got, expected):
        label = (f"{what}: a batch of {prompt.shape[0]} prompt(s) of {prompt.shape[1]} token(s), "
                 f"max_new_tokens={max_new_tokens}, context_size={context_size}")

        def diagnose(prompt=prompt, max_new_tokens=max_new_tokens, context_size=context_size, ids=ids):
            for description, fix, options in GENERATION_MISTAKES:
                mistaken = generate_with_toy_model(
                    SimpleNamespace(generate_text_simple=lambda m, i, n, c, o=options: generate_with(m, i, n, c, **o)),
                    weights, [(prompt, max_new_tokens, context_size)])[0][0]
                if isinstance(ids, torch.Tensor) and ids.shape == mistaken.shape and torch.equal(ids, mistaken):
                    return f"your ids are exactly what {description} gives: {fix}"
            if isinstance(ids, torch.Tensor) and tuple(ids.shape) == (prompt.shape[0], max_new_tokens):
                return "return the prompt followed by the new tokens: torch.cat((idx, idx_next), dim=1) each step."
            return ("append the argmax of the last position's logits, one token per step, max_new_tokens times "
                    "(greedy decoding: no sampling).")

        expect_equal(ids, expected_ids, what=f"token ids from {label}", hint=diagnose)
        expect_equal(fed, expected_fed, what=f"the number of tokens fed to the model at each step, {label}",
                     hint="call the model once per new token, on the (cropped) sequence so far.")


def _context_exceeded(record) -> str | None:
    if record.kind is ErrorKind.RAISED and "more than its context size" in record.message:
        return HINT_CROP
    return None


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
