"""Grader of chapter 5: pretraining on unlabeled data.

The student's functions are run against models the grader builds in the worker from the support code
(reference.gpt's GPTModel, the model of chapter 4) and loads with the weights of a seeded reference model, so
a student whose chapter 4 is broken can still do chapter 5. The losses run on the grading device; whatever is
compared token for token or step for step (greedy and sampled generation, the training run, whose dropout
draws from the random generator) runs on the CPU, where a fixed seed gives the same numbers as the reference.

A bug costs the points of its own function: the composites (calc_loss_loader, evaluate_model,
generate_and_print_sample, train_model_simple) run on correct stand-ins of the parts they call
(probe_kit/training_parts.py), so that, say, a broken calc_loss_batch costs only its own test. The checkpoint's
round trip is the one test of two definitions together (PARTS_FIT). Section 5.5's load_weights_into_gpt fills
chapter 4's GPTModel from a tiny random GPT-2 that transformers wrote (data/tiny-gpt2.safetensors): its parameters,
its tied output head and its logits are compared with the reference's mapping and with transformers' logits.

Beyond the book's outputs, the grader probes: batches used before they are moved to the device (probe_kit's OnHost
batches fail on a CPU as a CPU batch fails on a GPU), a loss kept as a tensor where a float is promised
(calc_loss_loader, the training loop's lists), a training loop that never switches the model to training mode (it is
handed over in eval mode), top-k on a batch whose rows have different thresholds, and sampling from logits in the
hundreds (a softmax computed by hand overflows). `generate`'s context_size has no default in the book or here, so a
None context is not graded.

Edge cases where the book's editions and the course differ, and what is accepted:
- `generate` on a batch of several prompts with `top_k` or `eos_id`: the book's code handles one prompt at a
  time and raises a RuntimeError for a batch there. That error is accepted; a result, when one comes back,
  must follow the course's rule (rows that end early are padded with `eos_id`, generation stops when every
  row has ended, and the step at which the last rows end is not appended).
- Sampling is compared token for token with the reference's under the same seed, so it must draw with one
  `torch.multinomial(probs, num_samples=1)` per step for the whole batch, as the book does.
- save_checkpoint/load_checkpoint are the course's names for the book's inline code (the file holds
  "model_state_dict" and "optimizer_state_dict"); `load_checkpoint`'s return value and the mode it leaves the
  model in are not graded.
- load_weights_into_gpt: the book's returns nothing, the course's returns the model (the model handed over is
  graded); the book's new parameters share memory with the caller's tensors, the course's are copies, and the
  head is "tied" by value in both: only the values are compared.
"""

import contextlib
import io
import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from checks.ch05_pretraining import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import as_number, error_mentions, expect_close, expect_equal, expect_true, explain_errors, probe
from course.grading.contracts import Fields, ListOf
from course.grading.imports import plain_imports
from course.grading.inputs import randint
from course.grading.mistakes import Mistake, name_mistake
from graders.shared.checkpoints import tiny_checkpoint
from graders.shared.gpt_training import (
    GPT2_TINY,
    LOSS_TYPE_HINT,
    NUM_BATCHES_IGNORED,
    STEPS_FROM_ONE,
    ZERO_GRAD_FORGOTTEN,
    check_calc_loss_batch,
    check_evaluate_model,
    dividing_by_zero,
    expect_floats,
    expect_loader_loss,
    expect_returned,
    expect_trained,
    gpt,
    loader_values,
    reference_loader,
    train_here,
    training_run,
    windows,
)

with plain_imports():
    from reference import gpt as ref_gpt
    from reference import gpt2_weights
    from reference import pretraining as ref
    from reference.tiktoken_offline import get_gpt2_tokenizer


# The parts that the composites call, as the book writes them: a test of a composite runs the student's composite
# on probe_kit's correct stand-ins of them (probe_kit/training_parts.py), so that a bug in a part costs only the
# part's own tests.
LOSS_PARTS = ("calc_loss_batch",)
EVALUATE_PARTS = ("calc_loss_loader", "calc_loss_batch")
SAMPLE_PARTS = ("text_to_token_ids", "token_ids_to_text")
TRAINING_PARTS = ("calc_loss_batch", "calc_loss_loader", "evaluate_model", "generate_and_print_sample",
                  "text_to_token_ids", "token_ids_to_text")

# The one test that runs several of the student's definitions together, and why.
PARTS_FIT = {"test_checkpoint_round_trip": "a checkpoint is a round trip: what save_checkpoint writes must be "
                                           "exactly what load_checkpoint reads back."}

# A small GPT for losses, generation and checkpoints (GPT2_TINY, with GPT-2's vocabulary, is for what goes through
# tiktoken: samples printed during training).
SMALL = {"vocab_size": 61, "context_length": 8, "emb_dim": 12, "n_heads": 3, "n_layers": 2, "drop_rate": 0.1,
         "qkv_bias": False}
VOCAB = SMALL["vocab_size"]

HINT_FLATTEN = ("cross_entropy takes logits of shape (N, vocab_size) and targets of shape (N,): flatten the batch and "
                "token dimensions of both together (N = batch * num_tokens), as section 5.1.2 does.")

# tokenizer.decode got a list of lists: the batch dimension was not removed.
decoding_a_batch = error_mentions("'list' object cannot be interpreted as an integer", hint=(
    "tokenizer.decode takes a flat list of ids: remove the batch dimension (squeeze dim 0) before decoding."))


# -- probes: run in the worker against the student's module (and chapter 5's shared ones: gpt_training.py) ------

@probe(returns=ListOf(length="values"))
def with_gpt2_tokenizer(student, name, values):
    """The student's `name` (text_to_token_ids or token_ids_to_text) on each value, with GPT-2's tokenizer."""
    import tiktoken

    tokenizer = tiktoken.get_encoding("gpt2")
    return [getattr(student, name)(value, tokenizer) for value in values]


@probe(returns=Fields("printed", "training_after"))
def printed_sample(student, cfg, state, start_context, stand_ins=()):
    """What generate_and_print_sample printed (.printed) and the model's mode afterwards (.training_after), on the
    CPU, with the student's functions named in `stand_ins` replaced by probe_kit's correct ones."""
    import contextlib
    import io

    import tiktoken
    from probe_kit.parts import replaced
    from probe_kit.training import loaded_gpt
    from probe_kit.training_parts import stand_ins_for

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).train()
    printed = io.StringIO()
    with replaced(student, **stand_ins_for(*stand_ins)), contextlib.redirect_stdout(printed):
        student.generate_and_print_sample(model, tiktoken.get_encoding("gpt2"), "cpu", start_context)
    return {"printed": printed.getvalue(), "training_after": model.training}


@probe(returns=ListOf(length="cases"))
def generated(student, model_spec, cases):
    """generate on the CPU for each case {"idx", "kwargs", "seed", "batch_may_raise"}, with a GPTModel
    (model_spec {"cfg", "state"}) or a next-token table (model_spec {"table"}: the logits for the next token
    depend only on the last token). A RuntimeError is returned as {"raised": ...} where a batch may raise."""
    from probe_kit.training import NextTokenTable, loaded_gpt

    from reference.gpt import GPTModel

    if "table" in model_spec:
        model = NextTokenTable(model_spec["table"].cpu()).eval()
    else:
        model = loaded_gpt(GPTModel, model_spec["cfg"], model_spec["state"]).eval()
    results = []
    for case in cases:
        torch.manual_seed(case["seed"])
        try:
            results.append(student.generate(model, case["idx"].cpu().clone(), **case["kwargs"]))
        except RuntimeError as exc:
            if not case["batch_may_raise"]:
                raise
            results.append({"raised": f"{type(exc).__name__}: {exc}"[:300]})
    return results


@probe(returns=Fields("keys", "restored", "restored_optimizer", "model_only"))
def checkpoint_round_trip(student, cfg, state, optimizer_state):
    """save_checkpoint of a model and an optimizer, then load_checkpoint into a fresh model and optimizer (and into
    a third model without an optimizer): .keys of the file, the .restored model's state, the .restored_optimizer's
    state_dict, the third model's state (.model_only). The optimizer is a stand-in with the two methods a
    checkpoint uses."""
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    class StandInOptimizer:
        def __init__(self, saved):
            self.saved = saved

        def state_dict(self):
            return self.saved

        def load_state_dict(self, state_dict):
            self.saved = state_dict

    student.save_checkpoint(loaded_gpt(GPTModel, cfg, state), StandInOptimizer(optimizer_state), "checkpoint.pth")
    saved = torch.load("checkpoint.pth", weights_only=True)
    keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__

    torch.manual_seed(1)
    restored = GPTModel(cfg)
    restored_optimizer = StandInOptimizer(None)
    student.load_checkpoint("checkpoint.pth", restored, restored_optimizer)
    torch.manual_seed(2)
    model_only = GPTModel(cfg)
    student.load_checkpoint("checkpoint.pth", model_only)
    return {"keys": keys, "restored": dict(restored.state_dict()), "restored_optimizer": restored_optimizer.saved,
            "model_only": dict(model_only.state_dict())}


# -- section 5.1.1: text <-> token ids ------------------------------------------------------------------------

TEXTS = ["Every effort moves you", "The lamp was lit. <|endoftext|> At dawn,\nthe apprentice slept."]


@pytest.mark.points(1)
@pytest.mark.runs("text_to_token_ids")
def test_text_to_token_ids(submission):
    """text_to_token_ids: GPT-2 token ids as a batch of one, shape (1, num_tokens), <|endoftext|> allowed."""
    got = submission.run(with_gpt2_tokenizer, name="text_to_token_ids", values=TEXTS)
    for ids, text in zip(got, TEXTS):
        expect_equal(ids, ref.text_to_token_ids(text, get_gpt2_tokenizer()), what=f"token ids of {text!r}",
                     hint="encode with the tokenizer, allowing the special token <|endoftext|> (allowed_special), "
                          "then add a batch dimension in front (unsqueeze at dim 0): shape (1, num_tokens).")


@pytest.mark.points(1)
@pytest.mark.runs("token_ids_to_text")
def test_token_ids_to_text(submission):
    """token_ids_to_text: decodes a batch of one, shape (1, num_tokens), and a plain (num_tokens,) tensor."""
    tokenizer = get_gpt2_tokenizer()
    id_tensors = [ref.text_to_token_ids(TEXTS[1], tokenizer), ref.text_to_token_ids(TEXTS[0], tokenizer)[0]]
    with explain_errors(decoding_a_batch):
        got = submission.run(with_gpt2_tokenizer, name="token_ids_to_text", values=id_tensors)
    for text, ids in zip(got, id_tensors):
        expect_equal(text, ref.token_ids_to_text(ids, tokenizer), what=f"text decoded from ids of shape "
                     f"{tuple(ids.shape)}", hint="remove the batch dimension (squeeze dim 0; a tensor without "
                                                 "one stays as it is), then decode the ids as a Python list.")


# -- section 5.1.2: the loss ------------------------------------------------------------------------------------

def loss_with(model, inputs, targets, mistake=None):
    """The mean cross-entropy of `model` on a batch, or what a classic mistake computes instead."""
    with torch.no_grad():
        logits = model(inputs)
    if mistake == "inputs as targets":
        return F.cross_entropy(logits.flatten(0, 1), inputs.flatten())
    if mistake == "targets shifted again":
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
    if mistake == "sum":
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    if mistake == "softmax first":
        return F.cross_entropy(torch.softmax(logits, dim=-1).flatten(0, 1), targets.flatten())
    if mistake == "last position":
        return F.cross_entropy(logits[:, -1], targets[:, -1])
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


LOSS_MISTAKES = [
    Mistake("comparing the logits with the inputs instead of the targets",
            "the targets are the inputs shifted by one token: compare the logits with target_batch.",
            mistake="inputs as targets"),
    Mistake("shifting the targets once more", "target_batch is already shifted by one (the data loader did it): "
            "the logits at position j are compared with target_batch at position j.", mistake="targets shifted again"),
    Mistake("summing the losses instead of averaging them", "use cross_entropy's default reduction (the mean).",
            mistake="sum"),
    Mistake("a softmax before cross_entropy", "cross_entropy applies log-softmax itself: pass it the raw logits.",
            mistake="softmax first"),
    Mistake("the loss of the last position only", "every position of every sequence is one example: the logits "
            "become (batch * num_tokens, vocab_size).", mistake="last position"),
]


@pytest.mark.points(2)
@pytest.mark.runs("calc_loss_batch")
def test_calc_loss_batch(submission):
    """calc_loss_batch: the mean cross-entropy of the next token over every position, with its gradients.

    The batches come as a data loader yields them: they must be moved to the device before they are used.
    """
    check_calc_loss_batch(submission, ref, partial(gpt, 123, SMALL), SMALL, [windows(1, 2, 6, VOCAB),
                                                                            windows(2, 3, 8, VOCAB)],
                          gradients_of=("out_head.weight", "tok_emb.weight"), loss_with=loss_with,
                          mistakes=LOSS_MISTAKES, hint=HINT_FLATTEN, mean_over="every position",
                          gradient_hint="the loss must be computed by cross_entropy from the model's logits for "
                                        "input_batch.", on_host=True)


LOADER_MISTAKES = [
    Mistake("dividing by num_batches when the loader has fewer batches",
            "cut num_batches to the length of the loader, and divide by the number of batches used.",
            mistake="not capped"),
    NUM_BATCHES_IGNORED,
    Mistake("the sum of the batch losses instead of their average", "divide the total by the number of batches.",
            mistake="sum"),
]


# What a loss that should be a float, but is a tensor, is told.
FLOAT_HINT = ("add the batch losses as Python numbers (each batch loss's .item()), so that the average is a float: "
              "a tensor would keep the whole computation graph of its batch alive in the lists of the training "
              "loop.")


@pytest.mark.points(2)
@pytest.mark.runs("calc_loss_loader")
@pytest.mark.stand_ins(*LOSS_PARTS)
def test_calc_loss_loader(submission):
    """calc_loss_loader: the average batch loss (a float) over all or the first num_batches batches; NaN when empty.

    num_batches larger than the loader is cut to its length. Runs on a correct calc_loss_batch.
    """
    model = gpt(123, SMALL)
    inputs, targets = windows(3, 10, 6, VOCAB)
    # (windows, batch_size, num_batches): all 5 batches, the first 2, more than there are, a last partial batch,
    # and an empty loader.
    cases = [(10, 2, None), (10, 2, 2), (10, 2, 9), (7, 2, None), (0, 2, None)]
    with explain_errors(dividing_by_zero):
        got = submission.run(loader_values, name="calc_loss_loader", cfg=SMALL, state=model.state_dict(),
                             inputs=inputs, targets=targets, cases=cases, stand_ins=LOSS_PARTS)
    for result, (rows, batch_size, num_batches) in zip(got, cases):
        loader = reference_loader((inputs[:rows], targets[:rows]), batch_size)
        what = f"calc_loss_loader on {len(loader)} batches" + ("" if num_batches is None else
                                                               f" with num_batches={num_batches}")
        expect_loader_loss(as_number(result.value, what=what, type_hint=LOSS_TYPE_HINT), ref, model, loader,
                           num_batches, what=what, mistakes=LOADER_MISTAKES)
        expect_true(not isinstance(result.value, torch.Tensor), what=what, problem="is a tensor, not a Python float.",
                    hint=FLOAT_HINT)



# -- section 5.2: training --------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("evaluate_model")
@pytest.mark.stand_ins(*EVALUATE_PARTS)
def test_evaluate_model(submission):
    """evaluate_model: training and validation loss over eval_iter batches in eval mode; training mode restored.

    Runs on a correct calc_loss_loader.
    """
    check_evaluate_model(submission, ref, gpt(7, SMALL), SMALL, windows(4, 8, 6, VOCAB), windows(5, 6, 6, VOCAB),
                         type_hint=LOSS_TYPE_HINT, stand_ins=EVALUATE_PARTS)


SAMPLE_PROMPT = "Every evening\nthe lamp"


@pytest.mark.points(1)
@pytest.mark.runs("generate_and_print_sample")
@pytest.mark.stand_ins(*SAMPLE_PARTS)
def test_generate_and_print_sample(submission):
    """generate_and_print_sample: the prompt and 50 greedy tokens on one line; the model left in training mode.

    Runs on correct text_to_token_ids and token_ids_to_text.
    """
    model = gpt(11, GPT2_TINY)
    with explain_errors(decoding_a_batch):
        got = submission.run(printed_sample, cfg=GPT2_TINY, state=model.state_dict(), start_context=SAMPLE_PROMPT,
                             stand_ins=SAMPLE_PARTS)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        ref.generate_and_print_sample(model, get_gpt2_tokenizer(), "cpu", SAMPLE_PROMPT)
    expected = captured.getvalue()
    what = "what generate_and_print_sample printed"

    def diagnose():
        if isinstance(got.printed, str) and got.printed.replace("\n", " ").strip() == expected.strip():
            return "replace each newline of the decoded text by a space before printing it (str.replace)."
        return ("in eval mode, generate 50 new tokens with generate_text_simple, with the model's own context length "
                "(the number of rows of its position embedding) as context_size; decode and print them on one line.")

    expect_true(isinstance(got.printed, str), what=what, problem="nothing could be read.", hint=None)
    expect_equal(got.printed, expected, what=what, hint=diagnose)
    expect_true(got.training_after is True, what="generate_and_print_sample",
                problem="the model is left in eval mode.", hint="switch it back to training mode at the end "
                                                                "(its train() method): training goes on.")


TRAINING = {"batch_size": 2, "lr": 5e-3, "seed": 123}
TRAINING_ARGUMENTS = {"num_epochs": 2, "eval_freq": 2, "eval_iter": 2, "start_context": "Every effort moves you"}
RETURNED = ("train_losses", "val_losses", "track_tokens_seen")


def training_data():
    """3 training batches and 2 validation batches of 2 windows of 10 tokens (ids below 5000)."""
    return windows(6, 6, 10, 5000), windows(7, 4, 10, 5000)


def mistaken_loop(mistake):
    """train_model_simple with one classic mistake, built from the reference's other functions."""

    def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                           start_context, tokenizer):
        train_losses, val_losses, track, tokens_seen, step = [], [], [], 0, -1
        for _epoch in range(num_epochs):
            if mistake != "no train mode":
                model.train()
            for x, y in train_loader:
                if mistake != "no zero_grad":
                    optimizer.zero_grad()
                ref.calc_loss_batch(x, y, model, device).backward()
                optimizer.step()
                tokens_seen += x.shape[0] if mistake == "sequences counted" else x.numel()
                step += 1
                if (step + 1 if mistake == "steps from 1" else step) % eval_freq == 0:
                    losses = ref.evaluate_model(model, train_loader, val_loader, device, eval_iter)
                    train_losses.append(losses[0])
                    val_losses.append(losses[1])
                    track.append(tokens_seen)
            ref.generate_and_print_sample(model, tokenizer, device, start_context)
        return train_losses, val_losses, track

    return train_model_simple


# How the student's loop runs: on correct parts, from a model handed over in eval mode (so that a loop that never
# switches to training mode shows).
RUN_OPTIONS = {"stand_ins": TRAINING_PARTS, "eval_first": True}


def run_with(loop, state, train_data, val_data, mistake=None):
    """What training_run gives with `loop` (or, with a `mistake`, mistaken_loop's) as train_model_simple."""
    loop = loop if mistake is None else mistaken_loop(mistake)
    return train_here(loop, "train_model_simple", GPT2_TINY, state, train_data, val_data, TRAINING,
                      TRAINING_ARGUMENTS, **RUN_OPTIONS)


TRAINING_MISTAKES = [
    ZERO_GRAD_FORGOTTEN,
    Mistake("training the first steps without switching the model to training mode (no dropout)", "switch the "
            "model to training mode (its train() method) at the start of every epoch: the model you are given may "
            "be in eval mode, and evaluate_model only restores training mode after it ran.", mistake="no train mode"),
    STEPS_FROM_ONE,
    Mistake("counting sequences instead of tokens", "count every token of the batch (its number of elements), not "
            "its rows.", mistake="sequences counted"),
]


def same_run(got, candidate) -> bool:
    """Whether the student's lists (train_losses, val_losses, tokens_seen) are those of `candidate` (a run)."""
    train_losses, val_losses, tokens_seen = got
    expected_train, expected_val, expected_tokens = candidate.result
    try:
        if [int(t) for t in tokens_seen] != list(expected_tokens):
            return False
        values = [float(v) for v in train_losses] + [float(v) for v in val_losses]
    except (TypeError, ValueError, RuntimeError):
        return False
    expected = list(expected_train) + list(expected_val)
    return len(values) == len(expected) and all(abs(a - b) < 1e-4 * max(1.0, abs(b)) for a, b in zip(values, expected))


@pytest.mark.points(3)
@pytest.mark.runs("train_model_simple")
@pytest.mark.stand_ins(*TRAINING_PARTS)
def test_train_model_simple(submission):
    """train_model_simple: a short seeded run gives the reference's losses (floats), tokens seen and weights.

    2 epochs of 3 batches, evaluating every 2 steps, with an AdamW and dropout, on the CPU, from a model handed
    over in eval mode; the loop runs on correct calc_loss_batch, evaluate_model and generate_and_print_sample.
    """
    state = gpt(5, GPT2_TINY).state_dict()
    train_data, val_data = training_data()
    got = submission.run(training_run, function="train_model_simple", cfg=GPT2_TINY, state=state,
                         train_data=train_data, val_data=val_data, settings=TRAINING, arguments=TRAINING_ARGUMENTS,
                         **RUN_OPTIONS)
    expected = run_with(ref.train_model_simple, state, train_data, val_data)
    what = "train_model_simple (2 epochs of 3 batches, evaluating every 2 steps)"
    train_losses, val_losses, tokens_seen = expect_returned(got.result, RETURNED, what=what)

    def diagnose():
        return name_mistake(got.result, TRAINING_MISTAKES, partial(run_with, None, state, train_data, val_data),
                            matches=same_run, yours="your run is") or (
            "one optimizer step per batch (reset the gradients, the loss, backward, the optimizer's step), and an "
            "evaluation after steps 0, eval_freq, 2 * eval_freq, ...")

    expect_equal([t.item() if isinstance(t, torch.Tensor) else t for t in tokens_seen], list(expected.result[2]),
                 what=f"{what}: track_tokens_seen", hint=diagnose)
    expect_trained(got, expected, RETURNED[:2], what=what, type_hint=LOSS_TYPE_HINT, hint=diagnose,
                   weights="final_norm.scale")
    expect_floats(train_losses + val_losses, what=f"{what}: train_losses and val_losses")


# -- section 5.3: decoding strategies ---------------------------------------------------------------------------

def table_model(table):
    """The 'model' the generate probe builds from a next-token table (probe_kit's NextTokenTable), built here."""
    from probe_kit.training import NextTokenTable  # registered by course.grading: the file the worker loads

    return NextTokenTable(table)


def generate_with(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None, mistake=None):
    """The course's generate, or the same with one classic mistake (`mistake`), on the trusted side."""
    if mistake == "greedy":
        temperature = 0.0
    finished = torch.zeros(idx.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]
        if top_k is not None and mistake != "top_k ignored":
            if mistake == "exactly k":
                kept = torch.topk(logits, top_k).indices
                logits = torch.full_like(logits, -torch.inf).scatter(1, kept, logits.gather(1, kept))
            elif mistake == "row 0 threshold":
                min_val = torch.topk(logits, top_k).values[0, -1]
                logits = torch.where(logits < min_val, torch.full_like(logits, -torch.inf), logits)
            else:
                k = top_k + 1 if mistake == "k plus 1" else top_k
                min_val = torch.topk(logits, k).values[:, -1:]
                below = logits <= min_val if mistake == "ties dropped" else logits < min_val
                logits = torch.where(below, torch.full_like(logits, -torch.inf), logits)
        if temperature > 0.0:
            if mistake == "multiplied":
                logits = logits * temperature
            elif mistake != "temperature ignored":
                logits = logits / temperature
            logits = logits - logits.max(dim=-1, keepdim=True).values
            idx_next = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if eos_id is not None:
            if mistake == "any row stops all":
                if bool((idx_next == eos_id).any()):
                    break
            elif mistake == "eos appended":
                idx = torch.cat((idx, idx_next), dim=1)
                if bool((idx_next == eos_id).all()):
                    break
                continue
            elif mistake == "no padding":
                finished = finished | (idx_next.squeeze(1) == eos_id)
                if bool(finished.all()):
                    break
            else:
                idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)
                finished = finished | (idx_next.squeeze(1) == eos_id)
                if bool(finished.all()):
                    break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def generated_with(model, case, mistake=None):
    """generate_with for one case, seeded as the probe seeds the student's generate."""
    torch.manual_seed(case["seed"])
    return generate_with(model, case["idx"].clone(), **case["kwargs"], mistake=mistake)


def same_tokens(got, mistaken) -> bool:
    return mistaken.shape == got.shape and torch.equal(mistaken, got)


def expect_generated(got, model, case, *, mistakes, hint, what=None):
    """The student's result for one generate case equals the reference's under the same seed; for a batch where
    the book's code raises a RuntimeError, that error is accepted."""
    if case["batch_may_raise"] and isinstance(got, dict) and "raised" in got:
        return
    what = what or describe(case)
    torch.manual_seed(case["seed"])
    expected = ref.generate(model, case["idx"].clone(), **case["kwargs"])

    def diagnose():
        return name_mistake(got, mistakes, partial(generated_with, model, case), matches=same_tokens,
                            yours="your tokens are") or hint

    expect_true(isinstance(got, torch.Tensor), what=what, problem=f"expected a tensor of token ids, got "
                f"{type(got).__name__}.", hint="return idx, the prompt with the new tokens appended.")
    if got.shape != expected.shape:
        expect_true(False, what=what, problem=f"has shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                    "(batch, prompt length + new tokens).", hint=diagnose())
    expect_equal(got, expected, what=what, hint=diagnose)


def case(idx, seed=0, batch_may_raise=False, **kwargs):
    return {"idx": idx, "kwargs": kwargs, "seed": seed, "batch_may_raise": batch_may_raise}


def describe(case_):
    kwargs = ", ".join(f"{k}={v}" for k, v in case_["kwargs"].items())
    return f"generate({kwargs}) on {tuple(case_['idx'].shape)} prompt ids"


@pytest.mark.points(1)
@pytest.mark.runs("generate")
def test_generate_greedy(submission):
    """generate with temperature 0 (the default) is greedy decoding, cropped to the context size, for a batch."""
    model = gpt(13, SMALL)
    cases = [case(randint(20, 61, 2, 3), max_new_tokens=9, context_size=SMALL["context_length"]),
             case(randint(21, 61, 1, 5), max_new_tokens=6, context_size=4, temperature=0.0, top_k=5)]
    got = submission.run(generated, model_spec={"cfg": SMALL, "state": model.state_dict()}, cases=cases)
    for result, c in zip(got, cases):
        expect_generated(result, model, c, mistakes=[], hint=(
            "with temperature 0, append each row's most likely token (the argmax over the vocabulary, kept as a "
            "(batch, 1) column) at every step, feeding the model only the last context_size tokens."))


# The probabilities of a softmax computed by hand overflowed (exp of large logits is inf, inf / inf is nan).
overflowing_softmax = error_mentions("probability tensor contains", hint=(
    "the probabilities hold inf or nan: exp() of logits in the hundreds overflows. Compute them with torch.softmax, "
    "or subtract each row's largest logit before exponentiating (the softmax does not change)."))

TEMPERATURE_MISTAKES = [
    Mistake("multiplying the logits by the temperature", "divide the logits by the temperature instead.",
            mistake="multiplied"),
    Mistake("sampling without the temperature", "divide the logits by the temperature before the softmax.",
            mistake="temperature ignored"),
    Mistake("greedy decoding", "with temperature > 0, draw the next token from the softmax's probabilities "
            "(torch.multinomial, one draw per row).", mistake="greedy"),
]


@pytest.mark.points(2)
@pytest.mark.depends_on("test_generate_greedy")
@pytest.mark.runs("generate")
def test_generate_temperature(submission):
    """generate with temperature > 0 samples from softmax(logits / temperature), as the reference does."""
    model = gpt(17, SMALL)
    context = SMALL["context_length"]
    cases = [case(randint(22, 61, 1, 4), seed=123, max_new_tokens=12, context_size=context, temperature=1.5),
             case(randint(23, 61, 1, 2), seed=7, max_new_tokens=10, context_size=context, temperature=0.6),
             case(randint(24, 61, 3, 2), seed=3, max_new_tokens=6, context_size=context, temperature=2.0)]
    got = submission.run(generated, model_spec={"cfg": SMALL, "state": model.state_dict()}, cases=cases)
    # Logits in the hundreds, as a confident model gives: exp() of them overflows float32 unless the softmax is
    # computed stably (torch.softmax is).
    large = 100.0 * tied_table()
    large_cases = [case(torch.tensor([[2]]), seed=8, max_new_tokens=10, context_size=4, temperature=1.0)]
    with explain_errors(overflowing_softmax):
        got_large = submission.run(generated, model_spec={"table": large}, cases=large_cases)
    for result, c in zip(got_large, large_cases):
        expect_generated(result, table_model(large), c, mistakes=TEMPERATURE_MISTAKES, hint=(
            "with logits in the hundreds, exp() overflows: compute the probabilities with torch.softmax, or subtract "
            "each row's largest logit first."), what=describe(c) + " with logits in the hundreds")
    for result, c in zip(got, cases):
        expect_generated(result, model, c, mistakes=TEMPERATURE_MISTAKES, hint=(
            "divide the logits by the temperature, take the softmax and draw the next token with torch.multinomial "
            "(one draw per row): one call per step for the whole batch."))


TOP_K_MISTAKES = [
    Mistake("keeping exactly k tokens (dropping tokens tied with the k-th largest logit)",
            "keep every logit that is >= the k-th largest, ties included: only the logits below it become -inf.",
            mistake="exactly k"),
    Mistake("keeping k + 1 tokens", "the k-th largest logit is the last of the top_k values that torch.topk "
            "returns.", mistake="k plus 1"),
    Mistake("one threshold for the whole batch (the k-th largest logit of the first row)", "each row has its own "
            "k-th largest logit: keep the last column of torch.topk's values as a (batch, 1) column, so that the "
            "comparison is row by row.", mistake="row 0 threshold"),
    Mistake("dropping the k-th largest logit and its ties (<= instead of <)",
            "set to -inf only the logits strictly below the k-th largest.", mistake="ties dropped"),
    Mistake("sampling without top-k", "set every logit below the k-th largest to -inf before sampling.",
            mistake="top_k ignored"),
]


def tied_table():
    """Vocabulary 12: after any token, the logits are 5, 3, 3, 3, 1, 0, ... (token 0 is the most likely, tokens 1,
    2 and 3 are tied), shifted by the last token so that the order differs from one step to the next."""
    base = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0] + [0.0] * 7)
    return torch.stack([torch.roll(base, shifts=token) for token in range(12)])


@pytest.mark.points(2)
@pytest.mark.depends_on("test_generate_temperature")
@pytest.mark.runs("generate")
def test_generate_top_k(submission):
    """generate with top_k keeps the logits >= the k-th largest (ties included) and samples from them."""
    table = tied_table()
    gpt_model = gpt(19, SMALL)
    table_cases = [case(torch.tensor([[0]]), seed=11, max_new_tokens=40, context_size=4, temperature=2.0, top_k=2),
                   case(torch.tensor([[5]]), seed=12, max_new_tokens=30, context_size=4, temperature=1.0, top_k=4),
                   case(torch.tensor([[0], [3]]), seed=13, batch_may_raise=True, max_new_tokens=20, context_size=4,
                        temperature=2.0, top_k=2)]
    # A batch whose rows have different k-th largest logits (the book's code raises for a batch: accepted).
    gpt_cases = [case(randint(25, 61, 1, 3), seed=5, max_new_tokens=12, context_size=SMALL["context_length"],
                      temperature=1.0, top_k=3),
                 case(randint(26, 61, 3, 3), seed=6, batch_may_raise=True, max_new_tokens=10,
                      context_size=SMALL["context_length"], temperature=1.0, top_k=4)]
    hint = ("keep the logits that are >= the k-th largest of their own row (the last column of torch.topk's values, "
            "kept as a (batch, 1) column), set the others to -inf, then apply the temperature and sample.")
    got = submission.run(generated, model_spec={"table": table}, cases=table_cases)
    for result, c in zip(got, table_cases):
        expect_generated(result, table_model(table), c, mistakes=TOP_K_MISTAKES, hint=hint,
                         what=describe(c) + " with logits tied at the k-th largest")
    got = submission.run(generated, model_spec={"cfg": SMALL, "state": gpt_model.state_dict()}, cases=gpt_cases)
    for result, c in zip(got, gpt_cases):
        expect_generated(result, gpt_model, c, mistakes=TOP_K_MISTAKES, hint=hint)


EOS = 11
EOS_MISTAKES = [
    Mistake("appending eos_id before stopping", "stop before appending: check the new token first, and break if it "
            "is eos_id.", mistake="eos appended"),
    Mistake("stopping the whole batch when any row chooses eos_id", "a row that has ended gets eos_id as padding "
            "while the other rows go on; stop when every row has ended.", mistake="any row stops all"),
    Mistake("letting rows that have ended go on generating", "once a row has chosen eos_id, append eos_id to it at "
            "every later step (padding).", mistake="no padding"),
]


def chain_table():
    """Vocabulary 12 (eos 11): greedy decoding walks 0 -> 1 -> ... -> 10 -> eos, and eos -> 0."""
    table = torch.zeros(12, 12)
    for token in range(12):
        table[token, (token + 1) % 12] = 4.0
    return table


@pytest.mark.points(2)
@pytest.mark.depends_on("test_generate_greedy")
@pytest.mark.runs("generate")
def test_generate_eos(submission):
    """generate with eos_id stops a sequence before its eos_id, also in a batch whose rows end at different steps.

    In a batch, rows that end early are padded with eos_id until every row has ended (or the book's error).
    """
    table = chain_table()
    cases = [case(torch.tensor([[6, 7]]), max_new_tokens=8, context_size=4, eos_id=EOS),   # ends after 3 new tokens
             case(torch.tensor([[1]]), max_new_tokens=5, context_size=4, eos_id=EOS),      # never reaches eos
             case(torch.tensor([[8]]), max_new_tokens=6, context_size=4),                  # eos_id None: an ordinary id
             case(torch.tensor([[9], [5], [7]]), batch_may_raise=True, max_new_tokens=8, context_size=4,
                  eos_id=EOS)]                                                             # rows end at steps 1, 5, 3
    got = submission.run(generated, model_spec={"table": table}, cases=cases)
    for result, c in zip(got, cases):
        expect_generated(result, table_model(table), c, mistakes=EOS_MISTAKES, hint=(
            "when the new token is eos_id, stop before appending it; in a batch, a row that has ended gets eos_id "
            "at every later step, and generation stops when every row has ended."))


# -- section 5.4: saving and loading ----------------------------------------------------------------------------

HINT_LOADED = "load the file's 'model_state_dict' entry into the model (its load_state_dict method)."
HINT_SAVED = ("save one dict with torch.save: the key 'model_state_dict' holding the model's state_dict() and "
              "'optimizer_state_dict' holding the optimizer's.")


@pytest.mark.points(2)
@pytest.mark.runs("save_checkpoint", "load_checkpoint")
def test_checkpoint_round_trip(submission):
    """save_checkpoint and load_checkpoint: the model's and the optimizer's state survive the round trip.

    load_checkpoint without an optimizer restores the model alone.
    """
    state = gpt(23, SMALL).state_dict()
    generator = torch.Generator().manual_seed(29)
    # An optimizer's state_dict as AdamW's looks: running averages per parameter, and the parameter groups.
    optimizer_state = {"state": {str(i): {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=generator),
                                          "exp_avg_sq": torch.rand(4, generator=generator)} for i in range(2)},
                       "param_groups": [{"lr": 0.0004, "weight_decay": 0.1, "params": [0, 1]}]}
    with explain_errors(error_mentions("Weights only load failed", "UnpicklingError", hint=(
            "save a dict of the two state_dicts (not the model or optimizer objects): a file of plain tensors "
            "that torch.load(path, weights_only=True) can read."))):
        got = submission.run(checkpoint_round_trip, cfg=SMALL, state=state, optimizer_state=optimizer_state)
    expect_true(isinstance(got.keys, list) and {"model_state_dict", "optimizer_state_dict"} <= set(got.keys),
                what="the file save_checkpoint wrote", problem=f"holds {got.keys!r}, not the keys 'model_state_dict' "
                "and 'optimizer_state_dict'.", hint=HINT_SAVED)
    for label, loaded in (("the model loaded with its optimizer", got.restored),
                          ("a model loaded without an optimizer", got.model_only)):
        expect_true(isinstance(loaded, dict) and set(loaded) == set(state), what=label, problem="does not have the "
                    "model's parameters and buffers.", hint=HINT_LOADED)
        for name, tensor in state.items():
            expect_close(loaded[name].float(), tensor.float(), what=f"{label}: {name}", atol=0, rtol=0,
                         hint=HINT_LOADED)
    expect_equal(got.restored_optimizer, optimizer_state, what="the state_dict of the loaded optimizer",
                 hint="load the file's 'optimizer_state_dict' entry into the optimizer when one is given: AdamW's "
                      "running averages and its learning rate are what let training go on where it stopped.")


# -- section 5.5: loading OpenAI's pretrained weights ----------------------------------------------------------
#
# The student's load_weights_into_gpt fills chapter 4's GPTModel (the support code, built in the worker with a fixed
# seed) from a tiny random GPT-2 that transformers wrote in the layout of openai-community/gpt2's model.safetensors
# (data/tiny-gpt2.safetensors). Only the loader is the student's: the model it fills is the course's, so no stand-in
# is needed. The book's loader returns nothing and the course's returns the model: the grader reads the model it
# handed over. The tests compare each parameter with the reference's mapping (which names the parameter), the
# output head with the token embedding, and the logits with those transformers computed for the same weights.

TINY_GPT2 = tiny_checkpoint("gpt2")
GPT2_CFG = {  # the tiny GPT-2's configuration in the book's vocabulary (qkv_bias: GPT-2's projections have biases)
    "vocab_size": TINY_GPT2.config["vocab_size"],
    "context_length": TINY_GPT2.config["n_positions"],
    "emb_dim": TINY_GPT2.config["n_embd"],
    "n_heads": TINY_GPT2.config["n_head"],
    "n_layers": TINY_GPT2.config["n_layer"],
    "drop_rate": 0.0,
    "qkv_bias": True,
}
INIT_SEED = 321  # the seed of the GPTModel the weights are loaded into (what a parameter left alone keeps)
QKV = ("W_query", "W_key", "W_value")
LINEAR_WEIGHTS = (".att.W_query.weight", ".att.W_key.weight", ".att.W_value.weight", ".att.out_proj.weight",
                  ".ff.layers.0.weight", ".ff.layers.2.weight")


@probe(returns=Fields("state", "params_after", "logits"))
def loaded_gpt2(student, cfg, params, input_ids, seed):
    """Chapter 4's GPTModel(cfg), built on the CPU after torch.manual_seed(seed), filled by the student's
    load_weights_into_gpt(model, params): its .state (masks left out), the caller's dict afterwards (.params_after)
    and the model's logits for input_ids in eval mode (.logits)."""
    from reference.gpt import GPTModel

    params = {key: value.cpu() for key, value in params.items()}  # on the CPU, as the book loads a checkpoint
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    student.load_weights_into_gpt(model, params)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids.cpu())
    # Copies: the book's loader makes the model's parameters share memory with the caller's tensors.
    state = {key: value.detach().clone() for key, value in model.state_dict().items() if not key.endswith(".mask")}
    params_after = {key: value.detach().clone() if isinstance(value, torch.Tensor) else repr(value)[:100]
                    for key, value in params.items()}
    return {"state": state, "params_after": params_after, "logits": logits}


def initial_state():
    """The parameters of the GPTModel the probe builds, before loading: what a parameter left alone keeps."""
    torch.manual_seed(INIT_SEED)
    return ref_gpt.GPTModel(GPT2_CFG).state_dict()


def gpt2_mapping(qkv_order=QKV, transposed=True, biases=True, norms_swapped=False, head_tied=True):
    """GPTModel's state (masks left out) from the tiny GPT-2's tensors, as the reference maps them, or as one
    classic mistake does: the query/key/value parts of c_attn in another order, the square Conv1D weights not
    transposed (a weight of another shape would not fit), the biases left at their initial values, LayerNorm's
    scale and shift swapped, the head left as initialised."""
    state = dict(gpt2_weights.convert_gpt2_state_dict(TINY_GPT2.weights, GPT2_CFG))
    initial = initial_state()
    for b in range(GPT2_CFG["n_layers"]):
        att = f"trf_blocks.{b}.att."
        for kind in ("weight", "bias"):
            parts = [state[f"{att}{name}.{kind}"] for name in QKV]
            for name, part in zip(qkv_order, parts):
                state[f"{att}{name}.{kind}"] = part
        for norm in ("norm1", "norm2"):
            if norms_swapped:
                scale, shift = f"trf_blocks.{b}.{norm}.scale", f"trf_blocks.{b}.{norm}.shift"
                state[scale], state[shift] = state[shift], state[scale]
    if norms_swapped:
        state["final_norm.scale"], state["final_norm.shift"] = state["final_norm.shift"], state["final_norm.scale"]
    for key in state:
        if not transposed and key.endswith(LINEAR_WEIGHTS) and state[key].shape[0] == state[key].shape[1]:
            state[key] = state[key].T  # the Conv1D layout, (in, out): it fits a square weight (attention's) silently
        if not biases and key.endswith(".bias"):
            state[key] = initial[key]
    if not head_tied:
        state["out_head.weight"] = initial["out_head.weight"]
    return state


def gpt2_logits(state):
    """The reference GPTModel's logits for the tiny checkpoint's input_ids, with the parameters `state`."""
    model = ref_gpt.GPTModel(GPT2_CFG)
    model.load_state_dict(state, strict=False)  # the masks stay the model's own
    with torch.no_grad():
        return model.eval()(TINY_GPT2.input_ids)


QKV_ORDERS = [order for order in itertools.permutations(QKV) if order != QKV]
WEIGHT_MISTAKES = [
    *[Mistake("splitting c_attn in the wrong order (the query, key and value parts mixed up)",
              "c_attn's last dimension holds the query, then the key, then the value projection, in that order.",
              qkv_order=order) for order in QKV_ORDERS],
    Mistake("the Conv1D weights without a transpose", "GPT-2's Conv1D layers store a weight as (in, out) and "
            "nn.Linear as (out, in): transpose every weight matrix (c_attn's parts, c_proj, c_fc).",
            gives="give", transposed=False),
    Mistake("leaving the biases as the model initialised them", "load every bias too: c_attn's (split like its "
            "weight), c_proj's and c_fc's.", biases=False),
    Mistake("LayerNorm's scale and shift swapped", "ln_1, ln_2 and ln_f's weight is the LayerNorm's scale, its bias "
            "the shift.", norms_swapped=True),
    Mistake("an output head left as the model initialised it", "GPT-2 has no output head of its own: it reuses the "
            "token embedding wte (weight tying), so out_head gets wte's weight.", head_tied=False),
]

HINT_MAPPING = ("each GPT-2 tensor goes to one parameter of GPTModel (section 5.5's table): split c_attn's last "
                "dimension in three for the query, key and value, transpose each Conv1D weight (stored as (in, out)), "
                "and map ln_1, ln_2 and ln_f's weight and bias to scale and shift.")
HINT_TIED = ("GPT-2 ties its output head to the token embedding: the checkpoint has no head of its own, so out_head "
             "gets the weight of wte, of the same shape (vocab_size, emb_dim).")
HINT_UNCHANGED = ("leave the dict you are given as it is: take transposed and split copies into the model, but never "
                  "write them back into params (nor change its tensors in place). The caller may load the same "
                  "weights into a second model.")

# The book's assign helper (and nn.Module's own checks) refuse a tensor of the wrong shape.
shape_refused = error_mentions("Shape mismatch", "size mismatch", "shape", hint=(
    "a tensor did not fit its parameter: GPT-2's Conv1D layers store a weight as (in, out), nn.Linear as (out, in), "
    "so transpose every weight matrix; and c_attn holds three projections side by side (split its last dimension)."))


def load_tiny_gpt2(submission):
    """The student's loader on the tiny GPT-2, with errors explained."""
    with explain_errors(shape_refused):
        return submission.run(loaded_gpt2, cfg=GPT2_CFG, params=TINY_GPT2.weights, input_ids=TINY_GPT2.input_ids,
                              seed=INIT_SEED)


def expect_parameter(got, key, expected, *, hint):
    """One parameter of the student's model equals the reference mapping's; a classic mistake is named."""
    expect_true(key in got, what=f"the model's parameter {key}", problem="is missing from the model's state_dict "
                "after loading.", hint="assign the new parameters to the model's own attributes (the names of "
                "chapter 4's GPTModel).")
    expect_close(got[key].float(), expected[key], what=f"the model's parameter {key} after loading", atol=1e-6,
                 rtol=0, hint=hint, mistakes=WEIGHT_MISTAKES, mistaken=lambda **change: gpt2_mapping(**change)[key],
                 yours="your values are")


@pytest.mark.points(2)
@pytest.mark.runs("load_weights_into_gpt")
def test_load_weights_into_gpt_parameters(submission):
    """load_weights_into_gpt: every parameter of GPTModel (the output head aside) holds its GPT-2 tensor, split and
    transposed as the reference maps it, and the caller's params are left as they were."""
    got = load_tiny_gpt2(submission)
    expected = gpt2_mapping()
    for key in expected:
        if key != "out_head.weight":
            expect_parameter(got.state, key, expected, hint=HINT_MAPPING)
    params = TINY_GPT2.weights
    expect_true(set(got.params_after) == set(params), what="the caller's params after loading", problem=(
                f"the keys changed: {sorted(set(got.params_after) ^ set(params))[:3]} were added or removed."),
                hint=HINT_UNCHANGED)
    for key, tensor in params.items():
        after = got.params_after[key]
        expect_true(isinstance(after, torch.Tensor) and after.shape == tensor.shape and torch.equal(after, tensor),
                    what=f"the caller's params[{key!r}] after loading", problem="changed (its shape or its "
                    "values): load_weights_into_gpt must only read the tensors it is given.", hint=HINT_UNCHANGED)



@pytest.mark.points(1)
@pytest.mark.runs("load_weights_into_gpt")
def test_load_weights_into_gpt_tied_head(submission):
    """load_weights_into_gpt ties the output head to the token embedding: out_head's weight equals wte's."""
    got = load_tiny_gpt2(submission)
    expect_parameter(got.state, "out_head.weight", gpt2_mapping(), hint=HINT_TIED)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_load_weights_into_gpt_parameters", "test_load_weights_into_gpt_tied_head")
@pytest.mark.runs("load_weights_into_gpt")
def test_load_weights_into_gpt_logits(submission):
    """GPTModel loaded with load_weights_into_gpt computes the logits that transformers' GPT2LMHeadModel computes for
    the same tiny random GPT-2 (to 1e-4)."""
    got = load_tiny_gpt2(submission)
    expect_close(got.logits, TINY_GPT2.logits, what="the logits of the loaded model for two sequences of 12 tokens",
                 atol=1e-4, hint=HINT_MAPPING + " " + HINT_TIED, mistakes=WEIGHT_MISTAKES,
                 mistaken=lambda **change: gpt2_logits(gpt2_mapping(**change)), yours="your logits are")
