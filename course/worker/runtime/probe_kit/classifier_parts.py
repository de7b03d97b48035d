"""Correct stand-ins for the parts of chapter 6's and appendix E's composites, and batches that tell whether they
were moved to the device.

A probe that runs a composite of the student's (calc_loss_loader, evaluate_model, train_classifier_simple,
LinearWithLoRA, replace_linear_with_lora) swaps the parts it calls for these while it runs
(`probe_kit.parts.replaced`), so that a bug in a part costs only the part's own tests:

    with replaced(student, **stand_ins_for("calc_loss_batch", "calc_loss_loader")):
        student.evaluate_model(...)

Each stand-in does what the book's code does, with the stubs' names, signatures and attribute names, and calls only
the other stand-ins of this module (its globals are this module), never the student's. Like the rest of probe_kit,
this module imports only the standard library and torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# -- chapter 6: loss and accuracy from the last token, evaluation -----------------------------------------------


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """The fraction of examples whose last-token argmax is the label, over the first num_batches batches (all by
    default), in eval mode and without gradients: a float."""
    model.eval()
    used = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    right = total = 0
    for index, (inputs, labels) in enumerate(data_loader):
        if index == used:
            break
        with torch.no_grad():
            scores = model(inputs.to(device))[:, -1, :]
        right += int((scores.argmax(dim=-1) == labels.to(device)).sum())
        total += len(labels)
    return right / total


def calc_loss_batch(input_batch, target_batch, model, device):
    """The mean cross-entropy of the last token's class scores against the labels (a tensor with gradients)."""
    scores = model(input_batch.to(device))[:, -1, :]
    return F.cross_entropy(scores, target_batch.to(device))


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """The average batch loss (a float) over the first num_batches batches (all by default); NaN when empty."""
    if len(data_loader) == 0:
        return float("nan")
    used = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    losses = []
    for inputs, labels in data_loader:
        if len(losses) == used:
            break
        losses.append(calc_loss_batch(inputs, labels, model, device).item())
    return sum(losses) / used


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """(train_loss, val_loss) over eval_iter batches each, in eval mode; the model is left in training mode."""
    model.eval()
    with torch.no_grad():
        losses = (calc_loss_loader(train_loader, model, device, num_batches=eval_iter),
                  calc_loss_loader(val_loader, model, device, num_batches=eval_iter))
    model.train()
    return losses


# -- appendix E: LoRA ---------------------------------------------------------------------------------------------

class LoRALayer(nn.Module):
    """The scaled low-rank update (alpha / rank) * (x @ A @ B): A (in_dim, rank) random as an nn.Linear weight, B
    (rank, out_dim) zero. `scaling` is there too, for a LinearWithLoRA that reads the factor from its LoRALayer."""

    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(in_dim, rank), a=math.sqrt(5)))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.rank, self.alpha = rank, alpha

    @property
    def scaling(self):
        return self.alpha / self.rank

    def forward(self, x):
        return torch.matmul(torch.matmul(x, self.A), self.B) * self.scaling


class LinearWithLoRA(nn.Module):
    """The given nn.Linear (`linear`) and a LoRALayer of its shape (`lora`); their outputs added."""

    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return torch.add(self.linear(x), self.lora(x))


PARTS = {part.__name__: part for part in (calc_accuracy_loader, calc_loss_batch, calc_loss_loader, evaluate_model,
                                          LoRALayer, LinearWithLoRA)}


def stand_ins_for(*names):
    """{name: stand-in} for `replaced(student, **...)`."""
    return {name: PARTS[name] for name in names}


# -- batches that note whether they were moved to the device ------------------------------------------------------

class _Noted(torch.Tensor):
    """A batch as a loader yields it. Moving it (`.to(...)`, `.cuda()`, or any call given a `device=`) notes its
    subclass's `role` in the subclass's `moves` list and gives a plain tensor; any other operation gives a plain
    tensor too. On a CPU grader, this shows what a GPU would: whether each batch reaches the model's device."""

    role, moves = "batch", []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ("to", "cuda") or "device" in kwargs:
            for value in list(args) + list(kwargs.values()):
                if isinstance(value, _Noted):
                    type(value).moves.append(type(value).role)
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            return result.as_subclass(torch.Tensor) if isinstance(result, _Noted) else result


def noted(tensor, role, moves):
    """`tensor` as a batch that notes `role` in the list `moves` when it is moved to a device."""
    kind = type(f"Noted{role.title()}", (_Noted,), {"role": role, "moves": moves})
    return tensor.as_subclass(kind)


class NotedLoader:
    """A data loader over (inputs, labels) in order, in batches of `batch_size`, whose batches note in `moves`
    ("inputs", "labels") when they are moved to a device. It has what the book's loops use: len() and iteration."""

    def __init__(self, inputs, labels, batch_size, moves):
        self.batches = [(inputs[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(inputs),
                                                                                              batch_size)]
        self.moves = moves

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for inputs, labels in self.batches:
            yield noted(inputs, "inputs", self.moves), noted(labels, "labels", self.moves)
