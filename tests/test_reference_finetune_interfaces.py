"""The finetuning references keep the book's signatures (chapters 6 and 7, the DPO notebook, appendix E).

Graders call students' functions the way the book defines them, and compare with the reference called the
same way, so the reference's parameter names, order and defaults must be the book's. Where the reference
adds a parameter, it comes last and has a default, so every call written for the book still works.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

# (module, name): the parameters (self left out) as "name" or "name=default", checked against the book's
# package llms_from_scratch (ch06, ch07, appendix_e) and the DPO notebook; "# +" marks course additions.
SIGNATURES = {
    ("classification", "create_balanced_dataset"): "df",
    ("classification", "random_split"): "df, train_frac, validation_frac",
    ("classification", "SpamDataset"): "csv_file, tokenizer, max_length=None, pad_token_id=50256",
    ("classification", "calc_accuracy_loader"): "data_loader, model, device, num_batches=None",
    ("classification", "calc_loss_batch"): "input_batch, target_batch, model, device",
    ("classification", "calc_loss_loader"): "data_loader, model, device, num_batches=None",
    ("classification", "evaluate_model"): "model, train_loader, val_loader, device, eval_iter",
    ("classification", "train_classifier_simple"): (
        "model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter"
    ),
    ("classification", "plot_values"): (
        "epochs_seen, examples_seen, train_values, val_values, label='loss', save_path=None"  # + save_path
    ),
    ("classification", "classify_review"): "text, model, tokenizer, device, max_length=None, pad_token_id=50256",
    ("instruction", "format_input"): "entry",
    ("instruction", "InstructionDataset"): "data, tokenizer",
    ("instruction", "custom_collate_draft_1"): "batch, pad_token_id=50256, device='cpu'",
    ("instruction", "custom_collate_draft_2"): "batch, pad_token_id=50256, device='cpu'",
    ("instruction", "custom_collate_fn"): (
        "batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device='cpu'"
    ),
    ("instruction", "query_model"): (
        "prompt, model='llama3', url='http://localhost:11434/api/chat', timeout=30.0"  # + timeout
    ),
    ("instruction", "generate_model_scores"): "json_data, json_key, model='llama3', judge=None",  # + judge
    ("instruction", "extract_response"): "response_text, input_text",
    ("dpo", "PreferenceDataset"): "data, tokenizer",
    ("dpo", "custom_collate_fn"): (
        "batch, pad_token_id=50256, allowed_max_length=None, mask_prompt_tokens=True, device='cpu'"
    ),
    ("dpo", "decode_tokens_from_batch"): "token_ids, tokenizer",
    ("dpo", "compute_dpo_loss"): (
        "model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs, "
        "reference_rejected_logprobs, beta=0.1"
    ),
    ("dpo", "compute_logprobs"): "logits, labels, selection_mask=None",
    ("dpo", "compute_dpo_loss_batch"): "batch, policy_model, reference_model, beta",
    ("dpo", "compute_dpo_loss_loader"): "data_loader, policy_model, reference_model, beta, num_batches=None",
    ("dpo", "evaluate_dpo_loss_loader"): "policy_model, reference_model, train_loader, val_loader, beta, eval_iter",
    ("dpo", "train_model_dpo_simple"): (
        "policy_model, reference_model, train_loader, val_loader, optimizer, num_epochs, beta, eval_freq, "
        "eval_iter, start_context, tokenizer"
    ),
    ("lora", "LoRALayer"): "in_dim, out_dim, rank, alpha",
    ("lora", "LinearWithLoRA"): "linear, rank, alpha",
    ("lora", "replace_linear_with_lora"): "model, rank, alpha",
}


def _signature(obj) -> str:
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params)


@pytest.mark.parametrize(("module", "name"), list(SIGNATURES), ids=[f"{m}.{n}" for m, n in SIGNATURES])
def test_book_signature(module, name):
    obj = getattr(importlib.import_module(f"reference.{module}"), name)
    assert _signature(obj) == SIGNATURES[module, name]


@pytest.mark.parametrize("module", sorted({m for m, _ in SIGNATURES}))
def test_every_public_name_exists(module):
    mod = importlib.import_module(f"reference.{module}")
    assert all(hasattr(mod, name) for name in mod.__all__)
