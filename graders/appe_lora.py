"""Grader of appendix E: parameter-efficient finetuning with LoRA.

The layer tests load seeded matrices A and B (and the base layer's weights) into the student's LoRALayer and
LinearWithLoRA, run them and compare with the reference; the gradient tests run backward through them with the
base layer frozen. The model tests apply the student's replace_linear_with_lora and freeze_parameters to a tiny
GPT classifier that the probe builds from the support code (chapter 4's GPTModel with a 2-class head, as in
chapter 6), then load the reference's weights, B matrices included, and compare outputs and gradients.

A bug costs the points of its own class or function: LinearWithLoRA is tested on a correct LoRALayer, and
replace_linear_with_lora on correct LinearWithLoRA and LoRALayer classes (probe_kit.classifier_parts), put in the
student's module under those names while it runs. The recipe's test (freeze_parameters, then
replace_linear_with_lora) runs the student's two model-level functions together: it is about how they fit (PARTS_FIT).

The scaling of the update. The course follows the book's repository: (alpha / rank) * (x @ A @ B). The print
edition of the book scales by alpha alone. Both are accepted (the notebook says so): every comparison of an update
passes when the student's values match either scaling, and the test inputs use alpha != rank and alpha != 1 so
that each scaling, and no scaling at all, give different values. A is initialised like an nn.Linear weight
(Kaiming uniform) in the book's repository and from a normal distribution with std 1/sqrt(rank) in earlier
versions of the author's LoRA code: A must be random, not zero, and its values are not graded.
"""

import copy
from functools import partial

import pytest
import torch
from torch import nn

from checks.appe_lora import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, Mistake, expect_close, expect_equal, expect_true, probe
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors, state_dict_mismatch
from course.grading.inputs import randint, randn, reference_module
from reference import lora as ref
from reference.gpt import GPTModel

# (in_dim, out_dim, rank, alpha): alpha / rank, alpha and 1 differ in each, so the scalings can be told apart.
LAYERS = [(6, 5, 3, 12), (4, 7, 2, 1.5)]
RANK, ALPHA = 2, 6  # for the models: alpha / rank = 3

# Tests of a composite that run the student's parts together, and why (every other composite runs on stand-ins).
PARTS_FIT = {
    "test_lora_finetuning_gradients": "the appendix's recipe is the two model-level steps together: the student's "
                                      "freeze_parameters first, then the student's replace_linear_with_lora, must "
                                      "leave exactly the new A and B matrices trainable",
}
# A tiny GPT classifier (chapter 6's model): 13 Linear layers (6 per block and the head).
CFG = {"vocab_size": 48, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
       "qkv_bias": True}

HINT_SCALING = ("scale the product x @ A @ B by alpha / rank, as the book's repository does (the print edition's "
                "scaling by alpha alone is accepted too).")
HINT_SUM = ("the output is the wrapped layer's output plus the LoRA layer's update, both computed from the same "
            "input x (section E.4).")

# The update x @ A @ B with a wrong factor (mistaken_update computes each).
SCALING_MISTAKES = [
    Mistake("no scaling at all", HINT_SCALING, scaling="none"),
    Mistake("a scaling by rank / alpha", HINT_SCALING, scaling="rank / alpha"),
    Mistake("a scaling by alpha * rank", HINT_SCALING, scaling="alpha * rank"),
]


# -- the reference, with either scaling (trusted side) ------------------------------------------------------------

def print_edition(model):
    """A copy of a reference model (or layer) with LoRA whose updates are scaled as in the print edition, by alpha
    instead of alpha / rank (same weights)."""
    printed = copy.deepcopy(model)
    for layer in printed.modules():
        if isinstance(layer, ref.LoRALayer):
            layer.alpha = layer.alpha * layer.rank
    return printed


def lora_layer(in_dim, out_dim, rank, alpha, seed):
    """The reference LoRALayer with seeded random A and B (B is zero at initialisation; here it is not, as after
    some training)."""
    layer = ref.LoRALayer(in_dim, out_dim, rank, alpha)
    with torch.no_grad():
        layer.A.copy_(randn(seed, in_dim, rank))
        layer.B.copy_(randn(seed + 1, rank, out_dim))
    return layer


def wrapped_linear(in_dim, out_dim, rank, alpha, seed, *, trained=True):
    """The reference LinearWithLoRA around a seeded nn.Linear; `trained`: B random instead of zero."""
    torch.manual_seed(seed)
    layer = ref.LinearWithLoRA(nn.Linear(in_dim, out_dim), rank, alpha)
    if trained:
        with torch.no_grad():
            layer.lora.B.copy_(randn(seed + 2, rank, out_dim))
    return layer


def gpt_classifier(seed):
    """A seeded GPT with a 2-class head (chapter 6's classifier), in eval mode."""
    model = reference_module(GPTModel, seed, cfg=CFG)
    torch.manual_seed(seed + 1)
    model.out_head = nn.Linear(CFG["emb_dim"], 2)
    return model.eval()


def lora_classifier(seed, *, freeze=True):
    """The appendix's model: gpt_classifier(seed) frozen, every Linear wrapped (rank 2, alpha 6), every B seeded
    random (as after training)."""
    model = gpt_classifier(seed)
    if freeze:
        ref.freeze_parameters(model)
    ref.replace_linear_with_lora(model, RANK, ALPHA)
    with torch.no_grad():
        for index, module in enumerate(m for m in model.modules() if isinstance(m, ref.LoRALayer)):
            module.B.copy_(randn(seed + 100 + index, *module.B.shape) * 0.3)
    return model.eval()


def expect_either_scaling(got, expected, *, what, hint, atol=None, rtol=None, **mistakes):
    """`got` matches the course's scaling (alpha / rank) or the print edition's (alpha): `expected` holds both
    values, in this order; on a failure the message is about the course's (`mistakes`: see expect_close)."""
    course, printed = expected
    if isinstance(got, torch.Tensor) and got.shape == printed.shape and got.is_floating_point() and \
            torch.isfinite(got).all() and torch.allclose(got.double(), printed.double(),
                                                          atol=atol or 1e-5, rtol=rtol or 1e-5):
        return
    expect_close(got, course, what=what, hint=hint, atol=atol, rtol=rtol, **mistakes)


def mistaken_update(lora, x):
    """expect_close's `mistaken` for a reference LoRALayer on x: its update x @ A @ B with a mistaken scaling."""
    factors = {"none": 1.0, "rank / alpha": lora.rank / lora.alpha, "alpha * rank": lora.alpha * lora.rank}
    return lambda scaling: factors[scaling] * (x @ lora.A @ lora.B)


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(Fields("state", "A_again", "trainable"), length="configs"))
def fresh_lora_layers(student, name, configs):
    """A new LoRALayer for each (in_dim, out_dim, rank, alpha), built twice after two seeds: .state (state_dict of
    the first), .A_again (A of the second), .trainable ({name: requires_grad})."""
    results = []
    for in_dim, out_dim, rank, alpha in configs:
        torch.manual_seed(1)
        layer = getattr(student, name)(in_dim, out_dim, rank, alpha)
        torch.manual_seed(2)
        again = getattr(student, name)(in_dim, out_dim, rank, alpha)
        state = {key: value.detach().clone() for key, value in layer.state_dict().items()}
        results.append({"state": state, "A_again": again.state_dict().get("A"),
                        "trainable": {key: bool(p.requires_grad) for key, p in layer.named_parameters()}})
    return results


@probe(returns=ListOf(length="cases"))
def lora_layer_outputs(student, name, cases):
    """For each case {"config", "state", "x"}: the student's LoRALayer(*config) loaded with `state`, applied to x."""
    results = []
    for case in cases:
        layer = getattr(student, name)(*case["config"]).to(DEVICE)
        layer.load_state_dict(case["state"])
        with torch.no_grad():
            results.append(layer(case["x"]))
    return results


@probe(returns=ListOf(Fields("output", "linear_output", "keys"), length="cases"))
def wrapped_outputs(student, name, cases):
    """For each case {"config", "linear_state", "state" (or None), "x"}: a fresh nn.Linear(in_dim, out_dim) with
    `linear_state`, wrapped by the student's LinearWithLoRA(linear, rank, alpha) (built on a correct LoRALayer), then
    loaded with `state` if given: .output (the wrapped layer's), .linear_output (the nn.Linear's own) and .keys (the
    wrapper's state_dict keys)."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.lora import wrapped_linear
    from probe_kit.parts import replaced

    results = []
    for case in cases:
        with replaced(student, **stand_ins_for("LoRALayer")):
            layer = wrapped_linear(getattr(student, name), case["config"], linear_state=case["linear_state"])
        layer = layer.to(DEVICE)
        if case["state"] is not None:
            layer.load_state_dict(case["state"])
        keys = sorted(layer.state_dict())
        with torch.no_grad():
            results.append({"output": layer(case["x"]), "keys": keys, "linear_output": nn.functional.linear(
                case["x"], case["linear_state"]["weight"], case["linear_state"]["bias"])})
    return results


@probe(returns=ListOf(length="cases"))
def wrapped_gradients(student, name, cases):
    """For each case {"config", "state", "x", "upstream"}: the student's LinearWithLoRA (built on a correct
    LoRALayer) around an nn.Linear whose parameters are frozen (requires_grad False), loaded with `state`; backward
    of (output * upstream).sum(). Returns {parameter name: gradient or None}."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.lora import wrapped_linear
    from probe_kit.parts import replaced

    results = []
    for case in cases:
        with replaced(student, **stand_ins_for("LoRALayer")):
            layer = wrapped_linear(getattr(student, name), case["config"], frozen=True)
        layer = layer.to(DEVICE)
        layer.load_state_dict(case["state"])
        output = layer(case["x"])
        if output.requires_grad:
            (output * case["upstream"]).sum().backward()
        results.append({key: p.grad for key, p in layer.named_parameters()})
    return results


@probe(returns=Fields("requires_grad", "before", "after"))
def frozen_model(student, name, cfg, state, x):
    """A GPT classifier frozen by the student's freeze_parameters: .requires_grad ({parameter: requires_grad}), the
    logits for x .before and .after."""
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE).eval()
    with torch.no_grad():
        before = model(x)
    getattr(student, name)(model)
    with torch.no_grad():
        after = model(x)
    return {"requires_grad": {key: bool(p.requires_grad) for key, p in model.named_parameters()}, "before": before,
            "after": after}


@probe(returns=ListOf(length=3))
def trainable_counts(student, name, cfg, state):
    """The student's count on three models: a GPT classifier (weights `state`); the same with its embeddings and
    first block frozen; the same with everything frozen but a bias and a LayerNorm scale. (The grader runs it with
    the reference too.)"""
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state)
    counts = [getattr(student, name)(model)]
    for module in (model.tok_emb, model.pos_emb, model.trf_blocks[0]):
        module.requires_grad_(False)
    counts.append(getattr(student, name)(model))
    model.requires_grad_(False)
    model.out_head.bias.requires_grad_(True)
    model.final_norm.scale.requires_grad_(True)
    counts.append(getattr(student, name)(model))
    return counts


@probe(returns=Fields("wrapped", "ranks", "bare", "at_init", "trained"))
def replaced_model(student, name, cfg, state, trained_state, x, rank, alpha):
    """A GPT classifier (weights `state`) after the student's replace_linear_with_lora(model, rank, alpha), which
    finds correct stand-ins of LinearWithLoRA and LoRALayer under those names (probe_kit.classifier_parts):
    .wrapped (the module names whose class is LinearWithLoRA), .ranks ({wrapper name: shape of its lora.A}), .bare
    (the names of nn.Linear layers that are not inside a LinearWithLoRA), .at_init (the logits for x right after the
    replacement), .trained (the logits after loading `trained_state`, the reference's wrapped model with trained B
    matrices; None if it does not fit)."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.parts import replaced
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state)
    with replaced(student, **stand_ins_for("LinearWithLoRA", "LoRALayer")):
        getattr(student, name)(model, rank=rank, alpha=alpha)
    model = model.to(DEVICE).eval()
    modules = dict(model.named_modules())
    wrapped = [key for key, module in modules.items() if type(module).__name__ == "LinearWithLoRA"]
    ranks = {}
    for key in wrapped:
        A = getattr(getattr(modules[key], "lora", None), "A", None)
        ranks[key] = list(A.shape) if isinstance(A, torch.Tensor) else None
    bare = [key for key, module in modules.items() if isinstance(module, nn.Linear)
            and type(modules.get(key.rpartition(".")[0])).__name__ != "LinearWithLoRA"]
    with torch.no_grad():
        at_init = model(x)
    result = {"wrapped": wrapped, "ranks": ranks, "bare": bare, "at_init": at_init, "trained": None}
    try:
        model.load_state_dict(trained_state)
    except RuntimeError:
        return result  # the grader says which layers differ
    with torch.no_grad():
        result["trained"] = model(x)
    return result


@probe(returns=Fields("gradients", "requires_grad", "count"))
def lora_training_step(student, freeze, replace, cfg, state, trained_state, x, labels, rank, alpha):
    """The appendix's recipe: a GPT classifier (weights `state`), the student's freeze_parameters, then the
    student's replace_linear_with_lora (on correct stand-ins of LinearWithLoRA and LoRALayer); the weights of the
    reference's wrapped model with trained B matrices loaded; the cross-entropy of the last token's logits
    backward. Returns .gradients ({parameter: gradient or None}; None if those weights do not fit), .requires_grad
    ({parameter: requires_grad}) and .count (the number of trainable parameter entries)."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.parts import replaced
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state)
    getattr(student, freeze)(model)
    with replaced(student, **stand_ins_for("LinearWithLoRA", "LoRALayer")):
        getattr(student, replace)(model, rank=rank, alpha=alpha)
    model = model.to(DEVICE).train()
    parameters = dict(model.named_parameters())
    result = {"gradients": None, "requires_grad": {key: bool(p.requires_grad) for key, p in parameters.items()},
              "count": sum(p.numel() for p in parameters.values() if p.requires_grad)}
    try:
        model.load_state_dict(trained_state)
    except RuntimeError:
        return result  # the grader says which parameters differ
    logits = model(x)[:, -1, :]
    if logits.requires_grad:
        nn.functional.cross_entropy(logits, labels).backward()
    result["gradients"] = {key: p.grad for key, p in parameters.items()}
    return result


# -- E.4: the LoRA layer --------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("LoRALayer")
def test_lora_layer_parameters(submission):
    """LoRALayer holds two trainable matrices: A (in_dim, rank), random, and B (rank, out_dim), all zeros."""
    got = submission.run(fresh_lora_layers, name="LoRALayer", configs=LAYERS)
    for (in_dim, out_dim, rank, alpha), result in zip(LAYERS, got):
        what = f"LoRALayer({in_dim}, {out_dim}, rank={rank}, alpha={alpha})"
        state = result.state
        expect_equal(sorted(state), ["A", "B"], what=f"{what}: its parameters (state_dict keys)",
                     hint="keep exactly two parameters, self.A and self.B (nn.Parameter), and nothing else in the "
                          "state_dict: the grader loads matrices into them by name.")
        expect_true(result.trainable == {"A": True, "B": True}, what=what, problem="A and B must both be "
                    "trainable parameters.", hint="wrap both in nn.Parameter.")
        expect_equal(list(state["A"].shape), [in_dim, rank], what=f"{what}: the shape of A",
                     hint="A is (in_dim, rank): x @ A takes an input of in_dim features down to rank.")
        expect_equal(list(state["B"].shape), [rank, out_dim], what=f"{what}: the shape of B",
                     hint="B is (rank, out_dim): (x @ A) @ B brings the rank features up to out_dim.")
        expect_equal(state["B"], torch.zeros(rank, out_dim), what=f"{what}: B at initialisation",
                     hint="start B at zero, so that A @ B = 0 and a wrapped layer starts "
                          "out computing exactly what the pretrained layer computed.")
        A = state["A"]
        expect_true(bool(A.is_floating_point() and torch.isfinite(A).all() and (A != 0).any()), what=f"{what}: A",
                    problem="is zero (or not finite) at initialisation.",
                    hint="initialise A randomly, e.g. as nn.Linear initialises its weight (Kaiming "
                         "uniform): with A and B both zero, neither would ever get a gradient.")
        expect_true(not torch.equal(A, result.A_again), what=f"{what}: A", problem="is the same after two "
                    "different seeds: it is not drawn at random.",
                    hint="initialise A randomly (torch's random generator), e.g. as nn.Linear "
                         "initialises its weight.")


def layer_cases():
    """The probe's cases (seeded layers of each size, inputs with and without a batch dimension) and, for each, the
    reference layer, its input and its sizes."""
    cases, references = [], []
    for index, config in enumerate(LAYERS):
        course = lora_layer(*config, seed=10 + 3 * index)
        for x in (randn(30 + index, 2, 3, config[0]), randn(40 + index, 4, config[0])):
            cases.append({"config": list(config), "state": course.state_dict(), "x": x})
            references.append((course, x, config))
    return cases, references


@pytest.mark.points(2)
@pytest.mark.runs("LoRALayer")
def test_lora_layer_forward(submission):
    """LoRALayer computes the scaled low-rank update (alpha / rank) * (x @ A @ B) (the print edition's alpha *
    (x @ A @ B) is accepted), for inputs with and without a batch dimension."""
    cases, references = layer_cases()
    got = submission.run(lora_layer_outputs, name="LoRALayer", cases=cases)
    for output, (course, x, (in_dim, out_dim, rank, alpha)) in zip(got, references):
        with torch.no_grad():
            expected = course(x), print_edition(course)(x)
        expect_either_scaling(output, expected, what=f"LoRALayer({in_dim}, {out_dim}, rank={rank}, alpha={alpha}) on "
                              f"an input of shape {tuple(x.shape)}", mistakes=SCALING_MISTAKES,
                              mistaken=mistaken_update(course, x), yours="your update is",
                              hint="compute x @ A @ B through the rank bottleneck (shapes (..., in_dim) @ (in_dim, "
                                   "rank) @ (rank, out_dim)) and scale it: " + HINT_SCALING)


# -- E.4: the wrapped linear layer ----------------------------------------------------------------------------

def wrapped_cases(trained):
    """The probe's cases (seeded wrapped layers of each size, with B updated if `trained`) and, for each, the
    reference layer, its input and its sizes."""
    cases, references = [], []
    for index, config in enumerate(LAYERS):
        course = wrapped_linear(*config, seed=50 + 5 * index, trained=trained)
        x = randn(60 + index, 2, 3, config[0])
        cases.append({"config": list(config), "linear_state": course.linear.state_dict(),
                      "state": course.state_dict() if trained else None, "x": x})
        references.append((course, x, config))
    return cases, references


def update_hint(update, expected):
    """The hint for a wrong update of LinearWithLoRA (its output minus the wrapped layer's): none at all?"""
    if isinstance(update, torch.Tensor) and update.shape == expected.shape and \
            torch.allclose(update, torch.zeros_like(update)):
        return "your output is exactly the wrapped layer's: the LoRA update is missing. " + HINT_SUM
    return HINT_SUM


@pytest.mark.points(1)
@pytest.mark.runs("LinearWithLoRA")
@pytest.mark.stand_ins("LoRALayer")
def test_linear_with_lora_at_initialisation(submission):
    """LinearWithLoRA keeps the given layer as `linear` and a LoRALayer as `lora`; freshly built, it computes
    exactly what the layer it wraps computes. It runs on a correct LoRALayer."""
    cases, references = wrapped_cases(trained=False)
    with explain_errors(state_dict_mismatch):
        got = submission.run(wrapped_outputs, name="LinearWithLoRA", cases=cases)
    for result, (course, x, (in_dim, out_dim, rank, alpha)) in zip(got, references):
        what = f"LinearWithLoRA(nn.Linear({in_dim}, {out_dim}), rank={rank}, alpha={alpha}), freshly built"
        expect_equal(result.keys, sorted(course.state_dict()), what=f"{what}: its state_dict keys",
                     hint="keep the given layer as the attribute linear and a LoRALayer of the layer's input and "
                          "output sizes (with rank and alpha) as the attribute lora (section E.4).")
        expect_close(result.output, result.linear_output, what=f"{what}: output on an input of shape "
                     f"{tuple(x.shape)}, compared with the wrapped nn.Linear's", atol=1e-6, rtol=1e-6,
                     hint="keep the very layer you are given (not a copy, not a new nn.Linear) as the attribute "
                          "linear, with its pretrained weights, and add the LoRA layer's output, which is zero while B "
                          "is zero.")


@pytest.mark.points(2)
@pytest.mark.runs("LinearWithLoRA")
@pytest.mark.stand_ins("LoRALayer")
def test_linear_with_lora_update(submission):
    """LinearWithLoRA after an update of B: its output differs from the wrapped layer's by exactly the scaled
    x @ A @ B. It runs on a correct LoRALayer."""
    cases, references = wrapped_cases(trained=True)
    with explain_errors(state_dict_mismatch):
        got = submission.run(wrapped_outputs, name="LinearWithLoRA", cases=cases)
    for result, (course, x, (in_dim, out_dim, rank, alpha)) in zip(got, references):
        with torch.no_grad():
            expected = [model(x) - model.linear(x) for model in (course, print_edition(course))]
        output, linear_output = result.output, result.linear_output
        update = output - linear_output if isinstance(output, torch.Tensor) and output.shape == linear_output.shape \
            else output
        expect_either_scaling(update, expected, what=f"LinearWithLoRA(nn.Linear({in_dim}, {out_dim}), rank={rank}, "
                              f"alpha={alpha}) with B updated: output minus the wrapped layer's output, input of "
                              f"shape {tuple(x.shape)}", hint=partial(update_hint, update, expected[0]),
                              mistakes=SCALING_MISTAKES, mistaken=mistaken_update(course.lora, x),
                              yours="your update is")


@pytest.mark.points(2)
@pytest.mark.depends_on("test_linear_with_lora_update")
@pytest.mark.runs("LinearWithLoRA")
@pytest.mark.stand_ins("LoRALayer")
def test_lora_gradients(submission):
    """With the wrapped layer frozen, backward through LinearWithLoRA reaches only A and B, with the reference's
    gradients (at initialisation, with B zero, A's gradient is zero and B's is not). It runs on a correct
    LoRALayer."""
    cases, references = [], []
    for index, config in enumerate(LAYERS):
        for trained in (False, True):
            course = wrapped_linear(*config, seed=70 + 5 * index, trained=trained)
            course.linear.requires_grad_(False)
            x, upstream = randn(80 + index, 2, 3, config[0]), randn(90 + index, 2, 3, config[1])
            cases.append({"config": list(config), "state": course.state_dict(), "x": x, "upstream": upstream})
            references.append(((course, print_edition(course)), x, upstream, config, trained))
    with explain_errors(state_dict_mismatch):
        got = submission.run(wrapped_gradients, name="LinearWithLoRA", cases=cases)
    for gradients, (models, x, upstream, (in_dim, out_dim, rank, alpha), trained) in zip(got, references):
        what = (f"gradients of LinearWithLoRA(nn.Linear({in_dim}, {out_dim}), rank={rank}, alpha={alpha}) "
                f"{'with B updated' if trained else 'freshly built'}, the nn.Linear frozen")
        for model in models:
            (model(x) * upstream).sum().backward()
        expect_true(isinstance(gradients, dict), what=what, problem="nothing could be read.", hint=None)
        for key in ("linear.weight", "linear.bias"):
            expect_true(gradients.get(key) is None, what=f"{what}: {key}", problem="received a gradient although it "
                        "is frozen.", hint="keep the layer you are given as it is, as the attribute linear; do "
                                           "not copy its weights into new parameters.")
        for key in ("lora.A", "lora.B"):
            expect_true(gradients.get(key) is not None, what=f"{what}: {key}", problem="received no gradient.",
                        hint="the output must be computed from self.lora(x) with A and B as they are (no .detach(), "
                             "no torch.no_grad()). " + HINT_SUM)
            expected = [model.get_parameter(key).grad for model in models]
            expect_either_scaling(gradients[key], expected, what=f"{what}: {key}", atol=1e-5, rtol=1e-4,
                                  hint=HINT_SUM + " " + HINT_SCALING)


# -- E.4: LoRA in a GPT model ---------------------------------------------------------------------------------

LINEAR_LAYERS = sorted(name for name, module in gpt_classifier(0).named_modules() if isinstance(module, nn.Linear))


@pytest.mark.points(2)
@pytest.mark.runs("replace_linear_with_lora")
@pytest.mark.stand_ins("LinearWithLoRA", "LoRALayer")
def test_replace_linear_with_lora(submission):
    """replace_linear_with_lora wraps every nn.Linear of a GPT classifier, at every depth (attention, feed forward,
    output head), keeping the original weights: the output is unchanged until B is trained. It runs on correct
    LinearWithLoRA and LoRALayer classes."""
    base, trained = gpt_classifier(5), lora_classifier(5, freeze=False)
    x = randint(6, CFG["vocab_size"], 2, 7)
    with explain_errors(state_dict_mismatch):
        got = submission.run(replaced_model, name="replace_linear_with_lora", cfg=CFG, state=base.state_dict(),
                             trained_state=trained.state_dict(), x=x, rank=RANK, alpha=ALPHA)
    what = f"replace_linear_with_lora(model, rank={RANK}, alpha={ALPHA}) on a GPT classifier"
    missing = [name for name in LINEAR_LAYERS if name not in got.wrapped]
    expect_true(not missing, what=what, problem=f"{len(missing)} of its {len(LINEAR_LAYERS)} nn.Linear layers are not "
                f"wrapped, e.g. {missing[0] if missing else ''}.",
                hint="walk the model recursively: for each child module (named_children), put a LinearWithLoRA "
                     "around an nn.Linear under the same name (setattr), and call replace_linear_with_lora on every "
                     "other child.")
    expect_equal(sorted(got.wrapped), LINEAR_LAYERS, what=f"{what}: the modules that are now LinearWithLoRA",
                 hint="wrap each nn.Linear once, where it is, and nothing else.")
    expect_equal(got.bare, [], what=f"{what}: nn.Linear layers left outside a LinearWithLoRA",
                 hint="each nn.Linear must end up inside its wrapper (as .linear).")
    for name in LINEAR_LAYERS:
        expect_equal(got.ranks.get(name), [base.get_submodule(name).in_features, RANK],
                     what=f"{what}: the shape of {name}.lora.A", hint="pass rank and alpha on to each LinearWithLoRA.")
    with torch.no_grad():
        expected_at_init, expected = base(x), (trained(x), print_edition(trained)(x))
    expect_close(got.at_init, expected_at_init, what=f"{what}: the logits right after the replacement, compared with "
                 "the model's before", hint="keep each original layer (with its weights) inside its wrapper; a new "
                                            "LoRALayer adds zero until B is trained.")
    expect_true(got.trained is not None, what=what, problem="the weights of the reference's model with LoRA (its "
                "state_dict) do not fit your model.", hint="wrap each nn.Linear in place, keeping its name: its "
                "weights become <name>.linear.weight and its LoRA matrices <name>.lora.A and <name>.lora.B.")
    expect_either_scaling(got.trained, expected, what=f"{what}: the logits after loading trained LoRA weights",
                          hint="each wrapper must compute linear(x) + lora(x). " + HINT_SCALING)


# -- E.4: freezing and counting ------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("freeze_parameters")
def test_freeze_parameters(submission):
    """freeze_parameters makes every parameter of a model untrainable (requires_grad False) and changes nothing
    else."""
    model = gpt_classifier(3)
    got = submission.run(frozen_model, name="freeze_parameters", cfg=CFG, state=model.state_dict(),
                         x=randint(4, CFG["vocab_size"], 2, 6))
    what = "freeze_parameters on a GPT classifier"
    trainable = sorted(key for key, flag in got.requires_grad.items() if flag)
    expect_true(not trainable, what=what, problem=f"{len(trainable)} of {len(got.requires_grad)} parameters are still "
                f"trainable, e.g. {trainable[0] if trainable else ''}.",
                hint="set requires_grad to False on every parameter the model holds (its parameters() method "
                     "walks them all); setting an attribute requires_grad on the module itself does nothing.")
    expect_close(got.after, got.before, what=f"{what}: the model's output after freezing, compared with before",
                 atol=0, rtol=0, hint="freezing changes which weights training may update, not the weights.")


COUNTED = ("a GPT classifier with every parameter trainable", "the same with its embeddings and first block frozen",
           "the same with only a bias and a LayerNorm scale trainable")


def counting_hint(value, model):
    """The hint for a wrong count of the trainable parameters of a model like `model`."""
    if value == sum(p.numel() for p in model.parameters()):
        return "you counted every parameter: count only those with p.requires_grad."
    if value == len(list(model.parameters())):
        return "count the entries of each parameter (p.numel()), not the parameters."
    return "add up the number of entries (numel) of every parameter whose requires_grad is set."


@pytest.mark.points(1)
@pytest.mark.runs("count_trainable_parameters")
def test_count_trainable_parameters(submission):
    """count_trainable_parameters counts the entries of the parameters that require grad."""
    model = gpt_classifier(0)
    counts = submission.run(trainable_counts, name="count_trainable_parameters", cfg=CFG, state=model.state_dict())
    expected = trainable_counts(ref, "count_trainable_parameters", CFG, model.state_dict())  # the probe, here
    for count, expected_count, label in zip(counts, expected, COUNTED):
        value = count.item() if isinstance(count, torch.Tensor) and count.numel() == 1 else count
        expect_equal(int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value,
                     expected_count, what=f"trainable parameters of {label}", hint=partial(counting_hint, value, model))


# -- E.4: finetuning with LoRA -------------------------------------------------------------------------------

def recipe_hint(requires_grad, expected_trainable):
    """The hint for a wrong set of trainable parameters after the appendix's recipe."""
    if any(name not in requires_grad for name in expected_trainable):
        return ("some LoRA matrices are missing: replace_linear_with_lora must wrap every nn.Linear of the model, "
                "at every depth.")
    if any(not requires_grad[name] for name in expected_trainable):
        return ("the LoRA matrices are frozen: freeze the model BEFORE replace_linear_with_lora, so that only the "
                "new A and B matrices are trainable.")
    return ("freeze_parameters must freeze every parameter of the model; replace_linear_with_lora then adds the "
            "trainable A and B matrices.")


@pytest.mark.points(2)
@pytest.mark.depends_on("test_freeze_parameters", "test_replace_linear_with_lora")
@pytest.mark.runs("freeze_parameters", "replace_linear_with_lora")
@pytest.mark.stand_ins("LinearWithLoRA", "LoRALayer")
def test_lora_finetuning_gradients(submission):
    """The appendix's recipe (freeze_parameters, then replace_linear_with_lora) on a GPT classifier: a training step
    gives gradients to the A and B matrices only, the reference's, and leaves the rest frozen. It runs on correct
    LinearWithLoRA and LoRALayer classes."""
    trained = lora_classifier(8).train()
    models = trained, print_edition(trained)
    x, labels = randint(9, CFG["vocab_size"], 3, 6), torch.tensor([0, 1, 1])
    with explain_errors(state_dict_mismatch):
        got = submission.run(lora_training_step, freeze="freeze_parameters", replace="replace_linear_with_lora",
                             cfg=CFG, state=gpt_classifier(8).state_dict(), trained_state=trained.state_dict(), x=x,
                             labels=labels, rank=RANK, alpha=ALPHA)
    for model in models:
        nn.functional.cross_entropy(model(x)[:, -1, :], labels).backward()
    what = f"one training step after freeze_parameters and replace_linear_with_lora(rank={RANK}, alpha={ALPHA})"
    expected_trainable = sorted(name for name, p in trained.named_parameters() if p.requires_grad)
    hint = partial(recipe_hint, got.requires_grad, expected_trainable)
    expect_equal(sorted(name for name, flag in got.requires_grad.items() if flag), expected_trainable,
                 what=f"{what}: the trainable parameters", hint=hint)
    expect_equal(got.count, ref.count_trainable_parameters(trained), what=f"{what}: the number of trainable entries",
                 hint=hint)
    expect_true(got.gradients is not None, what=what, problem="the weights of the reference's model with LoRA do not "
                "fit your model.", hint="replace_linear_with_lora must wrap every nn.Linear in place, keeping its "
                "name, with the given rank.")
    expect_equal(sorted(name for name, grad in got.gradients.items() if grad is not None), expected_trainable,
                 what=f"{what}: the parameters that received a gradient", hint=hint)
    for name in expected_trainable:
        expect_either_scaling(got.gradients[name], [model.get_parameter(name).grad for model in models],
                              what=f"{what}: the gradient of {name}", atol=1e-5, rtol=1e-4,
                              hint="each wrapper must compute linear(x) + lora(x). " + HINT_SCALING)
