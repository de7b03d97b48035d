"""What the probes of chapters 5 and 6 and of appendix D share: chapter 4's GPT loaded with the grader's weights,
loaders over token windows, the AdamW their training runs step with, evaluate_model called twice, a loop run
quietly from a seed.

A probe imports these inside its body (`from probe_kit.training import AdamW`) and passes in what comes from the
support code (chapter 4's GPTModel) or from the student (the function under test): this module imports only the
standard library and torch. The graders run the same probes with the reference on the trusted side, so both
sides train with this very code.
"""

import contextlib
import io
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def loaded_gpt(gpt_class, cfg, state):
    """`gpt_class(cfg)` (chapter 4's GPTModel, or a subclass) with the grader's weights `state`; when `state` holds
    a head with a bias, chapter 6's classifier: the vocabulary head replaced by nn.Linear(emb_dim, num_classes)."""
    model = gpt_class(cfg)
    if "out_head.bias" in state:
        model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    return model


def loader(inputs, targets, batch_size):
    """The book's loader over (input, target) pairs, in order: DataLoader(..., shuffle=False)."""
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=False)


def losses_with_gradients(calc_loss_batch, model, batches, device, gradients_of):
    """calc_loss_batch on each (inputs, targets): {"loss", "gradients"}, the gradients of the parameters named in
    `gradients_of` after loss.backward() (None when the loss cannot be backpropagated)."""
    parameters = dict(model.named_parameters())
    results = []
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        loss = calc_loss_batch(inputs, targets, model, device)
        gradients = None
        if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            loss.sum().backward()
            gradients = [parameters[name].grad for name in gradients_of]
        results.append({"loss": loss.detach() if isinstance(loss, torch.Tensor) else loss, "gradients": gradients})
    return results


def loader_results(function, model, inputs, targets, cases, device, train):
    """`function` (calc_loss_loader or calc_accuracy_loader) on a loader over the first `rows` pairs for each case
    (rows, batch_size, num_batches; num_batches None: not passed), under torch.no_grad(): {"value", "training"
    (the model's mode afterwards)}. With `train`, the model is put in training mode (dropout on) and the seed set
    before each call, so a function that forgets model.eval() gives other numbers; else it is put in eval mode
    once, before the first call."""
    if not train:
        model.eval()
    results = []
    for rows, batch_size, num_batches in cases:
        data = loader(inputs[:rows], targets[:rows], batch_size)
        if train:
            model.train()
            torch.manual_seed(len(results))
        with torch.no_grad():
            if num_batches is None:
                value = function(data, model, device)
            else:
                value = function(data, model, device, num_batches=num_batches)
        results.append({"value": value, "training": model.training})
    return results


def evaluated_twice(evaluate_model, model, train_loader, val_loader, device, eval_iter):
    """evaluate_model on a model in training mode, twice, after two different seeds: {"first", "second" (its
    results, a tuple as a list), "training_after" (the model's mode after the first call)}. Dropout left on makes
    the two results differ."""
    results, training_after = [], None
    for seed in (1, 2):
        model.train()
        torch.manual_seed(seed)
        result = evaluate_model(model, train_loader, val_loader, device, eval_iter)
        results.append(list(result) if isinstance(result, tuple) else result)
        if training_after is None:
            training_after = model.training
    return {"first": results[0], "second": results[1], "training_after": training_after}


def run_quietly(loop, *args, seed, **kwargs):
    """loop(*args, **kwargs) after torch.manual_seed(seed), with what it prints captured: (its result, tuples made
    lists, and what it printed)."""
    torch.manual_seed(seed)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = loop(*args, **kwargs)
    if isinstance(result, (list, tuple)):
        result = [list(part) if isinstance(part, tuple) else part for part in result]
    return result, printed.getvalue()


class AdamW:
    """AdamW (Adam with decoupled weight decay) written out, with the zero_grad(), step() and param_groups the
    book's loops use: building one of torch.optim's optimizers imports torch's compiler stack (seconds, once per
    grading process). At every step() it records [the learning rate of its first group, the total L2 norm of the
    gradients it is about to apply] in `records`: that shows when a loop sets the rate and whether it clipped; and
    the learning rate of every group in `group_rates`. `params` are parameters (one group), or, as torch's
    optimizers take them, dicts of groups ({"params": [...], "weight_decay": ...}) whose missing settings are the
    defaults given here."""

    def __init__(self, params, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.state = {}  # parameter -> [steps, first moment, second moment]
        self.records = []
        self.group_rates = []

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
        self.group_rates.append([float(group["lr"]) for group in self.param_groups])
        for group in self.param_groups:
            lr, (beta1, beta2) = float(group["lr"]), group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state.setdefault(param, [0, torch.zeros_like(param), torch.zeros_like(param)])
                state[0] += 1
                param.mul_(1 - lr * group["weight_decay"])
                state[1].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                state[2].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                denominator = (state[2].sqrt() / math.sqrt(1 - beta2 ** state[0])).add_(group["eps"])
                param.addcdiv_(state[1], denominator, value=-lr / (1 - beta1 ** state[0]))


class NextTokenTable(nn.Module):
    """A 'model' whose logits for the next token depend only on the last token: table[last token], of shape
    (batch, num_tokens, vocab_size) for ids of shape (batch, num_tokens). Decoding on it is easy to follow."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx):
        return self.table[idx]
