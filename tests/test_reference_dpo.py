"""Tests of reference/dpo.py (chapter 7 bonus: Direct Preference Optimization)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from reference.dpo import (
    PreferenceDataset,
    compute_dpo_loss,
    compute_dpo_loss_batch,
    compute_dpo_loss_loader,
    compute_logprobs,
    custom_collate_fn,
    decode_tokens_from_batch,
    evaluate_dpo_loss_loader,
    train_model_dpo_simple,
)
from reference.gpt import GPTModel
from reference.instruction import format_input
from reference.tiktoken_offline import get_gpt2_tokenizer
from tests.compact_vocab import CompactTokenizer, one_thread, tiny_gpt_config

DATA = Path(__file__).resolve().parents[1] / "data" / "preference_data.json"
PAD = 50256
LN2 = math.log(2)

# Two hand-written preference items: prompt, then the two "\n" tokens (198), then the answer.
ITEMS = [
    {"prompt": [1, 2, 3], "chosen": [1, 2, 3, 198, 198, 10, 11, 12], "rejected": [1, 2, 3, 198, 198, 10, 20]},
    {"prompt": [4, 5], "chosen": [4, 5, 198, 198, 30], "rejected": [4, 5, 198, 198, 31, 32, 33, 34]},
]
# Common length: 1 + the longest chosen or rejected sequence (8) = 9.
EXPECTED = {
    "chosen": [[1, 2, 3, 198, 198, 10, 11, 12, PAD], [4, 5, 198, 198, 30, PAD, PAD, PAD, PAD]],
    "rejected": [[1, 2, 3, 198, 198, 10, 20, PAD, PAD], [4, 5, 198, 198, 31, 32, 33, 34, PAD]],
    "chosen_mask": [[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0]],
    "rejected_mask": [[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0]],
}


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_on_one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def data():
    return json.loads(DATA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compact(tokenizer, data):
    """GPT-2's tokens of the course's preference data, renumbered (tests/compact_vocab.py)."""
    texts = [f"{format_input(e)}\n\n### Response:\n{e[key]}" for e in data for key in ("chosen", "rejected")]
    return CompactTokenizer(tokenizer, texts)


def _tiny_model(compact: CompactTokenizer, seed: int = 123) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(tiny_gpt_config(len(compact)))


def _loader(compact, entries, batch_size=4, shuffle=False):
    collate = partial(custom_collate_fn, pad_token_id=compact.eot_token, allowed_max_length=96, device="cpu")
    dataset = PreferenceDataset(entries, compact)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=shuffle, drop_last=shuffle)


def _logprobs(*shape: int, seed: int) -> torch.Tensor:
    return -torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 5


# --- the course's data ------------------------------------------------------------------------------------


def test_preference_data_has_60_entries(data):
    assert len(data) == 60


def test_preference_data_entries_have_the_books_keys(data):
    assert all(set(entry) == {"instruction", "input", "output", "chosen", "rejected"} for entry in data)


def test_preference_data_chosen_and_rejected_differ(data):
    assert all(entry["chosen"] != entry["rejected"] for entry in data)


# --- PreferenceDataset ------------------------------------------------------------------------------------


def test_preference_dataset_items(tokenizer, data):
    item = PreferenceDataset(data[:1], tokenizer)[0]
    prompt = format_input(data[0])
    assert item == {
        "prompt": tokenizer.encode(prompt),
        "chosen": tokenizer.encode(f"{prompt}\n\n### Response:\n{data[0]['chosen']}"),
        "rejected": tokenizer.encode(f"{prompt}\n\n### Response:\n{data[0]['rejected']}"),
    }


def test_preference_dataset_length(tokenizer, data):
    assert len(PreferenceDataset(data[:5], tokenizer)) == 5


def test_prompt_tokens_are_a_prefix_followed_by_two_newlines(tokenizer, data):
    # What the collate function's "+2" relies on, for every entry of the course's data.
    for item in PreferenceDataset(data, tokenizer):
        n = len(item["prompt"])
        assert item["chosen"][: n + 2] == item["prompt"] + [198, 198]
        assert item["rejected"][: n + 2] == item["prompt"] + [198, 198]


# --- the collate function ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["chosen", "rejected"])
def test_collate_pads_to_one_common_length(key):
    batch = custom_collate_fn(ITEMS)
    assert batch[key].tolist() == EXPECTED[key]


@pytest.mark.parametrize("key", ["chosen_mask", "rejected_mask"])
def test_collate_masks_select_the_answer_tokens_only(key):
    batch = custom_collate_fn(ITEMS)
    assert batch[key].dtype == torch.bool
    assert batch[key].tolist() == [[bool(v) for v in row] for row in EXPECTED[key]]


def test_collate_keeps_the_prompts_as_a_list():
    batch = custom_collate_fn(ITEMS)
    assert [p.tolist() for p in batch["prompt"]] == [[1, 2, 3], [4, 5]]


def test_collate_keys():
    assert set(custom_collate_fn(ITEMS)) == {"prompt", "chosen", "rejected", "chosen_mask", "rejected_mask"}


def test_collate_without_prompt_masking_masks_only_the_padding():
    batch = custom_collate_fn(ITEMS, mask_prompt_tokens=False)
    assert batch["chosen_mask"].tolist()[1] == [True] * 5 + [False] * 4


def test_collate_truncates_every_tensor():
    batch = custom_collate_fn(ITEMS, allowed_max_length=6)
    assert batch["rejected"].tolist() == [row[:6] for row in EXPECTED["rejected"]]
    assert batch["chosen_mask"].shape == (2, 6)


def test_collate_custom_pad_token():
    batch = custom_collate_fn(ITEMS, pad_token_id=0)
    assert batch["chosen"].tolist()[1] == [4, 5, 198, 198, 30, 0, 0, 0, 0]


def test_collate_does_not_change_the_items():
    items = copy.deepcopy(ITEMS)
    custom_collate_fn(items)
    assert items == ITEMS


def test_masked_tokens_decode_to_the_response_header_and_the_answer(tokenizer, data):
    batch = custom_collate_fn(list(PreferenceDataset(data, tokenizer)))
    for i, entry in enumerate(data):
        for key in ("chosen", "rejected"):
            text = decode_tokens_from_batch(batch[key][i][batch[f"{key}_mask"][i]], tokenizer)
            assert text == f"### Response:\n{entry[key]}"


# --- compute_logprobs -------------------------------------------------------------------------------------


def test_compute_logprobs_equals_an_explicit_loop():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
    log_probs = F.log_softmax(logits, dim=-1)
    expected = torch.tensor([
        sum(log_probs[b, j - 1, labels[b, j]] for j in range(1, 5)) / 4 for b in range(2)
    ])
    assert torch.allclose(compute_logprobs(logits, labels), expected, rtol=0, atol=1e-6)


def test_compute_logprobs_with_a_mask_averages_the_selected_tokens_only():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]).bool()  # mask[b, 0] is never used
    log_probs = F.log_softmax(logits, dim=-1)
    expected = torch.stack([
        (log_probs[0, 1, 3] + log_probs[0, 2, 4]) / 2,  # labels 2 and 3 (positions 2, 3), predicted at 1, 2
        log_probs[1, 3, 3],  # label 4 (position 4), predicted at 3
    ])
    assert torch.allclose(compute_logprobs(logits, labels, mask), expected, rtol=0, atol=1e-6)


def test_compute_logprobs_ignores_what_the_mask_excludes():
    logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[True, True, True, False]])
    changed = labels.clone()
    changed[0, 3] = 4  # a different token where the mask is False
    assert torch.equal(compute_logprobs(logits, labels, mask), compute_logprobs(logits, changed, mask))


def test_compute_logprobs_shape():
    logits = torch.randn(3, 6, 4)
    labels = torch.randint(0, 4, (3, 6))
    assert compute_logprobs(logits, labels).shape == (3,)


# --- compute_dpo_loss -------------------------------------------------------------------------------------


def test_dpo_loss_is_ln2_when_policy_and_reference_agree():
    chosen, rejected = _logprobs(4, seed=0), _logprobs(4, seed=1)
    loss, chosen_rewards, rejected_rewards = compute_dpo_loss(chosen, rejected, chosen, rejected, beta=0.1)
    assert loss.item() == pytest.approx(LN2, abs=1e-7)
    assert (chosen_rewards.item(), rejected_rewards.item()) == (0.0, 0.0)


def test_dpo_loss_formula():
    pc, pr, rc, rr = (_logprobs(5, seed=s) for s in range(4))
    loss, _, _ = compute_dpo_loss(pc, pr, rc, rr, beta=0.3)
    expected = -torch.log(torch.sigmoid(0.3 * ((pc - pr) - (rc - rr)))).mean()
    assert torch.allclose(loss, expected, rtol=0, atol=1e-6)


def test_dpo_loss_default_beta_is_0_1():
    pc, pr, rc, rr = (_logprobs(5, seed=s) for s in range(4))
    assert torch.equal(compute_dpo_loss(pc, pr, rc, rr)[0], compute_dpo_loss(pc, pr, rc, rr, beta=0.1)[0])


def test_dpo_loss_falls_when_the_chosen_logprob_rises():
    pc, pr, rc, rr = (_logprobs(5, seed=s) for s in range(4))
    before, _, _ = compute_dpo_loss(pc, pr, rc, rr)
    after, _, _ = compute_dpo_loss(pc + 0.5, pr, rc, rr)
    assert after < before


def test_dpo_loss_falls_when_the_rejected_logprob_falls():
    pc, pr, rc, rr = (_logprobs(5, seed=s) for s in range(4))
    assert compute_dpo_loss(pc, pr - 0.5, rc, rr)[0] < compute_dpo_loss(pc, pr, rc, rr)[0]


def test_dpo_rewards_are_differences_without_beta():
    pc, pr, rc, rr = (_logprobs(5, seed=s) for s in range(4))
    _, chosen_rewards, rejected_rewards = compute_dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert torch.allclose(chosen_rewards, (pc - rc).mean(), rtol=0, atol=1e-6)
    assert torch.allclose(rejected_rewards, (pr - rr).mean(), rtol=0, atol=1e-6)


def test_dpo_rewards_are_detached_and_the_loss_is_not():
    pc, pr = _logprobs(3, seed=0).requires_grad_(), _logprobs(3, seed=1).requires_grad_()
    loss, chosen_rewards, rejected_rewards = compute_dpo_loss(pc, pr, _logprobs(3, seed=2), _logprobs(3, seed=3))
    assert loss.requires_grad
    assert not chosen_rewards.requires_grad
    assert not rejected_rewards.requires_grad


def test_dpo_loss_results_are_scalars():
    results = compute_dpo_loss(*(_logprobs(5, seed=s) for s in range(4)))
    assert [r.shape for r in results] == [torch.Size([])] * 3


# --- batches and loaders with a tiny model ---------------------------------------------------------------


def test_dpo_batch_loss_is_ln2_for_a_copy_of_the_reference(compact, data):
    policy = _tiny_model(compact)
    reference = copy.deepcopy(policy).eval()
    batch = next(iter(_loader(compact, data[:4])))
    loss, chosen_rewards, rejected_rewards = compute_dpo_loss_batch(batch, policy.eval(), reference, beta=0.1)
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    assert (chosen_rewards.item(), rejected_rewards.item()) == (0.0, 0.0)


def test_dpo_batch_gradient_reaches_the_policy_and_not_the_reference(compact, data):
    policy = _tiny_model(compact, seed=1)
    reference = _tiny_model(compact, seed=2)
    batch = next(iter(_loader(compact, data[:4])))
    loss, _, _ = compute_dpo_loss_batch(batch, policy, reference, beta=0.1)
    loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    assert policy.out_head.weight.grad.abs().sum() > 0


def test_dpo_batch_uses_the_masked_logprobs(compact, data):
    policy, reference = _tiny_model(compact, seed=1).eval(), _tiny_model(compact, seed=2).eval()
    batch = next(iter(_loader(compact, data[:4])))
    with torch.no_grad():
        lp = {
            (name, key): compute_logprobs(model(batch[key]), batch[key], batch[f"{key}_mask"])
            for name, model in (("policy", policy), ("reference", reference))
            for key in ("chosen", "rejected")
        }
        expected = compute_dpo_loss(
            lp["policy", "chosen"], lp["policy", "rejected"], lp["reference", "chosen"], lp["reference", "rejected"],
            beta=0.2,
        )
        actual = compute_dpo_loss_batch(batch, policy, reference, beta=0.2)
    assert all(torch.allclose(a, e, rtol=0, atol=1e-6) for a, e in zip(actual, expected))


def test_dpo_loader_averages_over_num_batches(compact, data):
    policy, reference = _tiny_model(compact, seed=1).eval(), _tiny_model(compact, seed=2).eval()
    loader = _loader(compact, data[:12])
    with torch.no_grad():
        per_batch = [compute_dpo_loss_batch(b, policy, reference, beta=0.1) for b in loader]
        result = compute_dpo_loss_loader(loader, policy, reference, beta=0.1, num_batches=2)
    expected = [sum(values[k].item() for values in per_batch[:2]) / 2 for k in range(3)]
    assert result == pytest.approx(tuple(expected), abs=1e-6)


def test_dpo_loader_num_batches_beyond_the_loader_uses_all(compact, data):
    policy, reference = _tiny_model(compact, seed=1).eval(), _tiny_model(compact, seed=2).eval()
    loader = _loader(compact, data[:8])
    with torch.no_grad():
        all_batches = compute_dpo_loss_loader(loader, policy, reference, beta=0.1)
        too_many = compute_dpo_loss_loader(loader, policy, reference, beta=0.1, num_batches=50)
    assert all_batches == too_many


def test_dpo_loader_of_an_empty_loader_is_nan(compact):
    model = _tiny_model(compact)
    result = compute_dpo_loss_loader([], model, model, beta=0.1)
    assert len(result) == 3
    assert all(math.isnan(value) for value in result)


def test_evaluate_dpo_loss_loader_keys_and_training_mode(compact, data):
    policy = _tiny_model(compact)
    reference = copy.deepcopy(policy).eval()
    loader = _loader(compact, data[:8])
    res = evaluate_dpo_loss_loader(policy, reference, loader, loader, beta=0.1, eval_iter=1)
    assert set(res) == {
        "train_loss", "train_chosen_reward", "train_rejected_reward",
        "val_loss", "val_chosen_reward", "val_rejected_reward",
    }
    assert res["val_loss"] == pytest.approx(LN2, abs=1e-6)
    assert policy.training


# --- training -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_run(compact, data):
    """A short, seeded DPO run of a tiny policy against its frozen copy (CPU), with its printed output."""
    torch.manual_seed(123)
    train_loader = _loader(compact, data[:32], batch_size=4, shuffle=True)
    val_loader = _loader(compact, data[54:])
    policy = _tiny_model(compact)
    reference = copy.deepcopy(policy).eval()
    reference_state = copy.deepcopy(reference.state_dict())
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-3, weight_decay=0.01)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tracking = train_model_dpo_simple(
            policy, reference, train_loader, val_loader, optimizer, num_epochs=2, beta=0.5, eval_freq=4,
            eval_iter=1, start_context="Below is", tokenizer=compact,
        )
    return tracking, reference, reference_state, printed.getvalue().splitlines()


def test_dpo_training_tracks_every_evaluation(dpo_run):
    tracking, _, _, _ = dpo_run
    # 2 epochs x 8 batches = 16 steps, evaluated after steps 0, 4, 8, 12
    assert {key: len(values) for key, values in tracking.items()} == {
        "train_losses": 4, "train_chosen_rewards": 4, "train_rejected_rewards": 4,
        "val_losses": 4, "val_chosen_rewards": 4, "val_rejected_rewards": 4, "tokens_seen": 4,
    }


def test_dpo_training_loss_falls_below_ln2(dpo_run):
    tracking, _, _, _ = dpo_run
    assert tracking["train_losses"][-1] < LN2 - 0.1


def test_dpo_training_validation_loss_falls(dpo_run):
    tracking, _, _, _ = dpo_run
    assert tracking["val_losses"][-1] < tracking["val_losses"][0]


def test_dpo_training_reward_margin_grows(dpo_run):
    tracking, _, _, _ = dpo_run
    margins = [c - r for c, r in zip(tracking["train_chosen_rewards"], tracking["train_rejected_rewards"])]
    assert margins[-1] > margins[0] + 0.3


def test_dpo_training_leaves_the_reference_model_unchanged(dpo_run):
    _, reference, reference_state, _ = dpo_run
    assert all(torch.equal(value, reference_state[name]) for name, value in reference.state_dict().items())


def test_dpo_training_gives_the_reference_model_no_gradient(dpo_run):
    _, reference, _, _ = dpo_run
    assert all(p.grad is None for p in reference.parameters())


def test_dpo_training_prints_the_evaluations(dpo_run):
    _, _, _, lines = dpo_run
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert "Train reward margins " in lines[0]


def test_dpo_training_prints_a_sample_after_the_epoch(dpo_run):
    _, _, _, lines = dpo_run
    assert len(lines) == 6  # four evaluations, a sample after each of the two epochs
    assert lines[2].startswith("Below is")
    assert lines[-1].startswith("Below is")
