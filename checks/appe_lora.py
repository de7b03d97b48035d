"""Public checks of appendix E (parameter-efficient finetuning with LoRA), one per hidden grader test.

The worked examples are the notebook's own demos: a LoRALayer and a LinearWithLoRA on a 6-dimensional input
(rank 2, alpha 4), before and after a manual update of B, and a small model of nested layers to wrap, freeze and
count. Either scaling of the update is accepted, alpha / rank (the course and the book's repository) or alpha (the
print edition). The hidden grader uses other sizes, seeded matrices and a GPT model.
"""

import torch
from torch import nn

from checks import Checks, Class, Function, Interface, expect_equal, expect_finite, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("LoRALayer", "(in_dim, out_dim, rank, alpha)", methods={"forward": "(x)"}),
    Class("LinearWithLoRA", "(linear, rank, alpha)", methods={"forward": "(x)"}),
    Function("replace_linear_with_lora", "(model, rank, alpha)"),
    Function("freeze_parameters", "(model)"),
    Function("count_trainable_parameters", "(model)"),
)

CHECKS = Checks("appe_lora", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

RANK, ALPHA = 2, 4  # alpha / rank = 2; the print edition's scaling is alpha = 4
HINT_SCALING = ("scale the product x @ A @ B by alpha / rank (the print edition's scaling by alpha alone is accepted "
                "too).")
HINT_LORA = ("A is (in_dim, rank), random; B is (rank, out_dim), zero; both nn.Parameter; forward(x) is the scaled "
             "x @ A @ B (section E.4).")
HINT_WRAPPER = ("keep the given layer as the attribute linear and a LoRALayer of its input and output sizes as the "
                "attribute lora; forward adds the two outputs for the same x (section E.4).")
HINT_REPLACE = ("walk the model's children (named_children): put a LinearWithLoRA around each nn.Linear under the same "
                "name (setattr), and call replace_linear_with_lora on every other child.")


def x_input():
    return torch.linspace(-1.0, 1.0, 18).reshape(3, 6)  # (3, 6): three inputs of 6 features


def lora_layer(ns):
    torch.manual_seed(123)
    layer = ns["LoRALayer"](6, 4, RANK, ALPHA)
    require(isinstance(layer, nn.Module), "LoRALayer(...) is not an nn.Module.",
            "keep the stub's base class nn.Module and its call of super().__init__().")
    return layer


def expect_scaled_update(update, A, B, what):
    plain = torch.linspace(-1.0, 1.0, 18).reshape(3, 6) @ A @ B
    expect_shape(update, (3, 4), what, "x @ A @ B maps 6 features to 4.")
    expect_finite(update, what)
    matches = [torch.allclose(update, factor * plain, atol=1e-5) for factor in (ALPHA / RANK, ALPHA)]
    require(any(matches), f"{what} is not the scaled x @ A @ B (rank={RANK}, alpha={ALPHA}).", HINT_SCALING)


def nested_model():
    """Linear layers at several depths, next to other modules (a LayerNorm, a GELU)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.GELU(), nn.Linear(8, 8)), nn.LayerNorm(8),
                         nn.Linear(8, 3))


# -- E.4: the LoRA layer ----------------------------------------------------------------------------------------

@CHECKS.register("test_lora_layer_parameters", subject="LoRALayer", error_hint=HINT_LORA,
                 description="LoRALayer(6, 4, rank=2, alpha=4) has a random A of shape (6, 2) and a zero B (2, 4)")
def check_lora_layer_parameters(ns):
    layer = lora_layer(ns)
    A, B = getattr(layer, "A", None), getattr(layer, "B", None)
    require(isinstance(A, nn.Parameter) and isinstance(B, nn.Parameter), "LoRALayer has no nn.Parameter "
            "attributes A and B.", "wrap both matrices in nn.Parameter and keep them as the attributes A and B.")
    expect_shape(A, (6, RANK), "A", "A is (in_dim, rank).")
    expect_shape(B, (RANK, 4), "B", "B is (rank, out_dim).")
    require(bool((B == 0).all()), "B is not zero at initialisation.", "start B at zero, so that the update "
                                                                          "starts at zero.")
    require(bool((A != 0).any()), "A is zero at initialisation.",
            "initialise A randomly, e.g. as nn.Linear initialises its weight (Kaiming uniform): with A and B both "
            "zero, neither would ever get a gradient.")


@CHECKS.register("test_lora_layer_forward", subject="LoRALayer", error_hint=HINT_LORA,
                 description="LoRALayer gives zeros at initialisation and the scaled x @ A @ B once B changes")
def check_lora_layer_forward(ns):
    layer = lora_layer(ns)
    with torch.no_grad():
        expect_equal(layer(x_input()).abs().max().item(), 0.0, "the largest value of the update while B is zero",
                     "the update is x @ A @ B, scaled: zero when B is zero.")
        layer.B.copy_(torch.ones(RANK, 4))
        expect_scaled_update(layer(x_input()), layer.A, layer.B, "the update after setting B to ones")


# -- E.4: the wrapped linear layer ------------------------------------------------------------------------------

def wrapped(ns):
    torch.manual_seed(123)
    linear = nn.Linear(6, 4)
    layer = ns["LinearWithLoRA"](linear, RANK, ALPHA)
    require(getattr(layer, "linear", None) is linear, "LinearWithLoRA(linear, ...).linear is not the layer it "
            "was given.", "keep the very layer you are given (not a copy, not a new nn.Linear) as the attribute "
                          "linear.")
    require(isinstance(getattr(layer, "lora", None), nn.Module), "LinearWithLoRA has no module `lora`.",
            "keep a LoRALayer of the linear layer's input and output sizes, with rank and alpha, as the attribute "
            "lora.")
    return layer, linear


@CHECKS.register("test_linear_with_lora_at_initialisation", subject="LinearWithLoRA", error_hint=HINT_WRAPPER,
                 description="a freshly built LinearWithLoRA computes exactly what its nn.Linear computes")
def check_linear_with_lora_at_initialisation(ns):
    layer, linear = wrapped(ns)
    with torch.no_grad():
        got, expected = layer(x_input()), linear(x_input())
    expect_shape(got, (3, 4), "LinearWithLoRA's output", "one output per input, as wide as the linear layer's.")
    require(torch.allclose(got, expected, atol=1e-6), "a freshly built LinearWithLoRA does not compute what "
            "its nn.Linear computes.", "add the LoRA layer's output to the linear layer's; the LoRA part is zero "
                                       "while B is.")


@CHECKS.register("test_linear_with_lora_update", subject="LinearWithLoRA", error_hint=HINT_WRAPPER,
                 description="after a manual update of B, LinearWithLoRA differs from its layer by the scaled "
                             "x @ A @ B")
def check_linear_with_lora_update(ns):
    layer, linear = wrapped(ns)
    with torch.no_grad():
        layer.lora.B.copy_(torch.ones(RANK, 4))
        update = layer(x_input()) - linear(x_input())
    expect_scaled_update(update, layer.lora.A, layer.lora.B, "the output minus the nn.Linear's output")


@CHECKS.register("test_lora_gradients", subject="LinearWithLoRA", error_hint=HINT_WRAPPER,
                 description="with the nn.Linear frozen, backward through LinearWithLoRA reaches A and B only")
def check_lora_gradients(ns):
    layer, linear = wrapped(ns)
    linear.requires_grad_(False)
    with torch.no_grad():
        layer.lora.B.copy_(torch.ones(RANK, 4))
    layer(x_input()).sum().backward()
    require(linear.weight.grad is None, "the frozen nn.Linear received a gradient.",
            "use the given layer as it is, as the attribute linear; do not copy its weights into new parameters.")
    for name in ("A", "B"):
        grad = getattr(layer.lora, name).grad
        require(grad is not None and bool((grad != 0).any()), f"lora.{name} received no gradient.",
                "the output must use the LoRA layer's output, with A and B as they are (no .detach(), no "
                "torch.no_grad()).")


# -- E.4: LoRA in a model --------------------------------------------------------------------------------------

@CHECKS.register("test_replace_linear_with_lora", subject="replace_linear_with_lora", error_hint=HINT_REPLACE,
                 description="replace_linear_with_lora wraps the 3 Linear layers of a nested model; output unchanged")
def check_replace_linear_with_lora(ns):
    model = nested_model()
    x = torch.linspace(-1.0, 1.0, 8).reshape(2, 4)
    with torch.no_grad():
        before = model(x)
    ns["replace_linear_with_lora"](model, RANK, ALPHA)
    wrapped_names = [name for name, module in model.named_modules() if type(module).__name__ == "LinearWithLoRA"]
    expect_equal(wrapped_names, ["0", "1.1", "3"], "the modules that are now LinearWithLoRA",
                 "wrap every nn.Linear, at every depth: recurse into the other children.")
    with torch.no_grad():
        after = model(x)
    require(torch.allclose(after, before, atol=1e-6), "the model's output changed when the layers were wrapped.",
            "keep each original layer inside its wrapper; a new LoRA path adds zero.")


# -- E.4: freezing and counting --------------------------------------------------------------------------------

@CHECKS.register("test_freeze_parameters", subject="freeze_parameters",
                 error_hint="set requires_grad to False on every parameter of the model (its parameters() method).",
                 description="freeze_parameters makes every parameter of a small model untrainable")
def check_freeze_parameters(ns):
    model = nested_model()
    ns["freeze_parameters"](model)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    expect_equal(trainable, [], "the parameters still trainable after freeze_parameters",
                 "set requires_grad to False on every parameter the model holds (its parameters() method walks "
                 "them all); an attribute requires_grad on the module itself does nothing.")


@CHECKS.register("test_count_trainable_parameters", subject="count_trainable_parameters",
                 error_hint="count the entries (numel) of the parameters whose requires_grad is set.",
                 description="count_trainable_parameters counts 15 entries for nn.Linear(4, 3), 3 with the "
                             "weight frozen")
def check_count_trainable_parameters(ns):
    layer = nn.Linear(4, 3)
    expect_equal(ns["count_trainable_parameters"](layer), 15, "count_trainable_parameters(nn.Linear(4, 3))",
                 "sum of p.numel() over the parameters with requires_grad: 4 * 3 weights and 3 biases.")
    layer.weight.requires_grad_(False)
    expect_equal(ns["count_trainable_parameters"](layer), 3, "the count with the weight frozen",
                 "count only the parameters with p.requires_grad.")


# -- E.4: finetuning with LoRA ---------------------------------------------------------------------------------

@CHECKS.register("test_lora_finetuning_gradients", subject="count_trainable_parameters", error_hint=HINT_REPLACE,
                 description="freeze, then wrap: only the A and B matrices of a nested model are trainable")
def check_lora_finetuning_gradients(ns):
    model = nested_model()
    ns["freeze_parameters"](model)
    ns["replace_linear_with_lora"](model, RANK, ALPHA)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    expected = [f"{layer}.lora.{matrix}" for layer in ("0", "1.1", "3") for matrix in "AB"]
    expect_equal(trainable, expected, "the trainable parameters", "freeze first, then replace_linear_with_lora: the "
                                                                  "new A and B matrices are the only trainable ones.")
    trainable_entries = sum(param.numel() for param in model.parameters() if param.requires_grad)
    expect_equal(trainable_entries, RANK * ((4 + 8) + (8 + 8) + (8 + 3)),
                 "the number of trainable entries (rank * (in + out) per wrapped layer)",
                 "only the A and B matrices of each wrapper are trainable, with the given rank.")
