"""Public checks of chapter 3 (coding attention mechanisms), one per hidden grader test.

The worked examples are the notebook's own: the book's six-token input "Your journey starts with one step",
the book's seeds (123 and 789), and the outputs the book prints for them (to four decimals), which the
notebook invites students to compare with. Causality, shorter inputs and dropout are checked as the
notebook's demos do. The wrapper's check runs it on simple linear heads, so that a slip in CausalAttention
fails CausalAttention's checks only, as in the hidden grader. The hidden grader uses other inputs, sizes and
head counts, and more properties.
"""

import torch
from torch import nn

from checks import Checks, Class, Function, Interface, expect_close, expect_finite, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("simplified_self_attention", "(inputs)"),
    Class("SelfAttention_v1", "(d_in, d_out)", example={"d_in": 3, "d_out": 2},
          attributes=("W_query", "W_key", "W_value"), methods={"forward": "(x)"}),
    Class("SelfAttention_v2", "(d_in, d_out, qkv_bias=False)", example={"d_in": 3, "d_out": 2},
          attributes=("W_query", "W_key", "W_value"), methods={"forward": "(x)"}),
    Class("CausalAttention", "(d_in, d_out, context_length, dropout, qkv_bias=False)",
          example={"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.0},
          attributes=("d_out", "W_query", "W_key", "W_value", "dropout", "mask"), methods={"forward": "(x)"}),
    Class("MultiHeadAttentionWrapper", "(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)",
          example={"d_in": 3, "d_out": 2, "context_length": 6, "dropout": 0.0, "num_heads": 2},
          attributes=("heads",), methods={"forward": "(x)"}),
    Class("MultiHeadAttention", "(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)",
          example={"d_in": 4, "d_out": 4, "context_length": 6, "dropout": 0.0, "num_heads": 2},
          attributes=("d_out", "num_heads", "head_dim", "W_query", "W_key", "W_value", "out_proj", "dropout",
                      "mask"), methods={"forward": "(x)"}),
)

CHECKS = Checks("ch03_attention", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

# "Your journey starts with one step": one 3-dimensional embedding per token, shape (6, 3).
INPUTS = [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
          [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]]

# What the book prints for them (one batch element where the book uses a batch of two copies).
BOOK_SIMPLIFIED = [[0.4421, 0.5931, 0.5790], [0.4419, 0.6515, 0.5683], [0.4431, 0.6496, 0.5671],
                   [0.4304, 0.6298, 0.5510], [0.4671, 0.5910, 0.5266], [0.4177, 0.6503, 0.5645]]
BOOK_V1_SEED_123 = [[0.2996, 0.8053], [0.3061, 0.8210], [0.3058, 0.8203],
                    [0.2948, 0.7939], [0.2927, 0.7891], [0.2990, 0.8040]]
BOOK_V2_SEED_789 = [[-0.0739, 0.0713], [-0.0748, 0.0703], [-0.0749, 0.0702],
                    [-0.0760, 0.0685], [-0.0763, 0.0679], [-0.0754, 0.0693]]
BOOK_CAUSAL_SEED_123 = [[-0.4519, 0.2216], [-0.5874, 0.0058], [-0.6300, -0.0632],
                        [-0.5675, -0.0843], [-0.5526, -0.0981], [-0.5299, -0.1081]]
BOOK_MHA_SEED_123 = [[0.3190, 0.4858], [0.2943, 0.3897], [0.2856, 0.3593],
                     [0.2693, 0.3873], [0.2639, 0.3928], [0.2575, 0.4028]]

SEED_NOTE = ("(The module is built right after torch.manual_seed(seed), as in the book, so its weights are the "
             "book's: keep the __init__ the notebook gave you.)")
HINT_SIMPLIFIED = ("section 3.3: the scores are the dot products of every token with every token, the weights their "
                   "softmax over each row (dim=-1), and the context vectors the weights times the inputs.")
HINT_ATTENTION = ("compare your forward with the steps the notebook describes (section 3.4): every query against "
                  "every key, the scores divided by the square root of the key dimension, a softmax over the last "
                  "dimension, then the weights times the values. " + SEED_NOTE)
HINT_CAUSAL = ("section 3.5: mask the scores above the diagonal with -inf before the softmax (the mask cut to "
               "num_tokens), scale by the square root of the key dimension, apply self.dropout to the weights. "
               + SEED_NOTE)
HINT_WRAPPER = ("section 3.6.1: run every head of self.heads on x, in order, and put their outputs side by side along "
                "the last dimension. " + SEED_NOTE)
HINT_MHA = ("section 3.6.2: split the last dimension (d_out) into num_heads heads of head_dim features, move the "
            "heads in front of the tokens, mask, scale by the square root of head_dim, softmax, undo both steps to "
            "combine the heads, and apply self.out_proj. " + SEED_NOTE)
HINT_MASK_CUT = ("inputs may be shorter than context_length: the mask buffer is built for context_length tokens, so "
                 "use only its top-left num_tokens x num_tokens corner.")
HINT_BUFFER = ("keep the __init__ line that registers the mask with self.register_buffer: a buffer is saved in the "
               "state_dict (the grader loads your module's weights and mask through it) and moves with the module "
               "to the GPU; a plain attribute does neither.")
HINT_EVAL_DROPOUT = ("dropout must do nothing in eval mode: apply the module's nn.Dropout layer, self.dropout (which "
                     "model.eval() switches off), not torch.nn.functional.dropout with training=True.")


def inputs():
    return torch.tensor(INPUTS)  # (6, 3)


def batch():
    return torch.stack((inputs(), inputs()), dim=0)  # (2, 6, 3)


def book_module(ns, name, seed, *args, **kwargs):
    """The student's module built as the book does: torch.manual_seed(seed) first, then in eval mode."""
    torch.manual_seed(seed)
    module = ns[name](*args, **kwargs)
    require(isinstance(module, nn.Module), f"{name}(...) is not a torch.nn.Module.",
                "keep `class ...(nn.Module)` and the super().__init__() call of the notebook.")
    return module.eval()


def expect_mask_buffer(module, name):
    """The causal mask is a registered buffer, so that it is in the module's state_dict."""
    require("mask" in dict(module.named_buffers()), f"{name}: `mask` is not among the module's buffers, so it is "
            "missing from its state_dict.", HINT_BUFFER)


def expect_no_dropout_in_eval(ns, name, args, kwargs, book, shape):
    """Built with dropout 0.5 right after the book's seed (dropout has no weights: the same weights as with 0.0), the
    module in eval mode must still give the book's output."""
    module = book_module(ns, name, 123, *args, 0.5, **kwargs)
    got = output(module, batch())
    what = f"{name}(dropout=0.5) in eval mode on the book's batch"
    expect_shape(got, shape, what, "one context vector per token (and per batch element).")
    expect_close(got[0], book, f"{what}, compared with the book's printout (dropout 0.0)", HINT_EVAL_DROPOUT)


def output(module, x):
    with torch.no_grad():
        return module(x)


def expect_book_output(got, book, what, shape, hint):
    expect_shape(got, shape, what, "one context vector per token (and per batch element).")
    expect_finite(got, what)
    for index in range(got.shape[0] if got.dim() == 3 else 1):
        row = got[index] if got.dim() == 3 else got
        label = f"{what}, batch element {index}" if got.dim() == 3 else what
        expect_close(row, book, f"{label}, compared with the book's printout", hint)


def expect_causal(module, name):
    """The notebook's demo: changing the last token leaves the earlier tokens' context vectors as they were."""
    x = batch()
    changed = x.clone()
    changed[:, -1] = torch.tensor([9.0, -9.0, 9.0])
    before, after = output(module, x), output(module, changed)
    expect_shape(after, tuple(before.shape), f"{name} output", "")
    difference = float((after[:, :-1] - before[:, :-1]).abs().max())
    require(difference < 1e-5, f"{name}: changing the last token changed the context vectors of earlier "
                f"tokens (by up to {difference:.4f}): they attend to a later token.",
                "fill the scores above the diagonal with -inf (the mask) before the softmax.")


def expect_shorter_input(module, name, d_out):
    full = output(module, batch())
    short = output(module, batch()[:, :4])
    what = f"{name} on 4 tokens (context_length 6)"
    expect_shape(short, (2, 4, d_out), what, "one context vector per input token.")
    expect_finite(short, what)
    difference = float((short - full[:, :4]).abs().max()) if full.shape[1:] == (6, d_out) else 0.0
    require(difference < 1e-5, f"{what}: the context vectors differ from the first 4 of the 6-token input's "
                f"(by up to {difference:.4f}), although a causal module never looks ahead.", HINT_MASK_CUT)


def expect_dropout_in_training(ns, name, *args, **kwargs):
    module = book_module(ns, name, 123, *args, dropout=0.5, **kwargs)
    x = batch()
    first = output(module, x)  # (dropout left on in eval mode fails the output's check, as in the hidden grader)
    module.train()
    torch.manual_seed(123)
    trained = output(module, x)
    require(not torch.allclose(trained, first), f"{name}(dropout=0.5) in train mode gives the same output as "
                "in eval mode: no dropout is applied.", "apply self.dropout to the attention weights.")


# -- section 1: simplified self-attention -------------------------------------------------------------------

@CHECKS.register("test_simplified_self_attention", subject="simplified_self_attention", error_hint=HINT_SIMPLIFIED,
                 description="simplified_self_attention on the book's input gives the book's context vectors, and "
                             "finite ones for the input times 10 (large scores)")
def check_simplified_self_attention(ns):
    got = ns["simplified_self_attention"](inputs())
    what = "simplified_self_attention(inputs)"
    expect_shape(got, (6, 3), what, "one context vector per token, as wide as the input.")
    expect_finite(got, what)
    expect_close(got, BOOK_SIMPLIFIED, f"{what}, compared with the book's printout", HINT_SIMPLIFIED)
    large = ns["simplified_self_attention"](10 * inputs())  # scores up to about 150: exp overflows float32
    expect_shape(large, (6, 3), "simplified_self_attention(10 * inputs)", "one context vector per token.")
    require(bool(torch.isfinite(large).all()), "simplified_self_attention(10 * inputs) contains NaN or infinite "
            "values, although every context vector is a weighted average of the (finite) inputs.",
            "for large scores, exp overflows to inf and inf / inf is NaN: use torch.softmax, which subtracts each "
            "row's maximum first (the book's softmax_naive is only for small scores).")


# -- sections 2 and 3: trainable weights --------------------------------------------------------------------

@CHECKS.register("test_self_attention_v1", subject="SelfAttention_v1", error_hint=HINT_ATTENTION,
                 description="SelfAttention_v1(3, 2) with the book's seed 123 gives the book's output")
def check_self_attention_v1(ns):
    module = book_module(ns, "SelfAttention_v1", 123, 3, 2)
    for name in ("W_query", "W_key", "W_value"):
        weight = getattr(module, name, None)
        require(isinstance(weight, nn.Parameter) and tuple(weight.shape) == (3, 2),
                    f"SelfAttention_v1(3, 2).{name} is not an nn.Parameter of shape (3, 2).",
                    "keep the __init__ the notebook gave you.")
    expect_book_output(output(module, inputs()), BOOK_V1_SEED_123, "SelfAttention_v1(3, 2)", (6, 2),
                       HINT_ATTENTION)


@CHECKS.register("test_self_attention_v2", subject="SelfAttention_v2", error_hint=HINT_ATTENTION,
                 description="SelfAttention_v2(3, 2) with the book's seed 789 gives the book's output")
def check_self_attention_v2(ns):
    module = book_module(ns, "SelfAttention_v2", 789, 3, 2)
    for name in ("W_query", "W_key", "W_value"):
        require(isinstance(getattr(module, name, None), nn.Linear),
                    f"SelfAttention_v2(3, 2).{name} is not an nn.Linear layer.",
                    "keep the __init__ the notebook gave you.")
    expect_book_output(output(module, inputs()), BOOK_V2_SEED_789, "SelfAttention_v2(3, 2)", (6, 2),
                       HINT_ATTENTION)


# -- section 4: causal attention ------------------------------------------------------------------------------

@CHECKS.register("test_causal_attention_output", subject="CausalAttention", error_hint=HINT_CAUSAL,
                 description="CausalAttention(3, 2, 6, 0.0) with seed 123 gives the book's output on a batch, and so "
                             "does dropout 0.5 in eval mode; its mask is a buffer")
def check_causal_attention_output(ns):
    module = book_module(ns, "CausalAttention", 123, 3, 2, 6, 0.0)
    expect_mask_buffer(module, "CausalAttention(3, 2, 6, 0.0)")
    expect_book_output(output(module, batch()), BOOK_CAUSAL_SEED_123,
                       "CausalAttention(3, 2, 6, 0.0) on a batch of two copies", (2, 6, 2), HINT_CAUSAL)
    expect_no_dropout_in_eval(ns, "CausalAttention", (3, 2, 6), {}, BOOK_CAUSAL_SEED_123, (2, 6, 2))


@CHECKS.register("test_causal_attention_is_causal", subject="CausalAttention", error_hint=HINT_CAUSAL,
                 description="changing the last token leaves CausalAttention's earlier outputs unchanged; its mask "
                             "is a buffer")
def check_causal_attention_is_causal(ns):
    module = book_module(ns, "CausalAttention", 123, 3, 2, 6, 0.0)
    expect_mask_buffer(module, "CausalAttention(3, 2, 6, 0.0)")
    expect_causal(module, "CausalAttention")


@CHECKS.register("test_causal_attention_shorter_input", subject="CausalAttention", error_hint=HINT_MASK_CUT,
                 description="CausalAttention works on 4 tokens with context_length 6")
def check_causal_attention_shorter_input(ns):
    expect_shorter_input(book_module(ns, "CausalAttention", 123, 3, 2, 6, 0.0), "CausalAttention", 2)


@CHECKS.register("test_causal_attention_dropout_in_training", subject="CausalAttention", error_hint=HINT_CAUSAL,
                 description="CausalAttention applies dropout in train mode only")
def check_causal_attention_dropout_in_training(ns):
    expect_dropout_in_training(ns, "CausalAttention", 3, 2, 6)


# -- section 5: the wrapper -----------------------------------------------------------------------------------

@CHECKS.register("test_wrapper_output", subject="MultiHeadAttentionWrapper", error_hint=HINT_WRAPPER,
                 description="MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2) puts its heads' outputs side by "
                             "side (its heads swapped for simple linear layers, so only the wrapper is checked)")
def check_wrapper_output(ns):
    module = book_module(ns, "MultiHeadAttentionWrapper", 123, 3, 2, 6, 0.0, num_heads=2)
    heads = getattr(module, "heads", None)
    require(isinstance(heads, nn.ModuleList) and len(heads) == 2,
                "MultiHeadAttentionWrapper(..., num_heads=2).heads is not an nn.ModuleList of 2 heads.",
                "keep the __init__ the notebook gave you.")
    # Simple heads, so that a slip in CausalAttention (checked above) does not fail the wrapper's check.
    torch.manual_seed(123)
    module.heads = nn.ModuleList([nn.Linear(3, 2), nn.Linear(3, 2)])
    x = batch()
    got = output(module, x)
    what = "MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2) with two nn.Linear(3, 2) heads on the book's batch"
    expect_shape(got, (2, 6, 4), what, "the heads' outputs side by side along the last dimension: (b, num_tokens, "
                 "num_heads * d_out).")
    with torch.no_grad():
        first, second = module.heads[0](x), module.heads[1](x)
    expect_close(got[:, :, :2], first.tolist(), f"{what}: the first 2 features, compared with the first head's output",
                 HINT_WRAPPER)
    expect_close(got[:, :, 2:], second.tolist(), f"{what}: the last 2 features, compared with the second head's "
                 "output", HINT_WRAPPER)


# -- section 6: multi-head attention --------------------------------------------------------------------------

def mha(ns, dropout=0.0):
    return book_module(ns, "MultiHeadAttention", 123, 3, 2, 6, dropout, num_heads=2)


@CHECKS.register("test_mha_output", subject="MultiHeadAttention", error_hint=HINT_MHA,
                 description="MultiHeadAttention(3, 2, 6, 0.0, num_heads=2) with seed 123 gives the book's output, and "
                             "so does dropout 0.5 in eval mode; its mask is a buffer")
def check_mha_output(ns):
    module = mha(ns)
    expect_mask_buffer(module, "MultiHeadAttention(3, 2, 6, 0.0, num_heads=2)")
    require(getattr(module, "head_dim", None) == 1 and isinstance(getattr(module, "out_proj", None), nn.Linear),
                "MultiHeadAttention(3, 2, 6, 0.0, num_heads=2) has no head_dim of 1 or no out_proj layer.",
                "keep the __init__ the notebook gave you.")
    expect_book_output(output(module, batch()), BOOK_MHA_SEED_123,
                       "MultiHeadAttention(3, 2, 6, 0.0, num_heads=2)", (2, 6, 2), HINT_MHA)
    expect_no_dropout_in_eval(ns, "MultiHeadAttention", (3, 2, 6), {"num_heads": 2}, BOOK_MHA_SEED_123, (2, 6, 2))


@CHECKS.register("test_mha_is_causal", subject="MultiHeadAttention", error_hint=HINT_MHA,
                 description="changing the last token leaves MultiHeadAttention's earlier outputs unchanged")
def check_mha_is_causal(ns):
    expect_causal(mha(ns), "MultiHeadAttention")


@CHECKS.register("test_mha_shorter_input", subject="MultiHeadAttention", error_hint=HINT_MASK_CUT,
                 description="MultiHeadAttention works on 4 tokens with context_length 6")
def check_mha_shorter_input(ns):
    expect_shorter_input(mha(ns), "MultiHeadAttention", 2)


@CHECKS.register("test_mha_dropout_in_training", subject="MultiHeadAttention", error_hint=HINT_MHA,
                 description="MultiHeadAttention applies dropout in train mode only")
def check_mha_dropout_in_training(ns):
    expect_dropout_in_training(ns, "MultiHeadAttention", 3, 2, 6, num_heads=2)
