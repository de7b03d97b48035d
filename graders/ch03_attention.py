"""Grader of chapter 3: coding attention mechanisms.

Every test builds the reference module from a seed, sends its weights (a state_dict) and seeded inputs to the
worker, where a generic probe loads them into the student's module of the same name and runs it; the outputs
come back and are compared here with the reference's. Causality and dropout are checked as properties of the
student's own outputs (so einsum or scaled_dot_product_attention pass), together with the demand that every
output depends on the earlier tokens, so that code without attention cannot earn them.

MultiHeadAttentionWrapper is graded on correct CausalAttention heads (probe_kit/gpt_parts.py, declared with
@pytest.mark.stand_ins): a bug in CausalAttention costs only CausalAttention's tests. Beyond the book's
examples, the tests probe large attention scores (a softmax written by hand overflows), a single token, a
batch of one, and inputs shorter than the context.
"""

import pytest
import torch

from checks.ch03_attention import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import Mistake, expect_close
from course.grading.diagnosis import explain_errors, shape_mismatch, state_dict_mismatch
from course.grading.inputs import rand, reference_module
from course.grading.probes import call_function, run_module
from course.grading.properties import expect_causal, expect_dropout_in_training_only, expect_module_outputs
from reference import attention as ref

HINT_SCALE = ("divide the attention scores by the square root of the key dimension before the softmax (head_dim "
              "for several heads): scaled dot-product attention, section 3.4.")
HINT_MASK_CUT = ("the mask buffer is built for context_length tokens, and an input may have fewer: use only its "
                 "top-left num_tokens x num_tokens corner (section 3.5).")
HINT_OVERFLOW = ("for large scores, exp overflows to inf and inf / inf is NaN: use torch.softmax, which subtracts "
                 "each row's maximum first (the book's softmax_naive is only for small scores).")


# -- naming classic mistakes (trusted side) ---------------------------------------------------------------------

def attention_with(model, x, *, causal, scale="head_dim", softmax_dim=-1, out_proj=True):
    """The attention of `model` (the reference, with its weights) computed with or without a known mistake.

    Works for SelfAttention_v1/v2 (2-D inputs, no mask), CausalAttention and MultiHeadAttention.
    """
    if not out_proj and not hasattr(model, "out_proj"):
        raise ValueError("this attention has no output projection to leave out")
    batched = x.dim() == 3
    x = x if batched else x.unsqueeze(0)
    b, num_tokens, _ = x.shape

    def project(weight):
        return x @ weight if isinstance(weight, torch.nn.Parameter) else weight(x)

    queries, keys, values = project(model.W_query), project(model.W_key), project(model.W_value)
    d_out = keys.shape[-1]
    num_heads = getattr(model, "num_heads", 1)
    head_dim = d_out // num_heads

    def split(t):
        return t.view(b, num_tokens, num_heads, head_dim).transpose(1, 2)

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


CLASSIC_MISTAKES = [
    Mistake("attention without the causal mask", "fill the scores above the diagonal with -inf before the softmax.",
            causal=False),
    Mistake("scores scaled by sqrt(d_out) instead of sqrt(head_dim)", "divide by self.head_dim ** 0.5.", scale="d_out"),
    Mistake("unscaled scores", "divide the scores by the square root of the key dimension before the softmax.",
            scale=None),
    Mistake("a softmax over the wrong dimension (dim=-2)", "normalise each row of the scores (one query's scores "
            "against every key): the softmax goes over the last dimension.", softmax_dim=-2),
    Mistake("attention without the output projection", "pass the heads' combined context vectors through "
            "self.out_proj before returning them.", out_proj=False),
]


def check_outputs(submission, cls, init, inputs, *, what, hint, seed=123, mistakes=CLASSIC_MISTAKES, errors=()):
    """The student's class against the reference built from `seed`; a wrong output is compared with the
    reference's attention recomputed with each classic mistake (causal when the class has a context_length)."""
    model = reference_module(cls, seed, **init)
    causal = "context_length" in init
    expect_module_outputs(submission, model, cls.__name__, init, inputs, what=what, hint=hint, errors=errors,
                          mistakes=mistakes,
                          mistaken=lambda x, **change: attention_with(model, x, **{"causal": causal, **change}))


def check_causal(submission, cls, init, *, what):
    model = reference_module(cls, 7, **init)
    expect_causal(submission, model, cls.__name__, init, rand(20, 2, init["context_length"], init["d_in"]),
                  what=what)


def check_dropout(submission, cls, init, *, what):
    x = rand(30, 2, init["context_length"], init["d_in"])
    expect_dropout_in_training_only(submission, lambda p: reference_module(cls, 8, **dict(init, dropout=p)),
                                    cls.__name__, lambda p: dict(init, dropout=p), x, what=what)


# -- section 3.3: attention without trainable weights --------------------------------------------------------

def overflow_or(hint, got):
    """HINT_OVERFLOW for a result with NaN or infinite values (a softmax by hand on large scores), else `hint`."""
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not bool(torch.isfinite(got).all()):
        return HINT_OVERFLOW
    return hint


@pytest.mark.points(1)
@pytest.mark.runs("simplified_self_attention")
def test_simplified_self_attention(submission):
    """simplified_self_attention: context vectors from dot-product scores and a softmax, large scores included."""
    inputs = [rand(1, 6, 3), rand(2, 4, 5), 2 * rand(3, 5, 4) + 4, rand(4, 1, 3)]  # scores over 64; one token
    got = submission.run(call_function, name="simplified_self_attention", inputs=inputs)
    for x, context in zip(inputs, got):
        expect_close(context, ref.simplified_self_attention(x),
                     what=f"context vectors for inputs of shape {tuple(x.shape)}",
                     hint=overflow_or("section 3.3: the scores are the dot products of every token with every "
                                      "token, the weights their softmax over each row (dim=-1), and the context "
                                      "vectors the weights times the inputs.", context))


# -- section 3.4: self-attention with trainable weights ------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("SelfAttention_v1")
def test_self_attention_v1(submission):
    """SelfAttention_v1: queries, keys and values from weight matrices, scaled dot-product attention."""
    check_outputs(submission, ref.SelfAttention_v1, {"d_in": 3, "d_out": 2}, [rand(3, 6, 3), rand(4, 3, 3)],
                  what="SelfAttention_v1 output",
                  hint="the scores pair every query (one row each) with every key (the keys transposed); "
                       + HINT_SCALE)


@pytest.mark.points(1)
@pytest.mark.runs("SelfAttention_v2")
def test_self_attention_v2(submission):
    """SelfAttention_v2: the same with nn.Linear layers, with and without qkv_bias."""
    for qkv_bias in (False, True):
        check_outputs(submission, ref.SelfAttention_v2, {"d_in": 4, "d_out": 3, "qkv_bias": qkv_bias},
                      [rand(5, 6, 4)], what=f"SelfAttention_v2 output (qkv_bias={qkv_bias})", hint=HINT_SCALE)


# -- section 3.5: causal attention ---------------------------------------------------------------------------

CAUSAL = {"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.5}


@pytest.mark.points(2)
@pytest.mark.runs("CausalAttention")
def test_causal_attention_output(submission):
    """CausalAttention on a batch, in eval mode (dropout off), with and without qkv_bias."""
    for qkv_bias in (False, True):
        check_outputs(submission, ref.CausalAttention, dict(CAUSAL, qkv_bias=qkv_bias), [rand(6, 2, 6, 3)],
                      what=f"CausalAttention output (qkv_bias={qkv_bias})",
                      hint="a token attends to itself and earlier tokens only (mask the scores above the "
                           "diagonal with -inf before the softmax), and dropout is off in eval mode.")


@pytest.mark.points(1)
@pytest.mark.runs("CausalAttention")
def test_causal_attention_is_causal(submission):
    """CausalAttention: no position attends to a later one, and every position attends to the earlier ones."""
    check_causal(submission, ref.CausalAttention, dict(CAUSAL, dropout=0.0), what="CausalAttention")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_causal_attention_output")
@pytest.mark.runs("CausalAttention")
def test_causal_attention_shorter_input(submission):
    """CausalAttention on inputs shorter than context_length."""
    check_outputs(submission, ref.CausalAttention, dict(CAUSAL, context_length=10),
                  [rand(7, 2, 4, 3), rand(8, 1, 1, 3)], what="CausalAttention output",
                  hint="inputs may have fewer tokens than context_length.", errors=(shape_mismatch(HINT_MASK_CUT),))


@pytest.mark.points(1)
@pytest.mark.runs("CausalAttention")
def test_causal_attention_dropout_in_training(submission):
    """CausalAttention applies dropout to the attention weights in train mode only."""
    check_dropout(submission, ref.CausalAttention, CAUSAL, what="CausalAttention")


# -- section 3.6: multi-head attention -----------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("MultiHeadAttentionWrapper")
@pytest.mark.stand_ins("CausalAttention")
def test_wrapper_output(submission):
    """MultiHeadAttentionWrapper stacks the heads' outputs along the last dimension, for a batch and a batch of one.

    Run with correct CausalAttention heads in place of yours."""
    init = {"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.2, "num_heads": 3}
    model = reference_module(ref.MultiHeadAttentionWrapper, 123, **init)
    inputs = [rand(9, 2, 6, 3), rand(16, 1, 4, 3)]
    with explain_errors(state_dict_mismatch):
        got = submission.run(run_module, stand_ins=("CausalAttention",), kit="gpt_parts",
                             class_name="MultiHeadAttentionWrapper", init=init, state=model.state_dict(),
                             inputs=inputs)
    for x, out in zip(inputs, got):
        with torch.no_grad():
            expected = model(x)
        expect_close(out, expected, what=f"MultiHeadAttentionWrapper output (3 heads of width 2), input of shape "
                     f"{tuple(x.shape)}", hint="section 3.6.1: run every head of self.heads on x, in order, and put "
                     "their outputs side by side along the LAST dimension (the features): (b, num_tokens, num_heads "
                     "* d_out).")


MHA_CONFIGS = [
    {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.3, "num_heads": 2},
    {"d_in": 5, "d_out": 12, "context_length": 8, "dropout": 0.0, "num_heads": 3, "qkv_bias": True},
    {"d_in": 4, "d_out": 4, "context_length": 5, "dropout": 0.1, "num_heads": 1},
]


@pytest.mark.points(3)
@pytest.mark.runs("MultiHeadAttention")
def test_mha_output(submission):
    """MultiHeadAttention on batches, for several head counts, widths and the qkv_bias switch (eval mode)."""
    for index, init in enumerate(MHA_CONFIGS):
        x = rand(10 + index, 2, init["context_length"], init["d_in"])
        check_outputs(submission, ref.MultiHeadAttention, init, [x],
                      what=f"MultiHeadAttention output ({init['num_heads']} heads, d_out={init['d_out']})",
                      hint="section 3.6.2: split the last dimension (d_out) into num_heads heads of head_dim "
                           "features, move the heads in front of the tokens so that each head attends on its own, "
                           "and undo both steps before out_proj; " + HINT_SCALE)


@pytest.mark.points(1)
@pytest.mark.runs("MultiHeadAttention")
def test_mha_is_causal(submission):
    """MultiHeadAttention: no position attends to a later one, and every position attends to the earlier ones."""
    init = {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.0, "num_heads": 2}
    check_causal(submission, ref.MultiHeadAttention, init, what="MultiHeadAttention")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_mha_output")
@pytest.mark.runs("MultiHeadAttention")
def test_mha_shorter_input(submission):
    """MultiHeadAttention on inputs shorter than context_length."""
    init = {"d_in": 6, "d_out": 6, "context_length": 12, "dropout": 0.2, "num_heads": 3}
    check_outputs(submission, ref.MultiHeadAttention, init, [rand(14, 2, 5, 6), rand(15, 3, 1, 6)],
                  what="MultiHeadAttention output", hint="inputs may have fewer tokens than context_length.",
                  errors=(shape_mismatch(HINT_MASK_CUT),))


@pytest.mark.points(1)
@pytest.mark.runs("MultiHeadAttention")
def test_mha_dropout_in_training(submission):
    """MultiHeadAttention applies dropout to the attention weights in train mode only."""
    init = {"d_in": 6, "d_out": 4, "context_length": 6, "dropout": 0.5, "num_heads": 2}
    check_dropout(submission, ref.MultiHeadAttention, init, what="MultiHeadAttention")
