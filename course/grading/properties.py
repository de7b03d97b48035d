"""Checks shared by chapters: a module's outputs (and gradients) against the reference, causality, dropout in
training only.

Each check runs generic probes (course/grading/probes.py) against the student's class, loaded with the weights
of a seeded reference module, and compares on the trusted side. Property checks (causality, dropout) compare
the student's outputs with each other, so correct implementations written differently pass them; to keep a
property from being earned by code that does not do the work, each also demands that every output depends on
the earlier tokens (attention mixes positions) and that all values are finite.

Inputs are sequences along dimension 1: (batch, tokens, features) for attention, (batch, tokens) for models
that take token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from course.grading import compare
from course.grading.compare import expect_close, expect_finite, expect_tensor, expect_true
from course.grading.diagnosis import Diagnosis, explain_errors, output_shape, state_dict_mismatch
from course.grading.inputs import randn
from course.grading.mistakes import Mistake
from course.grading.probes import run_eval_twice, run_module, run_module_with_gradients, run_train_and_eval

HINT_MASK = ("a token must not attend to later tokens: fill the scores above the diagonal with -inf BEFORE the "
             "softmax, using self.mask cut to the number of tokens.")
HINT_EVAL_DROPOUT = ("your module gives different outputs for the same input in eval mode, so dropout is still on: "
                     "use self.dropout (an nn.Dropout, which is off in eval mode), not F.dropout(..., training=True) "
                     "or dropout you switch on yourself.")
HINT_GRADIENT = ("the output matches within the tolerance but a gradient does not: a small difference in the formula "
                 "shows more in the gradients; also avoid in-place changes and .detach() in the forward pass.")
HINT_MIXING = ("each output must be a weighted sum over this token and all earlier tokens (attention weights @ "
               "values), so changing an earlier token changes the later outputs.")


def expect_module_outputs(submission, model: torch.nn.Module, class_name: str, init: dict, inputs: list, *,
                          what: str, hint: str | None = None, mistakes: list[Mistake] | tuple = (),
                          mistaken: Callable | None = None, errors: tuple[Diagnosis, ...] = ()) -> None:
    """The student's `class_name(**init)`, loaded with `model`'s weights, gives model(x) for each input (eval mode).

    On a failure the hint is, in this order: the first of `mistakes` (course/grading/mistakes.py) whose output,
    `mistaken(x, **mistake.change)` recomputed on the trusted side, the student's equals; dropout left on in eval
    mode (checked with one more run); else `hint`. `errors` are diagnoses for errors raised while running (see
    course/grading/diagnosis.py).
    """
    state = model.state_dict()
    with explain_errors(state_dict_mismatch, *errors):
        got = submission.run(run_module, class_name=class_name, init=init, state=state, inputs=inputs)
    for x, out in zip(inputs, got):
        with torch.no_grad():
            expected = model(x)
        expect_close(out, expected, what=f"{what}, input of shape {tuple(x.shape)}",
                     hint=partial(_eval_dropout_or, hint, submission, class_name, init, state, x),
                     mistakes=mistakes, mistaken=mistaken and partial(mistaken, x))


def _eval_dropout_or(hint, submission, class_name, init, state, x) -> str | None:
    return eval_dropout_left_on(submission, class_name, init, state, x) or hint


def reference_gradients(model: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """What run_module_with_gradients returns for the reference: (output, {parameter: gradient}, input gradient)."""
    x = x.clone().requires_grad_(True) if x.is_floating_point() else x
    output = model(x)
    named = list(model.named_parameters())
    inputs = [p for _, p in named] + ([x] if x.is_floating_point() else [])
    grads = torch.autograd.grad((output * upstream).sum(), inputs, allow_unused=True)
    param_grads = {name: g for (name, _), g in zip(named, grads) if g is not None}
    x_grad = grads[-1] if x.is_floating_point() else None
    return output.detach(), param_grads, x_grad


def expect_module_gradients(submission, model: torch.nn.Module, class_name: str, init: dict, inputs: list, *,
                            what: str, hint: str | None, seed: int, mistakes: list[Mistake] | tuple = (),
                            mistaken: Callable | None = None, errors: tuple[Diagnosis, ...] = (),
                            gradient_floor: float | None = None) -> None:
    """The student's `class_name(**init)`, loaded with `model`'s weights, gives the reference's output, parameter
    gradients and input gradient for each input (eval mode; loss = (output * upstream).sum(), with `upstream`
    seeded from `seed` plus the input's index).

    A wrong output is explained as in expect_module_outputs (a classic mistake, `mistaken(x, **change)`; dropout
    left on in eval mode, asked only about finite outputs; else `hint`). `gradient_floor`: the least atol and rtol
    for the gradients, for a module built from other graded modules, so that a part slightly off (a LayerNorm
    that gets eps a hair wrong) fails its own test and not, by a hair, every test built on it.
    """
    state = model.state_dict()
    tolerance = {}
    if gradient_floor is not None:
        atol, rtol = compare.TOLERANCES.get(compare._device, compare.TOLERANCES["cuda"])
        tolerance = {"atol": max(atol, gradient_floor), "rtol": max(rtol, gradient_floor)}
    for index, x in enumerate(inputs):
        with torch.no_grad():
            upstream = randn(seed + index, *model(x).shape)
        expected, expected_grads, expected_x_grad = reference_gradients(model, x, upstream)
        with explain_errors(state_dict_mismatch, output_shape(tuple(expected.shape)), *errors):
            got = submission.run(run_module_with_gradients, class_name=class_name, init=init, state=state, x=x,
                                 upstream=upstream)
        label = f"{what}, input of shape {tuple(x.shape)}"
        expect_close(got.output, expected, what=label,
                     hint=partial(_finite_eval_dropout_or, hint, submission, class_name, init, state, x, got.output),
                     mistakes=mistakes, mistaken=mistaken and partial(mistaken, x))
        grads = got.gradients if isinstance(got.gradients, dict) else {}
        missing = [name for name in expected_grads if name not in grads]
        expect_true(not missing, what=f"{label}: gradients",
                    problem=f"no gradient reached {', '.join(missing[:3])} after backward().",
                    hint="every parameter must take part in the forward pass, and the computation must stay in "
                         "torch (no .item(), .detach() or numpy in between).")
        for name, expected_grad in expected_grads.items():
            expect_close(grads[name], expected_grad, what=f"{label}: gradient of {name}", hint=HINT_GRADIENT,
                         **tolerance)
        if expected_x_grad is not None:
            expect_close(got.input_gradient, expected_x_grad, what=f"{label}: gradient of the input",
                         hint=HINT_GRADIENT, **tolerance)


def _finite_eval_dropout_or(hint, submission, class_name, init, state, x, got) -> str | None:
    """Two NaN outputs are unequal without any dropout: dropout left on is asked about finite outputs only."""
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not bool(torch.isfinite(got).all()):
        return hint
    return _eval_dropout_or(hint, submission, class_name, init, state, x)


def eval_dropout_left_on(submission, class_name: str, init: dict, state: dict, x) -> str | None:
    """HINT_EVAL_DROPOUT if the student's module gives two different outputs for one input in eval mode."""
    twice = submission.run(run_eval_twice, class_name=class_name, init=init, state=state, x=x)
    first, second = twice.first, twice.second
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape:
        if not torch.equal(first, second):
            return HINT_EVAL_DROPOUT
    return None


def changed_positions(x: torch.Tensor, positions: slice, seed: int, vocab_size: int | None = None) -> torch.Tensor:
    """A copy of x with the tokens at `positions` (dimension 1) replaced by other seeded values; token ids
    (integer x) are shifted by a non-zero offset modulo `vocab_size`, so every changed id differs."""
    changed = x.clone()
    generator = torch.Generator().manual_seed(seed)
    part = changed[:, positions]
    if x.is_floating_point():
        changed[:, positions] = torch.rand(part.shape, generator=generator)
    else:
        if vocab_size is None or vocab_size < 2:
            raise ValueError("changing token ids needs the vocabulary size")
        changed[:, positions] = (part + torch.randint(1, vocab_size, part.shape, generator=generator)) % vocab_size
    return changed


def expect_attends_to_earlier_tokens(out: torch.Tensor, out_first_changed: torch.Tensor, *, what: str) -> None:
    """Changing the first token must change the output at every later position (attention mixes tokens)."""
    later = (out_first_changed[:, 1:] - out[:, 1:]).abs()
    moved = later.reshape(later.shape[0], later.shape[1], -1).amax(dim=-1)  # (batch, tokens - 1)
    expect_true(bool((moved > 1e-7).all()), what=what,
                problem="changing the first token did not change the outputs at some later positions, so those "
                        "outputs do not depend on earlier tokens.", hint=HINT_MIXING)


def expect_causal(submission, model: torch.nn.Module, class_name: str, init: dict, x: torch.Tensor, *,
                  what: str, vocab_size: int | None = None) -> None:
    """Changing the last two tokens leaves the outputs at earlier positions unchanged, changes their own outputs,
    and changing the first token changes the outputs at all later positions (`vocab_size` for token ids)."""
    future_changed = changed_positions(x, slice(-2, None), seed=21, vocab_size=vocab_size)
    first_changed = changed_positions(x, slice(0, 1), seed=22, vocab_size=vocab_size)
    with explain_errors(state_dict_mismatch):
        outputs = submission.run(run_module, class_name=class_name, init=init, state=model.state_dict(),
                                 inputs=[x, future_changed, first_changed])
    with torch.no_grad():
        shape = tuple(model(x).shape)
    out, out_future, out_first = (expect_tensor(o, what=what, shape=shape) for o in outputs)
    for output in (out, out_future, out_first):
        expect_finite(output, what=what)
    tokens = shape[1]
    expect_close(out_future[:, :-2], out[:, :-2], atol=1e-5, rtol=1e-5,
                 what=f"{what}: outputs at positions 0..{tokens - 3} after changing only the last two tokens",
                 hint=HINT_MASK)
    expect_true(bool((out_future[:, -2:] - out[:, -2:]).abs().max() > 1e-4), what=what,
                problem="the outputs of the changed tokens did not change at all.",
                hint="each token's output must depend on its own input.")
    expect_attends_to_earlier_tokens(out, out_first, what=what)


def expect_dropout_in_training_only(submission, make_model: Callable[[float], torch.nn.Module], class_name: str,
                                    init: Callable[[float], dict], x: torch.Tensor, *, what: str,
                                    where: str = "the attention weights", vocab_size: int | None = None) -> None:
    """With dropout > 0, train mode differs from eval mode; with dropout 0 they agree; and the module mixes
    tokens (so dropout has attention weights to act on). `make_model(dropout)` builds the seeded reference and
    `init(dropout)` the arguments of the student's class for that rate."""
    first_changed = changed_positions(x, slice(0, 1), seed=22, vocab_size=vocab_size)
    for dropout in (0.5, 0.0):
        config = init(dropout)
        model = make_model(dropout)
        with explain_errors(state_dict_mismatch):
            both = submission.run(run_train_and_eval, class_name=class_name, init=config, state=model.state_dict(),
                                  x=x)
        with torch.no_grad():
            shape = tuple(model(x).shape)
        out_eval = expect_tensor(both.eval, what=f"{what} in eval mode", shape=shape)
        out_train = expect_tensor(both.train, what=f"{what} in train mode", shape=shape)
        expect_finite(out_eval, what=f"{what} in eval mode")
        expect_finite(out_train, what=f"{what} in train mode")
        if dropout > 0:
            expect_true(bool((out_train - out_eval).abs().max() > 1e-3), what=f"{what} with dropout={dropout}",
                        problem="the output in train mode equals the output in eval mode, so no dropout was applied.",
                        hint=f"apply self.dropout to {where}.")
            (mixed,) = submission.run(run_module, class_name=class_name, init=config, state=model.state_dict(),
                                      inputs=[first_changed])
            mixed = expect_tensor(mixed, what=f"{what} in eval mode", shape=shape)
            expect_attends_to_earlier_tokens(out_eval, mixed, what=f"{what} in eval mode")
        else:
            expect_close(out_train, out_eval, what=f"{what} with dropout=0.0, train vs eval mode",
                         hint="with dropout 0 the module must behave the same in train and eval mode.")
