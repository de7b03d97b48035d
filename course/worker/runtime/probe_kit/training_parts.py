"""Correct stand-ins for the parts of chapter 5's and appendix D's training code, and the toys that show how a
training loop treats its batches.

A probe that runs a composite of the student's (train_model_simple, evaluate_model, calc_loss_loader, train_model)
swaps the parts it calls for these while it runs (`probe_kit.parts.replaced`), so that a bug in a part costs only
the part's own tests:

    with replaced(student, **stand_ins_for("calc_loss_batch", "evaluate_model")):
        student.train_model_simple(...)

Each stand-in does what the book's function does, with torch's own building blocks, and calls only the other
stand-ins of this module, never the student's. Like the rest of probe_kit, this module imports only the standard
library and torch.
"""

import math

import torch
import torch.nn.functional as F

# -- section 5.1: text <-> token ids, and the loss ----------------------------------------------------------------

def text_to_token_ids(text, tokenizer):
    """Token ids of `text` as a batch of one, shape (1, num_tokens); <|endoftext|> is allowed."""
    return torch.tensor([tokenizer.encode(text, allowed_special={"<|endoftext|>"})])


def token_ids_to_text(token_ids, tokenizer):
    """The text of token ids of shape (1, num_tokens) or (num_tokens,)."""
    return tokenizer.decode(token_ids.reshape(-1).tolist())


def calc_loss_batch(input_batch, target_batch, model, device):
    """The mean next-token cross-entropy over every position of the batch (a tensor with gradients)."""
    logits = model(input_batch.to(device))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_batch.to(device).reshape(-1))


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """The average batch loss (a float) over the first num_batches batches (all by default); NaN when empty."""
    if len(data_loader) == 0:
        return float("nan")
    used = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    losses = []
    for inputs, targets in data_loader:
        if len(losses) == used:
            break
        losses.append(calc_loss_batch(inputs, targets, model, device).item())
    return sum(losses) / used


# -- section 5.2: evaluating and printing a sample ------------------------------------------------------------------

def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """(train_loss, val_loss) over eval_iter batches each, in eval mode; the model is left in training mode."""
    model.eval()
    with torch.no_grad():
        losses = (calc_loss_loader(train_loader, model, device, eval_iter),
                  calc_loss_loader(val_loader, model, device, eval_iter))
    model.train()
    return losses


def generate_and_print_sample(model, tokenizer, device, start_context):
    """Print the prompt and 50 greedy tokens on one line, in eval mode; the model is left in training mode."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    ids = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        for _ in range(50):
            logits = model(ids[:, -context_size:])[:, -1, :]
            ids = torch.cat((ids, logits.argmax(dim=-1, keepdim=True)), dim=1)
    print(token_ids_to_text(ids, tokenizer).replace("\n", " "))
    model.train()


# -- appendix D: the schedule ---------------------------------------------------------------------------------------

def learning_rate_at(step, total_steps, warmup_steps, peak_lr, initial_lr=3e-05, min_lr=1e-6):
    """Linear warmup from initial_lr to peak_lr over warmup_steps, then half a cosine down to min_lr."""
    if step < warmup_steps:
        return initial_lr + step * (peak_lr - initial_lr) / warmup_steps
    done = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * (1 + math.cos(math.pi * done)) / 2


PARTS = {function.__name__: function for function in (
    text_to_token_ids, token_ids_to_text, calc_loss_batch, calc_loss_loader, evaluate_model,
    generate_and_print_sample, learning_rate_at)}


def stand_ins_for(*names):
    """{name: stand-in} for `replaced(student, **...)`."""
    return {name: PARTS[name] for name in names}


# -- batches that must be moved to the model's device ------------------------------------------------------------

class OnHost(torch.Tensor):
    """A batch as a data loader yields it, before `.to(device)`: on a CPU grader, it behaves as a CPU tensor
    meeting a model on a GPU does. `.to(...)` (or `.cuda()`) gives a plain tensor; views of it (flatten, slices)
    stay on the host; any operation that mixes it with a plain tensor (an embedding's weights, the logits) raises
    PyTorch's own error for tensors on two devices."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in ("to", "cuda"):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        tensors = [value for value in _flat(args) + _flat(list(kwargs.values())) if isinstance(value, torch.Tensor)]
        if any(isinstance(t, OnHost) for t in tensors) and any(not isinstance(t, OnHost) for t in tensors):
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices: a "
                               "batch was used before it was moved to the model's device with .to(device) (the "
                               "course's grader makes a batch that was not moved fail this way on every machine)")
        return super().__torch_function__(func, types, args, kwargs)


def _flat(values):
    found = []
    for value in values:
        if isinstance(value, (list, tuple)):
            found += _flat(value)
        else:
            found.append(value)
    return found


def on_host(tensor):
    """`tensor` as a batch that has not been moved to the device yet."""
    return tensor.as_subclass(OnHost)
