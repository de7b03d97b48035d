"""Grader of chapter 3: coding attention mechanisms.

Every test builds the reference module from a seed, sends its weights (a state_dict) and seeded inputs to the
worker, where a probe loads them into the student's module of the same name and runs it; the outputs come back
and are compared here with the reference's. Causality and dropout are checked as properties of the student's
own outputs, so correct implementations written differently (einsum, scaled_dot_product_attention) pass.
"""

import pytest
import torch

from course.grading import ListOf, expect_close, expect_tensor, expect_true, probe
from reference import attention as ref

HINT_SCALE = "scale the attention scores by the square root of the key dimension (head_dim for several heads)."
HINT_MASK = ("a token must not attend to later tokens: fill the scores above the diagonal with -inf BEFORE the "
             "softmax, using self.mask cut to the number of tokens.")
HINT_EVAL = "in eval mode dropout must be off: use self.dropout (an nn.Dropout), not F.dropout(..., training=True)."


def rand(seed, *shape):
    """Seeded inputs, made on the CPU (the worker moves them to the grading device)."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def reference_module(cls, seed, **init):
    torch.manual_seed(seed)
    return cls(**init).eval()


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="inputs"))
def call_function(student, name, inputs):
    function = getattr(student, name)
    return [function(x) for x in inputs]


@probe(returns=ListOf(length="inputs"))
def run_module(student, class_name, init, state, inputs, train=False):
    module = getattr(student, class_name)(**init).to(DEVICE)
    module.load_state_dict(state)
    module.train(train)
    with torch.no_grad():
        return [module(x) for x in inputs]


@probe(returns=ListOf(length=2))
def run_train_and_eval(student, class_name, init, state, x):
    module = getattr(student, class_name)(**init).to(DEVICE)
    module.load_state_dict(state)
    with torch.no_grad():
        out_eval = module.eval()(x)
        torch.manual_seed(1)
        out_train = module.train()(x)
    return [out_eval, out_train]


# -- naming classic mistakes (trusted side) ---------------------------------------------------------------------

def attention_with(model, x, *, causal, scale="head_dim", softmax_dim=-1, out_proj=True):
    """The attention of `model` (the reference, with its weights) computed with or without a known mistake.

    Works for SelfAttention_v1/v2 (2-D inputs, no mask), CausalAttention and MultiHeadAttention.
    """
    batched = x.dim() == 3
    x = x if batched else x.unsqueeze(0)
    b, num_tokens, _ = x.shape
    project = lambda w: x @ w if isinstance(w, torch.nn.Parameter) else w(x)  # noqa: E731
    queries, keys, values = project(model.W_query), project(model.W_key), project(model.W_value)
    d_out = keys.shape[-1]
    num_heads = getattr(model, "num_heads", 1)
    head_dim = d_out // num_heads
    split = lambda t: t.view(b, num_tokens, num_heads, head_dim).transpose(1, 2)  # noqa: E731
    queries, keys, values = split(queries), split(keys), split(values)
    attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens)
    if causal:
        future = torch.triu(torch.ones(num_tokens, num_tokens, dtype=torch.bool), diagonal=1)
        attn_scores = attn_scores.masked_fill(future, -torch.inf)
    divisor = {"head_dim": head_dim, "d_out": d_out, None: 1}[scale]
    attn_weights = torch.softmax(attn_scores / divisor ** 0.5, dim=softmax_dim)
    context = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, d_out)
    if out_proj and hasattr(model, "out_proj"):
        context = model.out_proj(context)
    return context if batched else context[0]


# (what the output matches, the fix, the options of attention_with that reproduce it)
CLASSIC_MISTAKES = [
    ("attention without the causal mask", "fill the scores above the diagonal with -inf before the softmax.",
     {"causal": False}),
    ("scores scaled by sqrt(d_out) instead of sqrt(head_dim)", "divide by self.head_dim ** 0.5.",
     {"scale": "d_out"}),
    ("unscaled scores", "divide the scores by the square root of the key dimension before the softmax.",
     {"scale": None}),
    ("a softmax over the wrong dimension (dim=-2)", "normalise each row: torch.softmax(..., dim=-1).",
     {"softmax_dim": -2}),
    ("attention without the output projection", "return self.out_proj(context_vec).", {"out_proj": False}),
]


def diagnose(model, x, got, *, causal) -> str | None:
    """If the student's output equals a classic mistake's output, say which one (never the expected values)."""
    if not isinstance(got, torch.Tensor) or not got.is_floating_point():
        return None
    with torch.no_grad():
        for description, fix, options in CLASSIC_MISTAKES:
            if options.get("out_proj") is False and not hasattr(model, "out_proj"):
                continue
            mistaken = attention_with(model, x, **{"causal": causal, **options})
            if got.shape == mistaken.shape and torch.allclose(got.double(), mistaken.double(), atol=1e-4, rtol=1e-4):
                return f"your output is exactly what {description} gives: {fix}"
    return None


# -- helpers on the trusted side -------------------------------------------------------------------------------

def check_outputs(submission, cls, init, inputs, *, what, hint, seed=123):
    model = reference_module(cls, seed, **init)
    got = submission.run(run_module, class_name=cls.__name__, init=init, state=model.state_dict(), inputs=inputs)
    causal = "context_length" in init
    can_diagnose = cls is not ref.MultiHeadAttentionWrapper  # the wrapper's mistakes live in CausalAttention
    with torch.no_grad():
        for index, x in enumerate(inputs):
            # On failure only: name the classic mistake the output matches, else give the generic hint.
            named_or_generic = (lambda x=x, candidate=got[index]:
                                (can_diagnose and diagnose(model, x, candidate, causal=causal)) or hint)
            expect_close(got[index], model(x), what=f"{what}, input of shape {tuple(x.shape)}",
                         hint=named_or_generic)


def check_causal(submission, cls, init, *, what):
    """Changing the last tokens must leave the outputs at earlier positions unchanged."""
    model = reference_module(cls, 7, **init)
    x1 = rand(20, 2, init["context_length"], init["d_in"])
    x2 = x1.clone()
    x2[:, -2:] = rand(21, 2, 2, init["d_in"])
    out1, out2 = submission.run(run_module, class_name=cls.__name__, init=init, state=model.state_dict(),
                                inputs=[x1, x2])
    shape = (2, init["context_length"], model(x1).shape[-1])
    out1 = expect_tensor(out1, what=what, shape=shape)
    out2 = expect_tensor(out2, what=what, shape=shape)
    expect_close(out2[:, :-2], out1[:, :-2], atol=1e-5, rtol=1e-5,
                 what=f"{what}: outputs at positions 0..{shape[1] - 3} after changing only the last two tokens",
                 hint=HINT_MASK)
    expect_true(bool((out2[:, -2:] - out1[:, -2:]).abs().max() > 1e-4), what=what,
                problem="the outputs of the changed tokens did not change at all.",
                hint="each token's output must depend on its own input.")


def check_dropout(submission, cls, init, *, what):
    """Train mode with dropout > 0 must differ from eval mode; with dropout 0 they must agree."""
    x = rand(30, 2, init["context_length"], init["d_in"])
    for dropout in (0.5, 0.0):
        config = dict(init, dropout=dropout)
        model = reference_module(cls, 8, **config)
        out_eval, out_train = submission.run(run_train_and_eval, class_name=cls.__name__, init=config,
                                             state=model.state_dict(), x=x)
        shape = tuple(model(x).shape)
        out_eval = expect_tensor(out_eval, what=f"{what} in eval mode", shape=shape)
        out_train = expect_tensor(out_train, what=f"{what} in train mode", shape=shape)
        difference = (out_train - out_eval).abs().max().item()
        if dropout > 0:
            expect_true(difference > 1e-3, what=f"{what} with dropout={dropout}",
                        problem="the output in train mode equals the output in eval mode, so no dropout was applied.",
                        hint="apply self.dropout to the attention weights after the softmax.")
        else:
            expect_close(out_train, out_eval, what=f"{what} with dropout=0.0, train vs eval mode",
                         hint="with dropout 0 the module must behave the same in train and eval mode.")


# -- section 3.3: attention without trainable weights --------------------------------------------------------

@pytest.mark.points(1)
def test_simplified_self_attention(submission):
    """simplified_self_attention: context vectors from dot-product scores and a softmax."""
    inputs = [rand(1, 6, 3), rand(2, 4, 5)]
    got = submission.run(call_function, name="simplified_self_attention", inputs=inputs)
    for index, x in enumerate(inputs):
        expect_close(got[index], ref.simplified_self_attention(x),
                     what=f"context vectors for inputs of shape {tuple(x.shape)}",
                     hint="scores = inputs @ inputs.T, weights = softmax over the last dim, context = weights @ inputs.")


# -- section 3.4: self-attention with trainable weights ------------------------------------------------------

@pytest.mark.points(1)
def test_self_attention_v1(submission):
    """SelfAttention_v1: queries, keys and values from weight matrices, scaled dot-product attention."""
    check_outputs(submission, ref.SelfAttention_v1, {"d_in": 3, "d_out": 2}, [rand(3, 6, 3), rand(4, 3, 3)],
                  what="SelfAttention_v1 output",
                  hint="scores = queries @ keys.T (one row per query); " + HINT_SCALE)


@pytest.mark.points(1)
def test_self_attention_v2(submission):
    """SelfAttention_v2: the same with nn.Linear layers, with and without qkv_bias."""
    for qkv_bias in (False, True):
        check_outputs(submission, ref.SelfAttention_v2, {"d_in": 4, "d_out": 3, "qkv_bias": qkv_bias},
                      [rand(5, 6, 4)], what=f"SelfAttention_v2 output (qkv_bias={qkv_bias})", hint=HINT_SCALE)


# -- section 3.5: causal attention ---------------------------------------------------------------------------

CAUSAL = {"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.5}


@pytest.mark.points(2)
def test_causal_attention_output(submission):
    """CausalAttention on a batch, in eval mode (dropout off), with and without qkv_bias."""
    for qkv_bias in (False, True):
        check_outputs(submission, ref.CausalAttention, dict(CAUSAL, qkv_bias=qkv_bias), [rand(6, 2, 6, 3)],
                      what=f"CausalAttention output (qkv_bias={qkv_bias})",
                      hint=f"{HINT_MASK} And {HINT_EVAL}")


@pytest.mark.points(1)
def test_causal_attention_is_causal(submission):
    """CausalAttention: no position attends to a later one."""
    check_causal(submission, ref.CausalAttention, dict(CAUSAL, dropout=0.0), what="CausalAttention")


@pytest.mark.points(1)
def test_causal_attention_shorter_input(submission):
    """CausalAttention on inputs shorter than context_length."""
    check_outputs(submission, ref.CausalAttention, dict(CAUSAL, context_length=10), [rand(7, 2, 4, 3), rand(8, 1, 1, 3)],
                  what="CausalAttention output",
                  hint="cut the mask to the number of tokens: self.mask.bool()[:num_tokens, :num_tokens].")


@pytest.mark.points(1)
def test_causal_attention_dropout_in_training(submission):
    """CausalAttention applies dropout to the attention weights in train mode only."""
    check_dropout(submission, ref.CausalAttention, CAUSAL, what="CausalAttention")


# -- section 3.6: multi-head attention -----------------------------------------------------------------------

@pytest.mark.points(2)
def test_wrapper_output(submission):
    """MultiHeadAttentionWrapper stacks the heads' outputs along the last dimension."""
    init = {"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.2, "num_heads": 3}
    check_outputs(submission, ref.MultiHeadAttentionWrapper, init, [rand(9, 2, 6, 3)],
                  what="MultiHeadAttentionWrapper output (3 heads of width 2)",
                  hint="run every head of self.heads (your CausalAttention: if its tests fail, fix those first) "
                       "and concatenate their outputs with torch.cat(..., dim=-1): (b, num_tokens, num_heads * d_out).")


MHA_CONFIGS = [
    {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.3, "num_heads": 2},
    {"d_in": 5, "d_out": 12, "context_length": 8, "dropout": 0.0, "num_heads": 3, "qkv_bias": True},
    {"d_in": 4, "d_out": 4, "context_length": 5, "dropout": 0.1, "num_heads": 1},
]


@pytest.mark.points(3)
def test_mha_output(submission):
    """MultiHeadAttention on batches, for several head counts, widths and the qkv_bias switch (eval mode)."""
    for index, init in enumerate(MHA_CONFIGS):
        x = rand(10 + index, 2, init["context_length"], init["d_in"])
        check_outputs(submission, ref.MultiHeadAttention, init, [x],
                      what=f"MultiHeadAttention output ({init['num_heads']} heads, d_out={init['d_out']})",
                      hint="split d_out into num_heads heads of head_dim with .view(b, num_tokens, "
                           "num_heads, head_dim).transpose(1, 2), and combine them back the same way before "
                           "out_proj; " + HINT_SCALE)


@pytest.mark.points(1)
def test_mha_is_causal(submission):
    """MultiHeadAttention: no position attends to a later one."""
    init = {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.0, "num_heads": 2}
    check_causal(submission, ref.MultiHeadAttention, init, what="MultiHeadAttention")


@pytest.mark.points(1)
def test_mha_shorter_input(submission):
    """MultiHeadAttention on inputs shorter than context_length."""
    init = {"d_in": 6, "d_out": 6, "context_length": 12, "dropout": 0.2, "num_heads": 3}
    check_outputs(submission, ref.MultiHeadAttention, init, [rand(14, 2, 5, 6), rand(15, 3, 1, 6)],
                  what="MultiHeadAttention output",
                  hint="cut the mask to the number of tokens: self.mask.bool()[:num_tokens, :num_tokens].")


@pytest.mark.points(1)
def test_mha_dropout_in_training(submission):
    """MultiHeadAttention applies dropout to the attention weights in train mode only."""
    init = {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.5, "num_heads": 2}
    check_dropout(submission, ref.MultiHeadAttention, init, what="MultiHeadAttention")
