"""Grader of appendix D: adding bells and whistles to the training loop.

The schedule is checked as a pure function, step by step (`learning_rate_at`, the course's name for the rule the
book writes inline), and inside the student's `train_model`: the training run uses chapter 5's probe
(course/grading/gpt_training.py, `training_run`), whose optimizer records, at every step(), the learning rate in
effect and the total norm of the gradients it is about to apply. That shows when the rate is set and whether
the gradients were clipped, and from which step, without looking at the student's code.

The model of the run has its output head scaled up, so that every raw gradient norm is well above 1: a clipped
step then has a norm of exactly 1.0, an unclipped one does not. The run is set up to show the bugs of a loop
alone: `train_model` runs on a correct stand-in of `learning_rate_at` (probe_kit/training_parts.py), so that a
wrong schedule costs only its own test; the model is handed over in eval mode (a loop that never switches it to
training mode trains its first steps without dropout); the optimizer has two parameter groups (a rate set in the
first one only shows); and the run asks for the print edition's clipping rule (`orig_book_version=True`).

Edge cases where the book's editions differ, and what is accepted:
- Clipping at step `warmup_steps` itself: the print edition clips only after it (`global_step > warmup_steps`),
  the book's repository from it on (`>=`), unless `orig_book_version=True` asks for the print edition's rule.
  The run passes `orig_book_version=True`, so both the repository's code and the print edition's (which has no
  flag and always clips after the warmup step) must leave step `warmup_steps` unclipped; a loop that ignores the
  flag and clips from `warmup_steps` on fails. The default rule (`>=`) is not graded.
- The schedule is pinned to float32 precision (to 1e-6 of the peak rate), so that a schedule computed with torch
  tensors instead of math passes; `warmup_steps=0` is not graded (the book's code divides by zero there).
- Losses are compared loosely (2% relative): they depend on the clipping condition at `warmup_steps`.
"""

import functools
import math
from functools import partial

import pytest
import torch
from torch import nn

from checks.appd_training_loop import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, as_number, expect_close, expect_equal, expect_true, probe
from course.grading.imports import plain_imports
from course.grading.mistakes import Mistake, name_mistake, which_mistake
from course.worker.client import StudentCodeError, StudentTimeout
from graders.shared.gpt_training import (
    GPT2_TINY,
    LOSS_TYPE_HINT,
    as_numbers,
    expect_floats,
    expect_returned,
    gpt,
    train_here,
    training_run,
    windows,
)

with plain_imports():
    from reference import training_loop as ref


SCHEDULE_RTOL = 1e-6  # float32 precision, relative to the peak rate (the scale of the whole schedule)


# -- probes ------------------------------------------------------------------------------------------------------

@probe(returns=ListOf(length="configs"))
def schedules(student, configs):
    """learning_rate_at for every step of each configuration (keyword arguments, with total_steps)."""
    return [[student.learning_rate_at(step, **config) for step in range(config["total_steps"])]
            for config in configs]


@probe(returns=ListOf(length="cases"))
def highest_gradients(student, cases):
    """find_highest_gradient of a small network whose parameters get the given gradients (None: no gradient)."""
    results = []
    for gradients in cases:
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DEVICE)
        for param, grad in zip(model.parameters(), gradients):
            param.grad = None if grad is None else grad.to(DEVICE)
        results.append(student.find_highest_gradient(model))
    return results


def rates(values, *, what):
    """The student's list of rates (or losses) as a float64 tensor."""
    return as_numbers(values, what=what, type_hint=LOSS_TYPE_HINT, expected="a list of rates")


# -- D.1 and D.2: warmup and cosine decay ---------------------------------------------------------------------

def schedule_with(step, total_steps, warmup_steps, peak_lr, initial_lr=3e-05, min_lr=1e-6, mistake=None):
    """The schedule, or what a classic mistake computes instead."""
    if mistake is None:
        return ref.learning_rate_at(step, total_steps, warmup_steps, peak_lr, initial_lr, min_lr)
    increment = (peak_lr - initial_lr) / warmup_steps
    if step < warmup_steps:
        if mistake == "warmup ahead":
            return initial_lr + (step + 1) * increment
        if mistake == "warmup from zero":
            return peak_lr * step / warmup_steps
        return initial_lr + step * increment
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if mistake == "progress over all steps":
        progress = (step - warmup_steps) / total_steps
    if mistake == "progress from step 0":
        progress = step / total_steps
    if mistake == "no decay":
        return peak_lr
    if mistake == "decay to zero":
        return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULE_MISTAKES = [
    Mistake("a warmup one step ahead (counting steps from 1)",
            "step 0 gets initial_lr exactly, and each later warmup step one increment more.", mistake="warmup ahead"),
    Mistake("a warmup that starts at 0 instead of initial_lr",
            "the warmup climbs in a straight line from initial_lr (at step 0) towards peak_lr.",
            mistake="warmup from zero"),
    Mistake("a cosine progress measured over all steps", "the decay spans the steps after the warmup only: divide "
            "the steps since the warmup by the number of steps after it.", mistake="progress over all steps"),
    Mistake("a cosine progress counted from step 0", "count the progress from the end of the warmup: it is 0 at "
            "step warmup_steps.", mistake="progress from step 0"),
    Mistake("a constant rate after the warmup", "after the warmup, decay along half a cosine from peak_lr down "
            "towards min_lr (section D.2's formula).", mistake="no decay"),
    Mistake("a cosine decay to 0 instead of min_lr", "the cosine goes from peak_lr down to min_lr: min_lr plus the "
            "cosine's share of (peak_lr - min_lr).", mistake="decay to zero"),
]

SCHEDULE_CONFIGS = [
    {"total_steps": 20, "warmup_steps": 4, "peak_lr": 0.01, "initial_lr": 1e-4, "min_lr": 1e-5},
    {"total_steps": 135, "warmup_steps": 27, "peak_lr": 0.001, "initial_lr": 1e-5, "min_lr": 1e-5},  # the book's
    {"total_steps": 10, "warmup_steps": 1, "peak_lr": 5e-4},  # the default initial_lr and min_lr
    {"total_steps": 7, "warmup_steps": 6, "peak_lr": 0.1, "initial_lr": 0.0, "min_lr": 0.0},
]


def schedule(config, mistake=None):
    """Every step's rate for a configuration (as learning_rate_at's keyword arguments), or a mistake's."""
    return torch.tensor([schedule_with(step, **config, mistake=mistake) for step in range(config["total_steps"])],
                        dtype=torch.float64)


def schedule_hint(config, values):
    def same_rates(got, mistaken):
        return torch.allclose(got, mistaken, rtol=1e-5, atol=1e-6 * config["peak_lr"])

    return name_mistake(values, SCHEDULE_MISTAKES, partial(schedule, config), matches=same_rates,
                        yours="your rates are") or (
        "while step < warmup_steps, the straight line of D.1 from initial_lr towards peak_lr; from then on, the "
        "half cosine of D.2 from peak_lr to min_lr, its progress going from 0 at the end of the warmup towards 1 "
        "at total_steps.")


@pytest.mark.points(3)
@pytest.mark.runs("learning_rate_at")
def test_learning_rate_at(submission):
    """learning_rate_at: linear warmup from initial_lr, then a cosine decay from peak_lr to min_lr, step by step."""
    got = submission.run(schedules, configs=SCHEDULE_CONFIGS)
    for values, config in zip(got, SCHEDULE_CONFIGS):
        what = f"learning_rate_at for every step with {', '.join(f'{k}={v}' for k, v in config.items())}"
        values = rates(values, what=what)
        expect_close(values, schedule(config), what=what, atol=SCHEDULE_RTOL * config["peak_lr"], rtol=SCHEDULE_RTOL,
                     hint=partial(schedule_hint, config, values))


# -- D.3: gradient clipping ---------------------------------------------------------------------------------------

def gradient_cases():
    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    full = [torch.randn(shape, generator=generator) for shape in shapes]
    full[2][1, 3] = -9.0  # the entry of largest magnitude is negative: the signed maximum is another one
    full[3][0] = 2.5  # the largest entry, in the last parameter
    partial_grads = [None, torch.randn(4, generator=generator) - 3.0, None, torch.randn(2, generator=generator) - 3.0]
    return [full, partial_grads, [None, None, None, None]]


def highest_with(gradients, mistake=None):
    present = [g for g in gradients if g is not None]
    if not present:
        return None
    if mistake == "absolute":
        return max(float(g.abs().max()) for g in present)
    if mistake == "last parameter":
        return float(present[-1].max())
    return max(float(g.max()) for g in present)


SIGNED_MAXIMUM = ("take param.grad.flatten().max() of every parameter and keep the largest (the signed maximum, as the "
                  "book does).")
HIGHEST_MISTAKES = [Mistake("the largest absolute value", SIGNED_MAXIMUM, mistake="absolute"),
                    Mistake("the largest entry of the last parameter only", SIGNED_MAXIMUM, mistake="last parameter")]


def highest_hint(value, gradients):
    found = which_mistake(value, HIGHEST_MISTAKES, partial(highest_with, gradients),
                          matches=lambda got, mistaken: abs(float(got) - mistaken) < 1e-6)
    if found is not None:
        return f"your value is {found.did}: {found.fix}"
    return "the signed maximum of every parameter's gradient, over all parameters with a gradient."


@pytest.mark.points(1)
@pytest.mark.runs("find_highest_gradient")
def test_find_highest_gradient(submission):
    """find_highest_gradient: the largest gradient entry over all parameters that have one; None if none has."""
    cases = gradient_cases()
    got = submission.run(highest_gradients, cases=cases)
    for value, gradients in zip(got, cases):
        what = f"find_highest_gradient with {sum(g is not None for g in gradients)} of 4 parameters holding a gradient"
        expected = highest_with(gradients)
        if expected is None:
            expect_true(value is None, what=what, problem=f"expected None, got {type(value).__name__}.",
                        hint="start without a maximum (None) and skip parameters whose .grad is None.")
            continue
        value = as_number(value, what=what, type_hint=LOSS_TYPE_HINT)
        expect_close(value, torch.tensor(expected, dtype=torch.float64), what=what, atol=1e-6, rtol=1e-6,
                     hint=partial(highest_hint, value, gradients))


# -- D.4: the training function -----------------------------------------------------------------------------------

TRAINING = {"batch_size": 2, "lr": 5e-3, "seed": 123}
WARMUP = 3
TRAINING_ARGUMENTS = {"n_epochs": 3, "eval_freq": 4, "eval_iter": 1, "start_context": "Every effort moves you",
                      "warmup_steps": WARMUP, "initial_lr": 1e-4, "min_lr": 1e-4, "orig_book_version": True}
TOTAL_STEPS = 12  # 4 batches in each of 3 epochs
RETURNED = ("train_losses", "val_losses", "track_tokens_seen", "track_lrs")
WHAT_RUN = f"train_model (3 epochs of 4 batches, warmup_steps={WARMUP}, orig_book_version=True)"
# The part train_model may call, replaced by a correct stand-in: a wrong schedule costs only its own test.
PARTS = ("learning_rate_at",)
# How the student's loop runs (see the module's docstring).
RUN_OPTIONS = {"stand_ins": PARTS, "eval_first": True, "two_groups": True}


def run_state():
    """The model of the run: GPT-2's vocabulary, tiny, with its output head scaled by 5 so that every raw gradient
    norm is well above 1 (2.5 to 3)."""
    model = gpt(31, GPT2_TINY)
    with torch.no_grad():
        model.out_head.weight.mul_(5.0)
    return model.state_dict()


def run_data():
    return windows(40, 8, 10, 5000), windows(41, 4, 10, 5000)


def run(loop, state):
    """training_run (chapter 5's probe) with `loop` as the student's train_model, here on the trusted side."""
    return train_here(loop, "train_model", GPT2_TINY, state, *run_data(), TRAINING, TRAINING_ARGUMENTS, **RUN_OPTIONS)


@functools.cache
def reference_run():
    return run(ref.train_model, run_state())


@functools.cache
def first_norm_without_dropout() -> float:
    """The gradient norm of the run's first step in eval mode (no dropout): what a loop that never switches the
    model to training mode applies at step 0."""
    model = gpt(31, GPT2_TINY)
    model.load_state_dict(run_state())
    inputs, targets = run_data()[0]
    batch = slice(0, TRAINING["batch_size"])
    logits = model.eval()(inputs[batch])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[batch].flatten()).backward()
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))


STUDENT_RUN = pytest.StashKey[dict]()


def student_run(submission, request):
    """The student's training run, made once per submission (the pytest run's stash) and read by the three tests
    of train_model; an error of the student's code is raised again in each of them."""
    stash = request.config.stash
    if STUDENT_RUN not in stash:
        train_data, val_data = run_data()
        try:
            stash[STUDENT_RUN] = {"result": submission.run(
                training_run, function="train_model", cfg=GPT2_TINY, state=run_state(), train_data=train_data,
                val_data=val_data, settings=TRAINING, arguments=TRAINING_ARGUMENTS, **RUN_OPTIONS)}
        except (StudentCodeError, StudentTimeout) as exc:
            stash[STUDENT_RUN] = {"error": exc}
    if "error" in stash[STUDENT_RUN]:
        raise stash[STUDENT_RUN]["error"]
    return stash[STUDENT_RUN]["result"]


def expected_schedule():
    """The rate of every step of the run."""
    return schedule({"total_steps": TOTAL_STEPS, "warmup_steps": WARMUP, "peak_lr": TRAINING["lr"],
                     "initial_lr": TRAINING_ARGUMENTS["initial_lr"], "min_lr": TRAINING_ARGUMENTS["min_lr"]})


@pytest.mark.points(2)
@pytest.mark.runs("train_model")
@pytest.mark.stand_ins(*PARTS)
def test_train_model_schedule(submission, request):
    """train_model sets the scheduled learning rate in every parameter group before every step, and returns it.

    Runs on a correct learning_rate_at, with an optimizer of two parameter groups.
    """
    got = student_run(submission, request)
    result = expect_returned(got.result, RETURNED, what=WHAT_RUN)
    expected = expected_schedule()
    track_lrs = rates(result[3], what=f"{WHAT_RUN}: track_lrs")
    in_effect = torch.tensor([record[0] for record in got.records], dtype=torch.float64)
    tolerance = SCHEDULE_RTOL * TRAINING["lr"]
    expect_close(track_lrs, expected, what=f"{WHAT_RUN}: the returned track_lrs", atol=tolerance, rtol=SCHEDULE_RTOL,
                 hint=partial(returned_rates_hint, track_lrs))
    expect_close(in_effect, expected, what=f"{WHAT_RUN}: the learning rate in effect at each optimizer step",
                 atol=tolerance, rtol=SCHEDULE_RTOL, hint=partial(rates_in_effect_hint, in_effect, expected))
    for group in range(1, len(got.rates[0]) if got.rates else 1):
        in_group = torch.tensor([step_rates[group] for step_rates in got.rates], dtype=torch.float64)
        expect_close(in_group, expected, what=f"{WHAT_RUN}: the learning rate of parameter group {group} (the second) "
                     "at each optimizer step", atol=tolerance, rtol=SCHEDULE_RTOL, hint=(
                         "your rate reaches the first parameter group only: an optimizer may have several groups "
                         "(here two: weights with and without weight decay), and each has its own 'lr'; set it in "
                         "every group of optimizer.param_groups."))
    expect_floats(result[3], what=f"{WHAT_RUN}: track_lrs")


def returned_rates_hint(track_lrs: torch.Tensor) -> str:
    """The hint for wrong returned rates: the peak read again from the optimizer at every step, else the recipe."""
    peak, rates_seen = TRAINING["lr"], []
    for step in range(TOTAL_STEPS):  # the peak read again from the optimizer at every step
        peak = ref.learning_rate_at(step, TOTAL_STEPS, WARMUP, peak, TRAINING_ARGUMENTS["initial_lr"],
                                    TRAINING_ARGUMENTS["min_lr"])
        rates_seen.append(peak)
    if track_lrs.shape[0] == TOTAL_STEPS and torch.allclose(track_lrs, torch.tensor(rates_seen, dtype=torch.float64)):
        return ("your rates are exactly what reading peak_lr from the optimizer at every step gives: read it "
                "once, before the loop, since the loop overwrites the optimizer's rate.")
    return ("one rate per step: the schedule of D.1 and D.2 at global_step, over len(train_loader) * n_epochs steps, "
            "with the peak read once from the optimizer's first parameter group, before the loop.")


def rates_in_effect_hint(in_effect: torch.Tensor, expected: torch.Tensor) -> str:
    """The hint for wrong rates in effect at each step: one step late, else where to set them."""
    if in_effect.shape[0] == TOTAL_STEPS and torch.allclose(in_effect[1:], expected[:-1], rtol=1e-5):
        return ("each optimizer step used the rate of the step before: set the rate of every parameter group "
                "before the optimizer's step (the book sets it right after resetting the gradients).")
    return "set the rate (the 'lr' entry) of every group of optimizer.param_groups before the optimizer's step."


def first_step_hint(norm: float) -> str:
    """The hint for a wrong gradient norm at step 0: computed without dropout, else gradients left over."""
    if abs(norm - first_norm_without_dropout()) <= 1e-3 * norm:
        return ("your first step's gradients are those of the model in eval mode (no dropout): switch the model "
                "to training mode (its train() method) at the start of every epoch, as chapter 5 does; the model "
                "you are given may be in eval mode.")
    return ("reset the gradients at the start of every step (the optimizer's zero_grad), then backward(): the "
            "optimizer must apply this batch's gradients only.")


CLIP_HINT = ("clip the gradients of all the model's parameters to a total norm of 1.0 (torch.nn.utils.clip_grad_norm_)"
             " after backward() and before the optimizer's step. Clipping before backward() clips nothing: "
             "backward() makes the gradients.")


@pytest.mark.points(2)
@pytest.mark.runs("train_model")
@pytest.mark.stand_ins(*PARTS)
def test_train_model_clipping(submission, request):
    """train_model clips the gradients to norm 1 after the warmup step, never before it (orig_book_version=True).

    Runs on a correct learning_rate_at, from a model handed over in eval mode.
    """
    got = student_run(submission, request)
    records = got.records
    expect_true(isinstance(records, list) and len(records) == TOTAL_STEPS, what=WHAT_RUN, problem=f"stepped the "
                f"optimizer {len(records)} times, expected {TOTAL_STEPS} (once per batch).",
                hint="one optimizer step per batch.")
    reference_records = reference_run().records
    # Whether every group got the scheduled rates: only then are the weights, and so later gradients, the reference's.
    rates_match = len(got.rates) == TOTAL_STEPS and all(
        torch.allclose(torch.tensor(group, dtype=torch.float64), expected_schedule(), rtol=1e-5)
        for group in zip(*got.rates))
    norms = [record[1] for record in records]
    for step, norm in enumerate(norms):
        what = f"{WHAT_RUN}: the gradients applied at step {step}"
        if step < WARMUP:
            expect_true(norm > 1.0 + 1e-3, what=what, problem=f"have a total norm of {norm:.4f}: they were clipped "
                        "during the warmup.", hint="clip only once the warmup is over (from step warmup_steps on, "
                                                   "or after it with orig_book_version=True).")
            if step == 0 or rates_match:
                raw = reference_records[step][1]
                expect_true(abs(norm - raw) <= 1e-3 * raw, what=what, problem=f"have a total norm of {norm:.4f}, "
                            f"not {raw:.4f}, the norm of this step's loss gradients.",
                            hint=partial(first_step_hint, norm if step == 0 else -1.0))
        elif step == WARMUP:
            expect_true(norm > 1.0 + 1e-3, what=what, problem=f"have a total norm of {norm:.4f}: they were clipped "
                        "at step warmup_steps although orig_book_version=True asks for the print edition's rule.",
                        hint="with orig_book_version=True, clip only after the warmup step (global_step > "
                             "warmup_steps); by default, from it on (>=). Your loop ignores the flag.")
        else:
            problem = f"have a total norm of {norm:.4f}, not 1.0: " + (
                "they were not clipped." if norm > 1.0 else "they were clipped to another norm.")
            expect_true(abs(norm - 1.0) <= 1e-3, what=what, problem=problem, hint=CLIP_HINT)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_train_model_schedule")
@pytest.mark.runs("train_model")
@pytest.mark.stand_ins(*PARTS)
def test_train_model_returns(submission, request):
    """train_model returns one loss pair and token count per evaluation and one rate per step; losses loosely."""
    train_losses, val_losses, tokens_seen, track_lrs = expect_returned(student_run(submission, request).result,
                                                                       RETURNED, what=WHAT_RUN)
    expected_train, expected_val, expected_tokens, _ = reference_run().result
    expect_equal(len(track_lrs), TOTAL_STEPS, what=f"{WHAT_RUN}: the number of entries of track_lrs",
                 hint="append the rate of every step, not of every evaluation or epoch.")
    expect_equal([t.item() if isinstance(t, torch.Tensor) else t for t in tokens_seen], list(expected_tokens),
                 what=f"{WHAT_RUN}: track_tokens_seen", hint="evaluate after steps 0, eval_freq, 2 * eval_freq, "
                                                             "... and count every token of each batch.")
    for name, values, expected in (("train_losses", train_losses, expected_train),
                                   ("val_losses", val_losses, expected_val)):
        expect_close(rates(values, what=f"{WHAT_RUN}: {name}"), torch.tensor(expected, dtype=torch.float64),
                     what=f"{WHAT_RUN}: {name} (compared loosely, to 2%)", atol=1e-2, rtol=2e-2,
                     hint="evaluate_model(model, train_loader, val_loader, device, eval_iter) every eval_freq steps; "
                          "the losses of a correct run differ from the reference's only slightly.")
    expect_floats(train_losses + val_losses, what=f"{WHAT_RUN}: train_losses and val_losses")
