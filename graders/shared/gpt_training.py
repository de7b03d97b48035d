"""What the graders of chapters 5 and 6 and of appendix D share on the trusted side: tiny GPTs and token windows,
the probes that compute losses, evaluate and train (run in the worker, or here with the reference), and the
bodies of the tests that chapters 5 and 6 both have (calc_loss_batch, calc_loss_loader, evaluate_model).

Chapter 5 pretrains a GPT on token windows; chapter 6 finetunes the same GPT as a classifier (a head of
num_classes with a bias, reading the last token); appendix D adds a schedule and clipping to chapter 5's loop.
Their probes build chapter 4's GPTModel from the support code, so a broken chapter 4 never hides a correct
chapter 5 or 6; the helpers the probes share are in course/worker/runtime/probe_kit/training.py.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch
from probe_kit import training as kit  # registered by course.grading (probes.py): the files the worker loads

from course.grading.compare import as_number, expect_close, expect_true
from course.grading.contracts import Fields, ListOf
from course.grading.diagnosis import error_mentions, explain_errors
from course.grading.imports import plain_imports
from course.grading.inputs import randint, reference_module
from course.grading.mistakes import Mistake, name_mistake
from course.grading.probes import DEVICE, probe, run_here

with plain_imports():
    import tiktoken  # noqa: F401 - imported here once, without rewriting, for the probes run on this side

    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer

# A tiny GPT with GPT-2's vocabulary, for what goes through tiktoken (the samples printed during training).
GPT2_TINY = {"vocab_size": 50257, "context_length": 12, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
             "drop_rate": 0.1, "qkv_bias": False}

# What as_number says to a loss of the wrong type, in chapter 5 and appendix D.
LOSS_TYPE_HINT = "return the average loss as a Python float (total_loss / num_batches)."
# calc_loss_loader on an empty loader, in chapters 5 and 6.
EMPTY_LOADER = "an empty loader has no batches to average: return float('nan'), as the book does."
dividing_by_zero = error_mentions("ZeroDivisionError", hint="an empty loader has no batches: return float('nan') "
                                                            "before dividing, as the book does.")


# Classic mistakes that chapters 5 and 6 share (the `mistake` of their graders' loops with one mistake).
NUM_BATCHES_IGNORED = Mistake("averaging over all batches whatever num_batches says",
                              "stop after the first num_batches batches.", mistake="num_batches ignored")
ZERO_GRAD_FORGOTTEN = Mistake("training without resetting the gradients (the optimizer's zero_grad)", "reset the "
                              "gradients at the start of every step: otherwise backward() adds this batch's "
                              "gradients to those of all earlier steps.", mistake="no zero_grad")
STEPS_FROM_ONE = Mistake("counting the steps from 1 (evaluating after steps 1, 3, ...)", "global_step starts at -1 "
                         "and is increased after each step, so the first evaluation is after step 0.",
                         mistake="steps from 1")


def gpt(seed: int, cfg: dict) -> GPTModel:
    """The reference's GPTModel of `cfg`, built after torch.manual_seed(seed), in eval mode."""
    return reference_module(GPTModel, seed, cfg=cfg)


def windows(seed: int, rows: int, num_tokens: int, vocab_size: int):
    """`rows` windows of a random token stream and their targets (the same stream shifted by one)."""
    stream = randint(seed, vocab_size, rows * num_tokens + 1)
    return stream[:-1].reshape(rows, num_tokens), stream[1:].reshape(rows, num_tokens)


def reference_loader(data, batch_size: int):
    """The loader a probe builds over `data` (inputs, targets), built here for the reference."""
    return kit.loader(*data, batch_size)


def as_numbers(values, *, what: str, type_hint: str | None, expected: str = "a list") -> torch.Tensor:
    """The student's list of numbers (losses, accuracies, rates) as a float64 tensor."""
    expect_true(isinstance(values, list), what=what, problem=f"expected {expected}, got {type(values).__name__}.",
                hint=None)
    return torch.stack([as_number(v, what=what, type_hint=type_hint) for v in values]) if values else \
        torch.zeros(0, dtype=torch.float64)


COUNTS = {3: "three", 4: "four", 5: "five"}


def expect_returned(result, names, *, what: str, kind: str = "lists", lists: bool = True) -> list:
    """A training loop returned len(names) values (`names` in order; a tuple arrives as a list), each of them a
    list unless `lists` is False."""
    expect_true(isinstance(result, list) and len(result) == len(names), what=what, problem=f"expected "
                f"{COUNTS[len(names)]} {kind} ({', '.join(names)}).", hint=f"return {', '.join(names)}.")
    for name, value in zip(names, result if lists else ()):
        expect_true(isinstance(value, list), what=f"{what}: {name}", problem=f"expected a list, got "
                    f"{type(value).__name__}.", hint=None)
    return result


# What a test says when the student's code used a batch before moving it to the model's device.
batch_not_moved = error_mentions("before it was moved to the model's device", hint=(
    "move both batches to `device` (the tensor's .to method) before the model and the loss use them: on a GPU, a "
    "batch left on the CPU cannot meet the model's weights."))

# -- probes: run in the worker against the student's module -------------------------------------------------------

@probe(returns=ListOf(Fields("loss", "gradients"), length="batches"))
def batch_losses(student, cfg, state, batches, gradients_of, on_host=False):
    """calc_loss_batch on a GPT (or a classifier) in eval mode for each (inputs, targets): .loss, and .gradients of
    the parameters named in `gradients_of` (None when the loss cannot be backpropagated). With `on_host`, the
    batches are probe_kit's OnHost tensors: used before .to(device), they raise as a CPU batch on a GPU does."""
    from probe_kit.training import loaded_gpt, losses_with_gradients
    from probe_kit.training_parts import on_host as host

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE).eval()
    if on_host:
        batches = [(host(inputs), host(targets)) for inputs, targets in batches]
    return losses_with_gradients(student.calc_loss_batch, model, batches, DEVICE, gradients_of)


@probe(returns=ListOf(Fields("value", "training"), length="cases"))
def loader_values(student, name, cfg, state, inputs, targets, cases, device=None, train=False, stand_ins=(),
                  parts="training_parts"):
    """The student's `name` (calc_loss_loader or calc_accuracy_loader) on a loader over the first `rows` pairs
    for each (rows, batch_size, num_batches), on `device` (None: the grading device): .value, and .training (the
    model's mode afterwards). With `train`, the model is in training mode (dropout on) before each call. The
    student's functions named in `stand_ins` are replaced by those of probe_kit's module `parts` meanwhile."""
    import importlib

    from probe_kit.parts import replaced
    from probe_kit.training import loaded_gpt, loader_results

    from reference.gpt import GPTModel

    device = DEVICE if device is None else device
    model = loaded_gpt(GPTModel, cfg, state).to(device)
    kit = importlib.import_module(f"probe_kit.{parts}")
    with replaced(student, **{part: getattr(kit, part) for part in stand_ins}):
        return loader_results(getattr(student, name), model, inputs, targets, cases, device, train)


@probe(returns=Fields("first", "second", "training_after"))
def evaluate_twice(student, name, cfg, state, train_data, val_data, batch_size, eval_iter, stand_ins=(),
                   parts="training_parts"):
    """The student's evaluate_model (`name`) on a model in training mode, twice, after two different seeds:
    .first and .second results, and .training_after, the model's mode after the first call. The student's
    functions named in `stand_ins` are replaced by those of probe_kit's module `parts` meanwhile."""
    import importlib

    from probe_kit.parts import replaced
    from probe_kit.training import evaluated_twice, loaded_gpt, loader

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE)
    kit = importlib.import_module(f"probe_kit.{parts}")
    with replaced(student, **{part: getattr(kit, part) for part in stand_ins}):
        return evaluated_twice(getattr(student, name), model, loader(*train_data, batch_size),
                               loader(*val_data, batch_size), DEVICE, eval_iter)


@probe(returns=Fields("result", "records", "weights", "rates", "training_after"))
def training_run(student, function, cfg, state, train_data, val_data, settings, arguments, finetune=False,
                 stand_ins=(), parts="training_parts", eval_first=False, two_groups=False):
    """The student's training loop `function` (chapter 5's train_model_simple, appendix D's train_model, chapter 6's
    train_classifier_simple) on the CPU, from the given weights, after torch.manual_seed(settings["seed"]), called
    as function(model, train_loader, val_loader, optimizer, "cpu", **arguments, tokenizer=GPT-2's), with
    probe_kit's AdamW (weight decay 0.1). With `finetune` (chapter 6), the model is a classifier whose last block,
    final norm and head alone are trainable (frozen here, as the book does), and the loop takes no tokenizer.

    The student's functions named in `stand_ins` are replaced by those of probe_kit's module `parts` while the loop
    runs, so that the loop runs on correct parts. With `eval_first`, the model is handed over in eval mode (dropout
    off), so that a loop that never switches it to training mode shows. With `two_groups`, the optimizer has two
    parameter groups (the weights with weight decay, the biases, norms' scales and shifts and embeddings without),
    as large models are trained.

    Returns .result (the loop's), .records (the optimizer's, at every step(): [the learning rate of its first
    group, the total L2 norm of the gradients]), .weights, the last ones the run trains: the final LayerNorm's
    scale (the classifier's out_head.weight with `finetune`), .rates (the learning rate of every group at every
    step) and .training_after (the model's mode at the end). The grader runs this very function with the
    reference's loop (train_here) to get the expected values.
    """
    import importlib

    import tiktoken
    from probe_kit.parts import replaced
    from probe_kit.training import AdamW, loaded_gpt, loader, run_quietly

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state)
    if finetune:
        for param in model.parameters():
            param.requires_grad = False
        for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
            for param in module.parameters():
                param.requires_grad = True
    else:
        arguments = dict(arguments, tokenizer=tiktoken.get_encoding("gpt2"))
    train_loader = loader(*[t.cpu() for t in train_data], settings["batch_size"])
    val_loader = loader(*[t.cpu() for t in val_data], settings["batch_size"])
    params = list(model.parameters())
    if two_groups:
        decayed = [p for name, p in model.named_parameters() if p.dim() >= 2 and "emb" not in name]
        params = [{"params": decayed}, {"params": [p for p in params if all(p is not d for d in decayed)],
                                        "weight_decay": 0.0}]
    optimizer = AdamW(params, lr=settings["lr"], weight_decay=0.1)
    if eval_first:
        model.eval()
    kit = importlib.import_module(f"probe_kit.{parts}")
    with replaced(student, **{part: getattr(kit, part) for part in stand_ins}):
        result, _ = run_quietly(getattr(student, function), model, train_loader, val_loader, optimizer, "cpu",
                                seed=settings["seed"], **arguments)
    weights = model.out_head.weight if finetune else model.final_norm.scale
    return {"result": result, "records": optimizer.records, "weights": weights.detach(),
            "rates": optimizer.group_rates, "training_after": model.training}


def train_here(loop, function: str, cfg: dict, state: dict, train_data, val_data, settings: dict, arguments: dict,
               finetune: bool = False, **options):
    """What training_run gives with `loop` as the student's `function`, run here (the expected values, or what a
    loop with a classic mistake gives); `options` are training_run's (stand_ins, eval_first, two_groups)."""
    get_gpt2_tokenizer()  # tiktoken.get_encoding("gpt2") works offline from now on
    return run_here(training_run, SimpleNamespace(**{function: loop}), function=function, cfg=cfg, state=state,
                    train_data=train_data, val_data=val_data, settings=settings, arguments=arguments,
                    finetune=finetune, **options)


def expect_floats(values: list, *, what: str):
    """Every value of a list a training loop returned is a Python number, not a tensor."""
    tensors = [index for index, value in enumerate(values) if isinstance(value, torch.Tensor)]
    expect_true(not tensors, what=what, problem=f"hold {len(tensors)} tensor(s) where Python floats are expected.",
                hint="append the Python numbers themselves (evaluate_model returns floats; a tensor's .item() gives "
                     "one): a tensor in the lists keeps its computation graph, and its device's memory, alive for "
                     "the rest of training.")


def expect_trained(got, expected, names, *, what: str, type_hint: str, hint, weights: str):
    """The lists of numbers a training loop returned first (`names`: losses, accuracies) and the weights it trained
    last (`weights` names them) are those of the `expected` run, within 1e-4."""
    for name, values, expected_values in zip(names, got.result, expected.result):
        expect_close(as_numbers(values, what=f"{what}: {name}", type_hint=type_hint),
                     torch.tensor(expected_values, dtype=torch.float64), what=f"{what}: {name}", atol=1e-4,
                     rtol=1e-4, hint=hint)
    expect_close(got.weights, expected.weights, what=f"{what}: {weights} after training", atol=1e-4, rtol=1e-4,
                 hint=hint)


# -- the tests that chapters 5 and 6 share ----------------------------------------------------------------------------

def check_calc_loss_batch(submission, ref, fresh_model, cfg, batches, *, gradients_of, loss_with, mistakes,
                          hint: str, mean_over: str, gradient_hint: str, on_host: bool = False):
    """calc_loss_batch on each batch: a tensor holding one number (the mean over `mean_over`), equal to
    loss_with(model, inputs, targets) (the grader's own loss, which computes the `mistakes` too), connected to the
    weights: the gradients of `gradients_of` are the reference's. `fresh_model()` builds the seeded model. With
    `on_host`, a batch used before it is moved to the device raises (batch_losses)."""
    model = fresh_model()
    with explain_errors(error_mentions("Expected target size", "Expected input batch_size", hint=hint),
                        batch_not_moved):
        got = submission.run(batch_losses, cfg=cfg, state=model.state_dict(), batches=batches,
                             gradients_of=gradients_of, on_host=on_host)
    for result, (inputs, targets) in zip(got, batches):
        what = f"loss of a batch of shape {tuple(inputs.shape)}"
        loss = result.loss
        expect_true(isinstance(loss, torch.Tensor), what=what, problem=f"expected a tensor, got "
                    f"{type(loss).__name__}.", hint="return the loss tensor itself, not a Python number (.item()): "
                                                    "training calls its backward() method.")
        expect_true(loss.numel() == 1, what=what, problem=f"expected a single number (the mean over {mean_over}), got "
                    f"a tensor of shape {tuple(loss.shape)}.", hint=hint)
        expect_close(loss.reshape(()), loss_with(model, inputs, targets), what=what, hint=hint, mistakes=mistakes,
                     mistaken=partial(loss_with, model, inputs, targets), yours="your loss is")
        expect_true(result.gradients is not None, what=what, problem="the loss has no gradient: it is not connected "
                    "to the model's weights.", hint="return the tensor cross_entropy gives, without .item(), "
                                                    ".detach() or torch.no_grad().")
        reference = fresh_model()
        reference.zero_grad()
        ref.calc_loss_batch(inputs, targets, reference, "cpu").backward()
        expected = dict(reference.named_parameters())
        for name, gradient in zip(gradients_of, result.gradients):
            expect_close(gradient, expected[name].grad, what=f"{what}: gradient of {name}", atol=1e-5, rtol=1e-4,
                         hint=gradient_hint)


def loader_loss_with(ref, model, loader, num_batches, mistake=None):
    """calc_loss_loader's result, or what one of its classic mistakes gives (None for an empty loader)."""
    if mistake is None:
        return ref.calc_loss_loader(loader, model, "cpu", num_batches)
    if len(loader) == 0:
        return None
    losses = [ref.calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
    used = len(losses) if num_batches is None else min(num_batches, len(losses))
    if mistake == "not capped":  # divides by num_batches even when the loader has fewer batches
        return sum(losses[:used]) / (num_batches or len(losses))
    if mistake == "num_batches ignored":
        return sum(losses) / len(losses)
    if mistake == "all added":  # every batch's loss added, divided by the number of batches it should use
        return sum(losses) / used
    return sum(losses[:used])  # "sum": no average


def same_number(got, mistaken) -> bool:
    """The student's number equals a mistake's (within 1e-4, relative above 1)."""
    return mistaken is not None and abs(float(got) - mistaken) < 1e-4 * max(1.0, abs(mistaken))


def expect_loader_loss(value, ref, model, loader, num_batches, *, what: str, mistakes):
    """One call of calc_loss_loader: the student's `value` (a number) is the reference's on `loader`; an empty
    loader gives NaN."""
    with torch.no_grad():
        expected = ref.calc_loss_loader(loader, model, "cpu", num_batches)

    def diagnose():
        if len(loader) == 0:
            return EMPTY_LOADER
        return name_mistake(value, mistakes, partial(loader_loss_with, ref, model, loader, num_batches),
                            matches=same_number, yours="your result is") or (
            "add calc_loss_batch(...).item() over the batches and divide by the number of batches used.")

    expect_close(value, torch.tensor(expected, dtype=torch.float64), what=what, atol=1e-5, rtol=1e-5, hint=diagnose)


def check_evaluate_model(submission, ref, model, cfg, train_data, val_data, *, type_hint: str, batch_size: int = 2,
                         eval_iter: int = 3, stand_ins=(), parts: str = "training_parts"):
    """evaluate_model: the training and validation losses over eval_iter batches in eval mode (the same twice,
    whatever the seed), the model left in training mode; `model` has dropout, and is put in training mode first.
    The student's functions named in `stand_ins` are replaced by those of probe_kit's module `parts` meanwhile."""
    got = submission.run(evaluate_twice, name="evaluate_model", cfg=cfg, state=model.state_dict(),
                         train_data=train_data, val_data=val_data, batch_size=batch_size, eval_iter=eval_iter,
                         stand_ins=stand_ins, parts=parts)
    loaders = [reference_loader(train_data, batch_size), reference_loader(val_data, batch_size)]
    expected = ref.evaluate_model(model, *loaders, "cpu", eval_iter)
    what = f"evaluate_model with eval_iter={eval_iter}"
    expect_true(isinstance(got.first, list) and len(got.first) == 2, what=what, problem="expected a pair "
                "(train_loss, val_loss).", hint="return both losses, the training loss first.")
    values = [as_number(v, what=f"{what}: {name}", type_hint=type_hint)
              for v, name in zip(got.first, ("train_loss", "val_loss"))]
    again = [as_number(v, what=what, type_hint=type_hint) for v in got.second] \
        if isinstance(got.second, list) and len(got.second) == 2 else None

    def diagnose():
        if again is not None and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(values, again)):
            return ("two calls gave different losses, so dropout was still on: switch the model to evaluation "
                    "mode (its eval() method) before computing the losses.")
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, reversed(expected))):
            return "your pair is the wrong way round: the training loss comes first, then the validation loss."
        with torch.no_grad():
            every_batch = [ref.calc_loss_loader(loader, model.eval(), "cpu") for loader in loaders]
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, every_batch)):
            return "you averaged over every batch: pass num_batches=eval_iter to calc_loss_loader."
        return "calc_loss_loader(..., num_batches=eval_iter) for each loader, under torch.no_grad(), in eval mode."

    for name, value, expected_value in zip(("training loss", "validation loss"), values, expected):
        expect_close(value, torch.tensor(expected_value, dtype=torch.float64), what=f"{what}: {name}", atol=1e-5,
                     rtol=1e-5, hint=diagnose)
    expect_true(got.training_after is True, what=what, problem="the model is left in eval mode after the "
                "evaluation.", hint="switch it back to training mode (its train() method) before returning: "
                                    "training goes on after each evaluation, with dropout.")
