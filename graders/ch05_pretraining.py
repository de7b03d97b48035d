"""Grader of chapter 5: pretraining on unlabeled data.

The student's functions are run against models the grader builds in the worker from the support code
(reference.gpt's GPTModel, the model of chapter 4) and loads with the weights of a seeded reference model, so
a student whose chapter 4 is broken can still do chapter 5. The losses run on the grading device; whatever is
compared token for token or step for step (greedy and sampled generation, the training run, whose dropout
draws from the random generator) runs on the CPU, where a fixed seed gives the same numbers as the reference.

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
"""

import contextlib
import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from checks.ch05_pretraining import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, expect_close, expect_equal, expect_true, probe
from course.grading.diagnosis import explain_errors
from course.grading.imports import plain_imports
from course.grading.inputs import randint, reference_module
from course.worker.runtime.records import ErrorKind

with plain_imports():
    from reference import pretraining as ref
    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer


# The student's code that evaluating and printing a sample run (@pytest.mark.runs), as the book writes them.
EVALUATE = ("evaluate_model", "calc_loss_loader", "calc_loss_batch")
SAMPLE = ("generate_and_print_sample", "text_to_token_ids", "token_ids_to_text")

# A small GPT for losses, generation and checkpoints, and one with GPT-2's vocabulary for what goes through
# tiktoken (samples printed during training).
SMALL = {"vocab_size": 61, "context_length": 8, "emb_dim": 12, "n_heads": 3, "n_layers": 2, "drop_rate": 0.1,
         "qkv_bias": False}
GPT2_TINY = {"vocab_size": 50257, "context_length": 12, "emb_dim": 8, "n_heads": 2, "n_layers": 1,
             "drop_rate": 0.1, "qkv_bias": False}

HINT_FLATTEN = ("cross_entropy takes logits of shape (N, vocab_size) and targets of shape (N,): flatten both with "
                "logits.flatten(0, 1) and target_batch.flatten().")


def small_model(seed=123, cfg=SMALL):
    return reference_module(GPTModel, seed, cfg=cfg)


def windows(seed, rows, num_tokens, vocab_size):
    """`rows` windows of a random token stream and their targets (the same stream shifted by one)."""
    stream = randint(seed, vocab_size, rows * num_tokens + 1)
    return stream[:-1].reshape(rows, num_tokens), stream[1:].reshape(rows, num_tokens)


def as_number(value, *, what):
    """A student's loss as a float64 tensor of shape (): Python numbers and one-element tensors are accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        expect_true(False, what=what, problem=f"expected a number, got {type(value).__name__}.",
                    hint="return the average loss as a Python float (total_loss / num_batches).")
    if isinstance(value, torch.Tensor):
        expect_true(value.numel() == 1, what=what, problem=f"expected one number, got a tensor of shape "
                    f"{tuple(value.shape)}.", hint="return a single number, e.g. loss.item().")
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


def error_mentions(*phrases, hint):
    """A diagnosis: `hint` for an error raised in the student's code whose message contains one of `phrases`."""

    def diagnose(record):
        raised = record.kind is ErrorKind.RAISED
        return hint if raised and any(p in f"{record.type}: {record.message}" for p in phrases) else None

    return diagnose


# tokenizer.decode got a list of lists: the batch dimension was not removed.
decoding_a_batch = error_mentions("'list' object cannot be interpreted as an integer", hint=(
    "tokenizer.decode takes a flat list of ids: remove the batch dimension with token_ids.squeeze(0) first."))


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="texts"))
def encode_texts(student, texts):
    import tiktoken

    tokenizer = tiktoken.get_encoding("gpt2")
    return [student.text_to_token_ids(text, tokenizer) for text in texts]


@probe(returns=ListOf(length="id_tensors"))
def decode_ids(student, id_tensors):
    import tiktoken

    tokenizer = tiktoken.get_encoding("gpt2")
    return [student.token_ids_to_text(ids, tokenizer) for ids in id_tensors]


@probe(returns=ListOf(ListOf(length=2), length="batches"))
def batch_losses(student, cfg, state, batches):
    """[loss, gradient of the output head and the token embedding (or None)] for each (inputs, targets)."""
    from reference.gpt import GPTModel

    model = GPTModel(cfg).to(DEVICE)
    model.load_state_dict(state)
    model.eval()
    results = []
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        loss = student.calc_loss_batch(inputs, targets, model, DEVICE)
        gradients = None
        if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            loss.sum().backward()
            gradients = [model.out_head.weight.grad, model.tok_emb.weight.grad]
        results.append([loss.detach() if isinstance(loss, torch.Tensor) else loss, gradients])
    return results


@probe(returns=ListOf(length="cases"))
def loader_losses(student, cfg, state, inputs, targets, cases):
    """calc_loss_loader for each (rows, batch_size, num_batches): a loader over the first `rows` windows."""
    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    model = GPTModel(cfg).to(DEVICE)
    model.load_state_dict(state)
    model.eval()
    results = []
    for rows, batch_size, num_batches in cases:
        loader = DataLoader(TensorDataset(inputs[:rows], targets[:rows]), batch_size=batch_size, shuffle=False)
        with torch.no_grad():
            if num_batches is None:
                results.append(student.calc_loss_loader(loader, model, DEVICE))
            else:
                results.append(student.calc_loss_loader(loader, model, DEVICE, num_batches=num_batches))
    return results


@probe(returns=ListOf(length=3))
def evaluate_twice(student, cfg, state, train_data, val_data, batch_size, eval_iter):
    """evaluate_model on a model in training mode, twice (after two different seeds): [first result, second
    result, the model's training flag after the first call]."""
    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    model = GPTModel(cfg).to(DEVICE)
    model.load_state_dict(state)
    train_loader = DataLoader(TensorDataset(*train_data), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=batch_size, shuffle=False)
    results = []
    for seed in (1, 2):
        model.train()
        torch.manual_seed(seed)
        result = student.evaluate_model(model, train_loader, val_loader, DEVICE, eval_iter)
        results.append(list(result) if isinstance(result, tuple) else result)
        if seed == 1:
            training_after = model.training
    return [results[0], results[1], training_after]


@probe(returns=ListOf(length=2))
def printed_sample(student, cfg, state, start_context):
    """[what generate_and_print_sample printed, the model's training flag afterwards] (on the CPU)."""
    import contextlib
    import io

    import tiktoken

    from reference.gpt import GPTModel

    model = GPTModel(cfg)
    model.load_state_dict(state)
    model.train()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        student.generate_and_print_sample(model, tiktoken.get_encoding("gpt2"), "cpu", start_context)
    return [printed.getvalue(), model.training]


@probe(returns=ListOf(length=3))
def training_run(student, function, cfg, state, train_data, val_data, settings, arguments):
    """The student's training loop `function` on the CPU, from the given weights, with a fixed seed, called as
    function(model, train_loader, val_loader, optimizer, "cpu", **arguments, tokenizer=GPT-2's).

    The optimizer is AdamW (decoupled weight decay) written out here, not torch.optim's: the loops use only its
    zero_grad(), step() and param_groups, and it records at every step() [the learning rate of its first group,
    the total L2 norm of the gradients]. Returns [the loop's result, those records, the final weights of the
    last LayerNorm]. The grader runs this very function with the reference's loop to get the expected values.
    """
    import contextlib
    import io
    import math

    import tiktoken
    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    class RecordingAdamW:
        def __init__(self, params, lr, weight_decay):
            self.param_groups = [{"params": list(params), "lr": lr, "weight_decay": weight_decay,
                                  "betas": (0.9, 0.999), "eps": 1e-8}]
            self.moments = {}
            self.records = []

        def zero_grad(self, set_to_none=True):
            for group in self.param_groups:
                for param in group["params"]:
                    if set_to_none:
                        param.grad = None
                    elif param.grad is not None:
                        param.grad.detach_()
                        param.grad.zero_()

        @torch.no_grad()
        def step(self, closure=None):
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            norm = math.sqrt(sum(float((grad.double() ** 2).sum()) for grad in grads))
            self.records.append([float(self.param_groups[0]["lr"]), norm])
            for group in self.param_groups:
                lr, (beta1, beta2) = float(group["lr"]), group["betas"]
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    moment = self.moments.setdefault(param, [0, torch.zeros_like(param), torch.zeros_like(param)])
                    moment[0] += 1
                    param.mul_(1 - lr * group["weight_decay"])
                    moment[1].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                    moment[2].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                    denom = (moment[2].sqrt() / math.sqrt(1 - beta2 ** moment[0])).add_(group["eps"])
                    param.addcdiv_(moment[1], denom, value=-lr / (1 - beta1 ** moment[0]))

    model = GPTModel(cfg)
    model.load_state_dict(state)
    train_loader = DataLoader(TensorDataset(*[t.cpu() for t in train_data]), batch_size=settings["batch_size"],
                              shuffle=False)
    val_loader = DataLoader(TensorDataset(*[t.cpu() for t in val_data]), batch_size=settings["batch_size"],
                            shuffle=False)
    optimizer = RecordingAdamW(model.parameters(), lr=settings["lr"], weight_decay=0.1)
    torch.manual_seed(settings["seed"])
    with contextlib.redirect_stdout(io.StringIO()):
        result = getattr(student, function)(model, train_loader, val_loader, optimizer, "cpu", **arguments,
                                            tokenizer=tiktoken.get_encoding("gpt2"))
    if isinstance(result, (list, tuple)):
        result = [list(part) if isinstance(part, tuple) else part for part in result]
    return [result, optimizer.records, model.final_norm.scale.detach()]


@probe(returns=ListOf(length="cases"))
def generated(student, model_spec, cases):
    """generate on the CPU for each case {"idx", "kwargs", "seed", "batch_may_raise"}, with a GPTModel
    (model_spec {"cfg", "state"}) or a next-token table (model_spec {"table"}: the logits for the next token
    depend only on the last token). A RuntimeError is returned as {"raised": ...} where a batch may raise."""
    from reference.gpt import GPTModel

    class NextTokenTable(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.register_buffer("table", table)

        def forward(self, idx):
            return self.table[idx]  # (batch, num_tokens, vocab_size)

    if "table" in model_spec:
        model = NextTokenTable(model_spec["table"].cpu()).eval()
    else:
        model = GPTModel(model_spec["cfg"])
        model.load_state_dict(model_spec["state"])
        model.eval()
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


@probe(returns=ListOf(length=4))
def checkpoint_round_trip(student, cfg, state, optimizer_state):
    """save_checkpoint of a model and an optimizer, then load_checkpoint into a fresh model and optimizer (and into
    a third model without an optimizer): [the keys of the file, the loaded model's state, the loaded optimizer's
    state_dict, the third model's state]. The optimizer is a stand-in with the two methods a checkpoint uses."""
    from reference.gpt import GPTModel

    class StandInOptimizer:
        def __init__(self, saved):
            self.saved = saved

        def state_dict(self):
            return self.saved

        def load_state_dict(self, state_dict):
            self.saved = state_dict

    model = GPTModel(cfg)
    model.load_state_dict(state)
    student.save_checkpoint(model, StandInOptimizer(optimizer_state), "checkpoint.pth")
    saved = torch.load("checkpoint.pth", weights_only=True)
    keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__

    torch.manual_seed(1)
    restored = GPTModel(cfg)
    restored_optimizer = StandInOptimizer(None)
    student.load_checkpoint("checkpoint.pth", restored, restored_optimizer)
    torch.manual_seed(2)
    model_only = GPTModel(cfg)
    student.load_checkpoint("checkpoint.pth", model_only)
    return [keys, dict(restored.state_dict()), restored_optimizer.saved, dict(model_only.state_dict())]


# -- section 5.1.1: text <-> token ids ------------------------------------------------------------------------

TEXTS = ["Every effort moves you", "The lamp was lit. <|endoftext|> At dawn,\nthe apprentice slept."]


@pytest.mark.points(1)
@pytest.mark.runs("text_to_token_ids")
def test_text_to_token_ids(submission):
    """text_to_token_ids: GPT-2 token ids as a batch of one, shape (1, num_tokens), <|endoftext|> allowed."""
    got = submission.run(encode_texts, texts=TEXTS)
    tokenizer = get_gpt2_tokenizer()
    for index, text in enumerate(TEXTS):
        expect_equal(got[index], ref.text_to_token_ids(text, tokenizer), what=f"token ids of {text!r}",
                     hint="tokenizer.encode(text, allowed_special={'<|endoftext|>'}), then torch.tensor(...)"
                          ".unsqueeze(0) to add the batch dimension.")


@pytest.mark.points(1)
@pytest.mark.runs("token_ids_to_text")
def test_token_ids_to_text(submission):
    """token_ids_to_text: decodes a batch of one, shape (1, num_tokens), and a plain (num_tokens,) tensor."""
    tokenizer = get_gpt2_tokenizer()
    ids = ref.text_to_token_ids(TEXTS[1], tokenizer)
    id_tensors = [ids, ref.text_to_token_ids(TEXTS[0], tokenizer)[0]]
    with explain_errors(decoding_a_batch):
        got = submission.run(decode_ids, id_tensors=id_tensors)
    for index, tensor in enumerate(id_tensors):
        expect_equal(got[index], ref.token_ids_to_text(tensor, tokenizer),
                     what=f"text decoded from ids of shape {tuple(tensor.shape)}",
                     hint="remove the batch dimension with token_ids.squeeze(0), then "
                          "tokenizer.decode(flat.tolist()).")


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
    ("inputs as targets", "comparing the logits with the inputs instead of the targets",
     "the targets are the inputs shifted by one token: use target_batch."),
    ("targets shifted again", "shifting the targets once more",
     "target_batch is already shifted by one (the data loader did it): compare logits[:, j] with "
     "target_batch[:, j]."),
    ("sum", "summing the losses instead of averaging them", "use cross_entropy's default reduction (the mean)."),
    ("softmax first", "a softmax before cross_entropy",
     "cross_entropy applies log-softmax itself: pass it the raw logits."),
    ("last position", "the loss of the last position only", "every position of every sequence is one example: "
     "flatten the logits to (batch * num_tokens, vocab_size)."),
]


def name_loss_mistake(model, inputs, targets, got):
    for mistake, description, fix in LOSS_MISTAKES:
        candidate = loss_with(model, inputs, targets, mistake).double()
        if torch.allclose(got, candidate, atol=1e-4, rtol=1e-4):
            return f"your loss is exactly what {description} gives: {fix}"
    return None


@pytest.mark.points(2)
@pytest.mark.runs("calc_loss_batch")
def test_calc_loss_batch(submission):
    """calc_loss_batch: the mean cross-entropy of the next token over every position, with its gradients."""
    model = small_model()
    batches = [windows(1, 2, 6, SMALL["vocab_size"]), windows(2, 3, 8, SMALL["vocab_size"])]
    with explain_errors(error_mentions("Expected target size", "Expected input batch_size", hint=HINT_FLATTEN)):
        got = submission.run(batch_losses, cfg=SMALL, state=model.state_dict(), batches=batches)
    for index, (inputs, targets) in enumerate(batches):
        what = f"loss of a batch of shape {tuple(inputs.shape)}"
        loss, gradients = got[index]
        expect_true(isinstance(loss, torch.Tensor), what=what, problem=f"expected a tensor, got "
                    f"{type(loss).__name__}.", hint="return the loss tensor itself (not loss.item()): training calls "
                                                    "loss.backward() on it.")
        expect_true(loss.numel() == 1, what=what, problem=f"expected a single number (the mean over every "
                    f"position), got a tensor of shape {tuple(loss.shape)}.", hint=HINT_FLATTEN)
        loss = loss.reshape(())
        expected = loss_with(model, inputs, targets)

        def diagnose(got=loss.double(), inputs=inputs, targets=targets):  # noqa: B008 (bound now, on purpose)
            return name_loss_mistake(model, inputs, targets, got) or HINT_FLATTEN

        expect_close(loss, expected, what=what, hint=diagnose)
        expect_true(gradients is not None, what=what, problem="the loss has no gradient: it is not connected to the "
                    "model's weights.", hint="return the tensor cross_entropy gives, without .item(), .detach() or "
                                             "torch.no_grad().")
        reference = small_model()
        reference.zero_grad()
        ref.calc_loss_batch(inputs, targets, reference, "cpu").backward()
        for name, grad, expected_grad in zip(("out_head.weight", "tok_emb.weight"), gradients,
                                             (reference.out_head.weight.grad, reference.tok_emb.weight.grad)):
            expect_close(grad, expected_grad, what=f"{what}: gradient of {name}", atol=1e-5, rtol=1e-4,
                         hint="the loss must be computed from model(input_batch) by cross_entropy.")


def loader_loss_with(model, loader, num_batches, mistake=None):
    """calc_loss_loader, or a classic mistake of it."""
    if mistake is None:
        return ref.calc_loss_loader(loader, model, "cpu", num_batches)
    if len(loader) == 0:
        return None
    losses = [ref.calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
    if mistake == "not capped":
        return sum(losses[:num_batches or len(losses)]) / (num_batches or len(losses))
    if mistake == "num_batches ignored":
        return sum(losses) / len(losses)
    if mistake == "sum":
        return sum(losses[:num_batches or len(losses)])
    return None


LOADER_MISTAKES = [
    ("not capped", "dividing by num_batches when the loader has fewer batches",
     "use min(num_batches, len(data_loader)) batches, and divide by that number."),
    ("num_batches ignored", "averaging over all batches whatever num_batches says",
     "stop after the first num_batches batches."),
    ("sum", "the sum of the batch losses instead of their average", "divide the total by the number of batches."),
]


@pytest.mark.points(2)
@pytest.mark.depends_on("test_calc_loss_batch")
@pytest.mark.runs("calc_loss_loader", "calc_loss_batch")
def test_calc_loss_loader(submission):
    """calc_loss_loader: the average batch loss over all or the first num_batches batches; NaN when empty.

    num_batches larger than the loader is cut to its length.
    """
    model = small_model()
    inputs, targets = windows(3, 10, 6, SMALL["vocab_size"])
    # (windows, batch_size, num_batches): all 5 batches, the first 2, more than there are, a last partial batch,
    # and an empty loader.
    cases = [(10, 2, None), (10, 2, 2), (10, 2, 9), (7, 2, None), (0, 2, None)]
    with explain_errors(error_mentions("ZeroDivisionError", hint="an empty loader has no batches: return "
                                       "float('nan') before dividing, as the book does.")):
        got = submission.run(loader_losses, cfg=SMALL, state=model.state_dict(), inputs=inputs, targets=targets,
                             cases=cases)
    for index, (rows, batch_size, num_batches) in enumerate(cases):
        loader = DataLoader(TensorDataset(inputs[:rows], targets[:rows]), batch_size=batch_size, shuffle=False)
        what = (f"calc_loss_loader on {len(loader)} batches" + ("" if num_batches is None else
                                                                 f" with num_batches={num_batches}"))
        value = as_number(got[index], what=what)
        with torch.no_grad():
            expected = torch.tensor(loader_loss_with(model, loader, num_batches), dtype=torch.float64)

        def diagnose(value=value, loader=loader, num_batches=num_batches):
            if len(loader) == 0:
                return "an empty loader has no batches to average: return float('nan'), as the book does."
            with torch.no_grad():
                for mistake, description, fix in LOADER_MISTAKES:
                    candidate = loader_loss_with(model, loader, num_batches, mistake)
                    if candidate is not None and abs(float(value) - candidate) < 1e-4 * max(1.0, abs(candidate)):
                        return f"your result is exactly what {description} gives: {fix}"
            return "add calc_loss_batch(...).item() over the batches and divide by the number of batches used."

        expect_close(value, expected, what=what, atol=1e-5, rtol=1e-5, hint=diagnose)


# -- section 5.2: training --------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.depends_on("test_calc_loss_loader")
@pytest.mark.runs(*EVALUATE)
def test_evaluate_model(submission):
    """evaluate_model: training and validation loss over eval_iter batches in eval mode; training mode restored."""
    model = small_model(7)
    train_data = windows(4, 8, 6, SMALL["vocab_size"])
    val_data = windows(5, 6, 6, SMALL["vocab_size"])
    batch_size, eval_iter = 2, 3
    first, second, training_after = submission.run(
        evaluate_twice, cfg=SMALL, state=model.state_dict(), train_data=train_data, val_data=val_data,
        batch_size=batch_size, eval_iter=eval_iter)
    train_loader = DataLoader(TensorDataset(*train_data), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=batch_size, shuffle=False)
    expected = ref.evaluate_model(model, train_loader, val_loader, "cpu", eval_iter)
    what = f"evaluate_model with eval_iter={eval_iter}"
    expect_true(isinstance(first, list) and len(first) == 2, what=what, problem="expected a pair "
                "(train_loss, val_loss).", hint="return train_loss, val_loss.")
    values = [as_number(v, what=f"{what}: {name}") for v, name in zip(first, ("train_loss", "val_loss"))]
    again = [as_number(v, what=what) for v in second] if isinstance(second, list) and len(second) == 2 else None

    def diagnose():
        if again is not None and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(values, again)):
            return ("two calls gave different losses, so dropout was still on: call model.eval() before computing "
                    "the losses.")
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, reversed(expected))):
            return "your pair is the wrong way round: return train_loss, val_loss."
        with torch.no_grad():
            every_batch = [ref.calc_loss_loader(loader, model.eval(), "cpu") for loader in (train_loader, val_loader)]
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, every_batch)):
            return "you averaged over every batch: pass num_batches=eval_iter to calc_loss_loader."
        return "calc_loss_loader(..., num_batches=eval_iter) for each loader, under torch.no_grad(), in eval mode."

    for name, value, expected_value in zip(("training loss", "validation loss"), values, expected):
        expect_close(value, torch.tensor(expected_value, dtype=torch.float64), what=f"{what}: {name}", atol=1e-5,
                     rtol=1e-5, hint=diagnose)
    expect_true(training_after is True, what=what, problem="the model is left in eval mode after the evaluation.",
                hint="call model.train() before returning: training goes on after each evaluation, with dropout.")


SAMPLE_PROMPT = "Every evening\nthe lamp"


@pytest.mark.points(1)
@pytest.mark.depends_on("test_text_to_token_ids", "test_token_ids_to_text")
@pytest.mark.runs(*SAMPLE)
def test_generate_and_print_sample(submission):
    """generate_and_print_sample: the prompt and 50 greedy tokens on one line; the model left in training mode."""
    model = small_model(11, GPT2_TINY)
    with explain_errors(decoding_a_batch):
        printed, training_after = submission.run(printed_sample, cfg=GPT2_TINY, state=model.state_dict(),
                                                 start_context=SAMPLE_PROMPT)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        ref.generate_and_print_sample(model, get_gpt2_tokenizer(), "cpu", SAMPLE_PROMPT)
    expected = captured.getvalue()
    what = "what generate_and_print_sample printed"

    def diagnose():
        if isinstance(printed, str) and printed.replace("\n", " ").strip() == expected.strip():
            return "replace the newlines of the decoded text by spaces: print(decoded_text.replace('\\n', ' '))."
        return ("generate 50 new tokens with generate_text_simple(model=model, idx=encoded, max_new_tokens=50, "
                "context_size=model.pos_emb.weight.shape[0]) in eval mode, decode them and print them on one line.")

    expect_true(isinstance(printed, str), what=what, problem="nothing could be read.", hint=None)
    expect_equal(printed, expected, what=what, hint=diagnose)
    expect_true(training_after is True, what="generate_and_print_sample",
                problem="the model is left in eval mode.", hint="call model.train() at the end: training goes on.")


TRAINING = {"batch_size": 2, "lr": 5e-3, "seed": 123}
TRAINING_ARGUMENTS = {"num_epochs": 2, "eval_freq": 2, "eval_iter": 2, "start_context": "Every effort moves you"}


def training_data():
    """3 training batches and 2 validation batches of 2 windows of 10 tokens (ids below 5000)."""
    return windows(6, 6, 10, 5000), windows(7, 4, 10, 5000)


def mistaken_loop(mistake):
    """train_model_simple with one classic mistake, built from the reference's other functions."""

    def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                           start_context, tokenizer):
        train_losses, val_losses, track, tokens_seen, step = [], [], [], 0, -1
        for _epoch in range(num_epochs):
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
                    if mistake == "eval mode kept":
                        model.eval()
                    train_losses.append(losses[0])
                    val_losses.append(losses[1])
                    track.append(tokens_seen)
            ref.generate_and_print_sample(model, tokenizer, device, start_context)
        return train_losses, val_losses, track

    return train_model_simple


def reference_run(loop, state, train_data, val_data):
    """What training_run gives with `loop` as the student's train_model_simple (run here, on the CPU)."""
    get_gpt2_tokenizer()  # tiktoken.get_encoding("gpt2") works offline from now on
    return training_run(SimpleNamespace(train_model_simple=loop), "train_model_simple", GPT2_TINY, state,
                        train_data, val_data, TRAINING, TRAINING_ARGUMENTS)


TRAINING_MISTAKES = [
    ("no zero_grad", "training without optimizer.zero_grad()",
     "call optimizer.zero_grad() at every step: otherwise the gradients of all earlier steps add up."),
    ("eval mode kept", "training on in eval mode after the first evaluation (no dropout)",
     "evaluate_model must call model.train() at its end, so that dropout is on again."),
    ("steps from 1", "counting the steps from 1 (evaluating after steps 1, 3, ...)",
     "global_step starts at -1 and is increased after each step, so the first evaluation is after step 0."),
    ("sequences counted", "counting sequences instead of tokens", "tokens_seen += input_batch.numel()."),
]


def same_run(candidate, train_losses, val_losses, tokens_seen) -> bool:
    """Whether the student's lists are those of `candidate` (a training_run result)."""
    expected_train, expected_val, expected_tokens = candidate[0]
    try:
        if [int(t) for t in tokens_seen] != list(expected_tokens):
            return False
        got = [float(v) for v in train_losses] + [float(v) for v in val_losses]
    except (TypeError, ValueError, RuntimeError):
        return False
    expected = list(expected_train) + list(expected_val)
    return len(got) == len(expected) and all(abs(a - b) < 1e-4 * max(1.0, abs(b)) for a, b in zip(got, expected))


@pytest.mark.points(3)
@pytest.mark.depends_on("test_calc_loss_batch", "test_evaluate_model", "test_generate_and_print_sample")
@pytest.mark.runs("train_model_simple", *EVALUATE, *SAMPLE)
def test_train_model_simple(submission):
    """train_model_simple: a short seeded run gives the reference's losses, tokens seen and weights.

    2 epochs of 3 batches, evaluating every 2 steps, with an AdamW and dropout, on the CPU.
    """
    state = small_model(5, GPT2_TINY).state_dict()
    train_data, val_data = training_data()
    with explain_errors(decoding_a_batch):
        got, _, final_scale = submission.run(training_run, function="train_model_simple", cfg=GPT2_TINY,
                                             state=state, train_data=train_data, val_data=val_data,
                                             settings=TRAINING, arguments=TRAINING_ARGUMENTS)
    (expected_train, expected_val, expected_tokens), _, expected_scale = reference_run(
        ref.train_model_simple, state, train_data, val_data)
    what = "train_model_simple (2 epochs of 3 batches, evaluating every 2 steps)"
    expect_true(isinstance(got, list) and len(got) == 3, what=what, problem="expected three lists "
                "(train_losses, val_losses, track_tokens_seen).",
                hint="return train_losses, val_losses, track_tokens_seen.")
    train_losses, val_losses, tokens_seen = got
    for name, value in (("train_losses", train_losses), ("val_losses", val_losses),
                        ("track_tokens_seen", tokens_seen)):
        expect_true(isinstance(value, list), what=f"{what}: {name}", problem=f"expected a list, got "
                    f"{type(value).__name__}.", hint=None)

    def diagnose():
        for mistake, description, fix in TRAINING_MISTAKES:
            if same_run(reference_run(mistaken_loop(mistake), state, train_data, val_data), train_losses,
                        val_losses, tokens_seen):
                return f"your run is exactly what {description} gives: {fix}"
        return ("one optimizer step per batch (zero_grad, loss, backward, step), and an evaluation after steps 0, "
                "eval_freq, 2 * eval_freq, ...")

    expect_equal([t.item() if isinstance(t, torch.Tensor) else t for t in tokens_seen], list(expected_tokens),
                 what=f"{what}: track_tokens_seen", hint=diagnose)
    for name, value, expected_values in (("train_losses", train_losses, expected_train),
                                         ("val_losses", val_losses, expected_val)):
        numbers = torch.stack([as_number(v, what=f"{what}: {name}") for v in value]) if value else \
            torch.zeros(0, dtype=torch.float64)
        expect_close(numbers, torch.tensor(expected_values, dtype=torch.float64), what=f"{what}: {name}",
                     atol=1e-4, rtol=1e-4, hint=diagnose)
    expect_close(final_scale, expected_scale, what=f"{what}: final_norm.scale after training", atol=1e-4, rtol=1e-4,
                 hint=diagnose)


# -- section 5.3: decoding strategies ---------------------------------------------------------------------------

class NextTokenTable(nn.Module):
    """A 'model' whose logits for the next token depend only on the last token: table[last token]."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx):
        return self.table[idx]  # (batch, num_tokens, vocab_size)


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


def expect_generated(got, model, case, *, what, mistakes, hint):
    """The student's result for one generate case equals the reference's under the same seed; for a batch where
    the book's code raises a RuntimeError, that error is accepted."""
    if case["batch_may_raise"] and isinstance(got, dict) and "raised" in got:
        return
    torch.manual_seed(case["seed"])
    expected = ref.generate(model, case["idx"].clone(), **case["kwargs"])

    def diagnose():
        if not isinstance(got, torch.Tensor):
            return hint
        for mistake, description, fix in mistakes:
            torch.manual_seed(case["seed"])
            candidate = generate_with(model, case["idx"].clone(), **case["kwargs"], mistake=mistake)
            if candidate.shape == got.shape and torch.equal(candidate, got):
                return f"your tokens are exactly what {description} gives: {fix}"
        return hint

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
    model = small_model(13)
    cases = [case(randint(20, 61, 2, 3), max_new_tokens=9, context_size=SMALL["context_length"]),
             case(randint(21, 61, 1, 5), max_new_tokens=6, context_size=4, temperature=0.0, top_k=5)]
    got = submission.run(generated, model_spec={"cfg": SMALL, "state": model.state_dict()}, cases=cases)
    for index, c in enumerate(cases):
        expect_generated(got[index], model, c, what=describe(c), mistakes=[], hint=(
            "with temperature 0, append torch.argmax(logits, dim=-1, keepdim=True) at every step, feeding the "
            "model only the last context_size tokens."))


TEMPERATURE_MISTAKES = [
    ("multiplied", "multiplying the logits by the temperature", "divide them: logits / temperature."),
    ("temperature ignored", "sampling without the temperature", "divide the logits by the temperature before the "
                                                                "softmax."),
]


@pytest.mark.points(2)
@pytest.mark.depends_on("test_generate_greedy")
@pytest.mark.runs("generate")
def test_generate_temperature(submission):
    """generate with temperature > 0 samples from softmax(logits / temperature), as the reference does."""
    model = small_model(17)
    context = SMALL["context_length"]
    cases = [case(randint(22, 61, 1, 4), seed=123, max_new_tokens=12, context_size=context, temperature=1.5),
             case(randint(23, 61, 1, 2), seed=7, max_new_tokens=10, context_size=context, temperature=0.6),
             case(randint(24, 61, 3, 2), seed=3, max_new_tokens=6, context_size=context, temperature=2.0)]
    got = submission.run(generated, model_spec={"cfg": SMALL, "state": model.state_dict()}, cases=cases)
    mistakes = TEMPERATURE_MISTAKES + [("greedy", "greedy decoding", "with temperature > 0, sample with "
                                                                       "torch.multinomial(probs, num_samples=1).")]
    for index, c in enumerate(cases):
        expect_generated(got[index], model, c, what=describe(c), mistakes=mistakes, hint=(
            "divide the logits by the temperature, take the softmax and draw the next token with "
            "torch.multinomial(probs, num_samples=1): one call per step for the whole batch."))


TOP_K_MISTAKES = [
    ("exactly k", "keeping exactly k tokens (dropping tokens tied with the k-th largest logit)",
     "keep every logit >= the k-th largest: torch.where(logits < min_val, -inf, logits)."),
    ("k plus 1", "keeping k + 1 tokens", "the k-th largest logit is torch.topk(logits, top_k).values[:, -1]."),
    ("ties dropped", "dropping the k-th largest logit and its ties (<= instead of <)",
     "set to -inf only the logits strictly below the k-th largest."),
    ("top_k ignored", "sampling without top-k", "set every logit below the k-th largest to -inf before sampling."),
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
    gpt = small_model(19)
    context = SMALL["context_length"]
    table_cases = [case(torch.tensor([[0]]), seed=11, max_new_tokens=40, context_size=4, temperature=2.0, top_k=2),
                   case(torch.tensor([[5]]), seed=12, max_new_tokens=30, context_size=4, temperature=1.0, top_k=4),
                   case(torch.tensor([[0], [3]]), seed=13, batch_may_raise=True, max_new_tokens=20, context_size=4,
                        temperature=2.0, top_k=2)]
    gpt_cases = [case(randint(25, 61, 1, 3), seed=5, max_new_tokens=12, context_size=context, temperature=1.0,
                      top_k=3)]
    hint = ("keep the logits that are >= the k-th largest of their row (torch.topk(logits, top_k).values[:, -1:]), set "
            "the others to -inf, then apply the temperature and sample.")
    for spec, model, cases in (({"table": table}, NextTokenTable(table), table_cases),
                               ({"cfg": SMALL, "state": gpt.state_dict()}, gpt, gpt_cases)):
        got = submission.run(generated, model_spec=spec, cases=cases)
        for index, c in enumerate(cases):
            what = describe(c) + (" with logits tied at the k-th largest" if "table" in spec else "")
            expect_generated(got[index], model, c, what=what, mistakes=TOP_K_MISTAKES, hint=hint)


EOS = 11
EOS_MISTAKES = [
    ("eos appended", "appending eos_id before stopping", "stop before appending: check the new token first, and "
                                                        "break if it is eos_id."),
    ("any row stops all", "stopping the whole batch when any row chooses eos_id",
     "a row that has ended gets eos_id as padding while the other rows go on; stop when every row has ended."),
    ("no padding", "letting rows that have ended go on generating", "once a row has chosen eos_id, append eos_id to "
                                                                   "it at every later step (padding)."),
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
    for index, c in enumerate(cases):
        expect_generated(got[index], NextTokenTable(table), c, what=describe(c), mistakes=EOS_MISTAKES, hint=(
            "when the new token is eos_id, stop before appending it; in a batch, a row that has ended gets eos_id "
            "at every later step, and generation stops when every row has ended."))


# -- section 5.4: saving and loading ----------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.runs("save_checkpoint", "load_checkpoint")
def test_checkpoint_round_trip(submission):
    """save_checkpoint and load_checkpoint: the model's and the optimizer's state survive the round trip.

    load_checkpoint without an optimizer restores the model alone.
    """
    state = small_model(23).state_dict()
    generator = torch.Generator().manual_seed(29)
    # An optimizer's state_dict as AdamW's looks: running averages per parameter, and the parameter groups.
    optimizer_state = {"state": {str(i): {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=generator),
                                          "exp_avg_sq": torch.rand(4, generator=generator)} for i in range(2)},
                       "param_groups": [{"lr": 0.0004, "weight_decay": 0.1, "params": [0, 1]}]}
    with explain_errors(error_mentions("Weights only load failed", "UnpicklingError", hint=(
            "save a dict of state_dicts, torch.save({'model_state_dict': model.state_dict(), "
            "'optimizer_state_dict': optimizer.state_dict()}, path): a file of plain tensors that "
            "torch.load(path, weights_only=True) can read."))):
        keys, restored, restored_optimizer, model_only = submission.run(
            checkpoint_round_trip, cfg=SMALL, state=state, optimizer_state=optimizer_state)
    expect_true(isinstance(keys, list) and {"model_state_dict", "optimizer_state_dict"} <= set(keys),
                what="the file save_checkpoint wrote", problem=f"holds {keys!r}, not the keys 'model_state_dict' and "
                "'optimizer_state_dict'.", hint="torch.save({'model_state_dict': model.state_dict(), "
                                               "'optimizer_state_dict': optimizer.state_dict()}, path).")
    hint_model = "model.load_state_dict(checkpoint['model_state_dict'])."
    for label, got in (("the model loaded with its optimizer", restored), ("a model loaded without an optimizer",
                                                                          model_only)):
        expect_true(isinstance(got, dict) and set(got) == set(state), what=label, problem="does not have the "
                    "model's parameters and buffers.", hint=hint_model)
        for name, tensor in state.items():
            expect_close(got[name].float(), tensor.float(), what=f"{label}: {name}", atol=0, rtol=0, hint=hint_model)
    expect_equal(restored_optimizer, optimizer_state, what="the state_dict of the loaded optimizer",
                 hint="optimizer.load_state_dict(checkpoint['optimizer_state_dict']): AdamW's running averages and "
                      "its learning rate are what let training go on where it stopped.")
