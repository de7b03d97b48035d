"""Tests of reference/training_loop.py (appendix D: warmup, cosine decay and gradient clipping)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reference.gpt import GPTModel
from reference.training_loop import clips_gradients, find_highest_gradient, learning_rate_at, train_model

TINY = {
    "vocab_size": 50,
    "context_length": 8,
    "emb_dim": 12,
    "n_heads": 3,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}

# Appendix D's own schedule: 15 epochs of 9 batches, 20% warmup, initial_lr 1e-4, peak 0.01, min 1e-5.
TOTAL, WARMUP, PEAK, INITIAL, MIN = 135, 27, 0.01, 0.0001, 0.1 * 0.0001


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from several threads, and lose a lot when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CharTokenizer:
    def encode(self, text, allowed_special=None):
        return [ord(c) % 50 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def _schedule(total=TOTAL, warmup=WARMUP, peak=PEAK, initial=INITIAL, min_lr=MIN):
    return [learning_rate_at(step, total, warmup, peak, initial, min_lr) for step in range(total)]


def _loader(n_batches: int, seed: int = 0) -> DataLoader:
    stream = torch.randint(0, 50, (n_batches * 2 * 8 + 1,), generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(stream[:-1].view(-1, 8), stream[1:].view(-1, 8)), batch_size=2)


# --- the schedule ---------------------------------------------------------------------------------------


def test_schedule_starts_at_the_initial_rate():
    assert learning_rate_at(0, TOTAL, WARMUP, PEAK, INITIAL, MIN) == INITIAL


def test_warmup_grows_by_a_constant_increment():
    increment = (PEAK - INITIAL) / WARMUP
    expected = [INITIAL + step * increment for step in range(WARMUP)]
    assert _schedule()[:WARMUP] == expected


def test_the_last_warmup_step_is_one_increment_below_the_peak():
    assert _schedule()[WARMUP - 1] == pytest.approx(PEAK - (PEAK - INITIAL) / WARMUP, rel=1e-12)


def test_the_peak_is_reached_at_the_first_step_after_warmup():
    assert _schedule()[WARMUP] == PEAK


def test_the_peak_is_the_largest_rate():
    assert max(_schedule()) == PEAK


def test_cosine_decay_after_warmup():
    progress = [(step - WARMUP) / (TOTAL - WARMUP) for step in range(WARMUP, TOTAL)]  # 0 .. 107/108
    expected = [MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    assert _schedule()[WARMUP:] == expected


def test_cosine_decay_is_halfway_at_half_the_decay_steps():
    # 108 decay steps: step 27 + 54 has progress 0.5, where the cosine is 0.
    assert _schedule()[WARMUP + 54] == pytest.approx((PEAK + MIN) / 2, rel=1e-12)


def test_cosine_decay_decreases_every_step():
    decay = _schedule()[WARMUP:]
    assert all(later < earlier for earlier, later in zip(decay, decay[1:]))


def test_the_last_step_is_just_above_min_lr():
    last = _schedule()[-1]
    assert last == MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi * 107 / 108))
    assert 0 < last - MIN < 0.001 * (PEAK - MIN)


def test_appendix_d_default_rates():
    # train_model's defaults: initial_lr 3e-05, min_lr 1e-6.
    assert learning_rate_at(0, 10, 2, 1e-3) == 3e-05
    expected_last = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    assert learning_rate_at(9, 10, 2, 1e-3) == pytest.approx(expected_last)


def test_no_warmup_starts_at_the_peak():
    assert learning_rate_at(0, 10, 0, PEAK, INITIAL, MIN) == PEAK


# --- the clipping rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "expected"), [(0, False), (WARMUP - 1, False), (WARMUP, True), (WARMUP + 1, True)])
def test_clipping_from_the_end_of_warmup(step, expected):
    assert clips_gradients(step, WARMUP) is expected


@pytest.mark.parametrize(("step", "expected"), [(0, False), (WARMUP - 1, False), (WARMUP, False), (WARMUP + 1, True)])
def test_clipping_in_the_print_edition_starts_one_step_later(step, expected):
    assert clips_gradients(step, WARMUP, orig_book_version=True) is expected


# --- find_highest_gradient ------------------------------------------------------------------------------


def test_find_highest_gradient_is_the_largest_entry_over_all_parameters():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    model(torch.randint(0, 50, (2, 8))).pow(2).mean().backward()
    expected = max(p.grad.max() for p in model.parameters())
    assert torch.equal(find_highest_gradient(model), expected)


def test_find_highest_gradient_is_signed():
    layer = torch.nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.tensor([[-3.0, -0.5]])
    assert find_highest_gradient(layer).item() == -0.5


def test_find_highest_gradient_without_gradients_is_none():
    assert find_highest_gradient(torch.nn.Linear(2, 1)) is None


# --- train_model ----------------------------------------------------------------------------------------


def _run(n_epochs=3, n_batches=4, warmup_steps=4, peak_lr=1e-3, orig_book_version=False, eval_freq=5, scale=1.0):
    """Train a tiny model; also record the gradient norm and the learning rate at every optimizer step."""
    torch.manual_seed(123)
    model = GPTModel(TINY)
    with torch.no_grad():
        model.out_head.weight.mul_(scale)  # large weights give large gradients, so clipping has work to do
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.1)
    norms, lrs_seen = [], []

    def record(opt, args, kwargs):
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())
        lrs_seen.append(opt.param_groups[0]["lr"])

    optimizer.register_step_pre_hook(record)
    result = train_model(
        model, _loader(n_batches), _loader(1, seed=1), optimizer, "cpu", n_epochs=n_epochs, eval_freq=eval_freq,
        eval_iter=1, start_context="ab", tokenizer=CharTokenizer(), warmup_steps=warmup_steps,
        initial_lr=peak_lr / 10, min_lr=peak_lr / 100, orig_book_version=orig_book_version,
    )
    return result, norms, lrs_seen


def test_train_model_returns_lists_of_the_right_lengths():
    (train_losses, val_losses, tokens_seen, lrs), _, _ = _run(n_epochs=3, n_batches=4, eval_freq=5)
    assert len(lrs) == 12  # one per step
    assert len(train_losses) == 3  # steps 0, 5, 10
    assert len(val_losses) == 3
    assert tokens_seen == [16, 96, 176]


def test_train_model_follows_the_schedule_step_by_step():
    (_, _, _, lrs), _, lrs_seen = _run(n_epochs=3, n_batches=4, warmup_steps=4, peak_lr=1e-3)
    expected = [learning_rate_at(step, 12, 4, 1e-3, 1e-4, 1e-5) for step in range(12)]
    assert lrs == expected
    assert lrs_seen == expected  # set before each step, in the optimizer


def test_train_model_lowers_the_loss():
    (train_losses, _, _, _), _, _ = _run(n_epochs=4, n_batches=4, peak_lr=5e-3, eval_freq=15)
    assert train_losses[-1] < train_losses[0] - 0.3


@pytest.mark.parametrize("orig_book_version", [False, True])
def test_gradients_are_clipped_from_the_right_step(orig_book_version):
    _, norms, _ = _run(n_epochs=2, n_batches=4, warmup_steps=3, peak_lr=1e-5, orig_book_version=orig_book_version,
                       scale=30.0)
    first_clipped = 4 if orig_book_version else 3
    assert all(norm > 1.5 for norm in norms[:first_clipped])
    assert norms[first_clipped:] == pytest.approx([1.0] * (8 - first_clipped), abs=1e-4)


def test_train_model_without_warmup_clips_from_the_first_step():
    _, norms, _ = _run(n_epochs=1, n_batches=3, warmup_steps=0, peak_lr=1e-5, scale=30.0)
    assert norms == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


def test_the_graders_run_has_raw_gradient_norms_above_one():
    """The appendix D grader tells clipped steps (norm exactly 1) from unclipped ones (norm above 1): that needs
    every raw gradient norm of its run to be well above 1. Without clipping (a warmup longer than the run), the
    norms its optimizer records are the raw ones."""
    from types import SimpleNamespace

    from graders import appd_training_loop as grader
    from reference import training_loop

    def unclipped(*args, **kwargs):
        return training_loop.train_model(*args, **{**kwargs, "warmup_steps": 10 * grader.TOTAL_STEPS})

    records = grader.run(SimpleNamespace(train_model=unclipped).train_model, grader.run_state()).records
    assert len(records) == grader.TOTAL_STEPS
    assert min(norm for _, norm in records) > 1.5


def test_the_graders_run_follows_the_schedule_and_clips_after_warmup():
    from graders import appd_training_loop as grader

    records = grader.reference_run().records
    torch.testing.assert_close(torch.tensor([lr for lr, _ in records], dtype=torch.float64),
                               grader.expected_schedule())
    # The run asks for the print edition's rule (orig_book_version=True): clipping starts after the warmup step.
    assert all(abs(norm - 1.0) < 1e-3 for _, norm in records[grader.WARMUP + 1:])
