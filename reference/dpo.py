"""Chapter 7 bonus: aligning an instruction-finetuned model with Direct Preference Optimization (DPO).

Each training example is a prompt with two answers, one preferred (``chosen``) and one not
(``rejected``). DPO raises the policy model's probability of the chosen answer relative to the rejected
one, measured against a frozen copy of the model it started from (the reference model), which keeps the
policy from drifting far from what it already does well. No reward model, no sampling: the loss is
computed from log-probabilities of the two given answers.

1. :class:`PreferenceDataset` tokenizes the prompt, prompt + chosen answer and prompt + rejected answer.
2. :func:`custom_collate_fn` pads chosen and rejected sequences to one common length and builds masks
   that select the answer tokens only (not the prompt, not the padding).
3. :func:`compute_logprobs`: the mean log-probability a model gives the selected tokens of a sequence.
4. :func:`compute_dpo_loss`: with ``beta`` the strength of the pull towards the reference model,

       loss = -log sigmoid(beta * ((pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)))

   averaged over the batch, where each term is a mean log-probability. When the policy equals the
   reference the bracket is 0 and the loss is ln 2 = 0.6931. The "rewards" it also returns, tracked
   during training, are ``pi_chosen - ref_chosen`` and ``pi_rejected - ref_rejected`` (without beta),
   averaged over the batch.
5. :func:`compute_dpo_loss_batch` / :func:`compute_dpo_loss_loader` / :func:`evaluate_dpo_loss_loader`
   and the training loop :func:`train_model_dpo_simple`, chapter 5's loop with the DPO loss.

The reference model gets no gradient: its log-probabilities are computed under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from reference.instruction import RESPONSE_HEADER, format_input
from reference.pretraining import generate_and_print_sample

__all__ = [
    "PreferenceDataset",
    "custom_collate_fn",
    "decode_tokens_from_batch",
    "compute_dpo_loss",
    "compute_logprobs",
    "compute_dpo_loss_batch",
    "compute_dpo_loss_loader",
    "evaluate_dpo_loss_loader",
    "train_model_dpo_simple",
]


class PreferenceDataset(Dataset):
    """Each entry tokenized three ways: the prompt alone, prompt + chosen answer, prompt + rejected answer.

    ``self.encoded_texts[i]`` is ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` (lists of token
    ids). The prompt is :func:`reference.instruction.format_input`; the answers follow it after
    ``"\\n\\n### Response:\\n"``, as in chapter 7.
    """

    def __init__(self, data: list, tokenizer):  # data: entries with a chosen and a rejected answer
        self.data = data

        self.encoded_texts = []
        for entry in data:
            prompt = format_input(entry)
            rejected_response = entry["rejected"]
            chosen_response = entry["chosen"]

            prompt_tokens = tokenizer.encode(prompt)
            chosen_full_text = f"{prompt}{RESPONSE_HEADER}{chosen_response}"
            rejected_full_text = f"{prompt}{RESPONSE_HEADER}{rejected_response}"
            chosen_full_tokens = tokenizer.encode(chosen_full_text)
            rejected_full_tokens = tokenizer.encode(rejected_full_text)

            self.encoded_texts.append(
                {"prompt": prompt_tokens, "chosen": chosen_full_tokens, "rejected": rejected_full_tokens}
            )

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.encoded_texts[index]

    def __len__(self) -> int:
        return len(self.data)


def custom_collate_fn(
    batch: list[dict],
    pad_token_id: int = 50256,
    allowed_max_length: int | None = None,
    mask_prompt_tokens: bool = True,
    device="cpu",
) -> dict:
    """Pad a batch of preference items and build the masks that select the answer tokens.

    Returns a dict:

    - ``"prompt"``: a list of b 1-d tensors, the prompts' token ids (different lengths, left on the CPU);
    - ``"chosen"``, ``"rejected"``: (b, L) token ids, each padded with ``pad_token_id`` to one common
      length L = 1 + the longest chosen or rejected sequence in the batch (so both tensors have the same
      shape and every row ends with at least one pad);
    - ``"chosen_mask"``, ``"rejected_mask"``: (b, L) bool, True where the token belongs to the answer.

    A mask is False on the padding and, with ``mask_prompt_tokens``, on the prompt and on the two newline
    tokens that follow it. It is True from ``"### Response:\\n"`` to the answer's last token: the header
    is not masked, the book keeps it in. ``allowed_max_length`` cuts the four tensors to that many
    columns; ``device`` is where they are put.
    """
    batch_data = {"prompt": [], "chosen": [], "rejected": [], "rejected_mask": [], "chosen_mask": []}

    # One length for chosen and rejected alike (+1: at least one pad), so the two can share a batch shape.
    max_length_common = 0
    if batch:
        for key in ["chosen", "rejected"]:
            current_max = max(len(item[key]) + 1 for item in batch)
            max_length_common = max(max_length_common, current_max)

    for item in batch:
        prompt = torch.tensor(item["prompt"])  # (num_prompt_tokens,)
        batch_data["prompt"].append(prompt)

        for key in ["chosen", "rejected"]:
            sequence = item[key]
            padded = sequence + [pad_token_id] * (max_length_common - len(sequence))  # L tokens
            mask = torch.ones(len(padded)).bool()  # (L,)

            # Padding is not part of the answer.
            mask[len(sequence) :] = False

            # Nor is the prompt. "+2": the prompt's tokens are followed by the two "\n" tokens (198, 198)
            # that open "\n\n### Response:\n"; they are masked as well.
            if mask_prompt_tokens:
                mask[: prompt.shape[0] + 2] = False

            batch_data[key].append(torch.tensor(padded))
            batch_data[f"{key}_mask"].append(mask)

    for key in ["chosen", "rejected", "chosen_mask", "rejected_mask"]:
        tensor_stack = torch.stack(batch_data[key])  # (b, L)
        if allowed_max_length is not None:
            tensor_stack = tensor_stack[:, :allowed_max_length]  # (b, min(L, allowed_max_length))
        batch_data[key] = tensor_stack.to(device)

    return batch_data


def decode_tokens_from_batch(token_ids: torch.Tensor, tokenizer) -> str:
    """Token ids of any shape (e.g. one row of a batch, or the masked part of it) as text, to look at."""
    ids_in_python_list = token_ids.flatten().tolist()
    return tokenizer.decode(ids_in_python_list)


# --- the loss -------------------------------------------------------------------------------------------------


def compute_dpo_loss(
    model_chosen_logprobs: torch.Tensor,
    model_rejected_logprobs: torch.Tensor,
    reference_chosen_logprobs: torch.Tensor,
    reference_rejected_logprobs: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (Rafailov et al. 2023, eq. 7) and the chosen and rejected rewards.

    Args:
        model_chosen_logprobs, model_rejected_logprobs: (b,), the policy model's log-probabilities of the
            chosen and rejected answers.
        reference_chosen_logprobs, reference_rejected_logprobs: (b,), the same from the reference model.
        beta: how strongly the policy is held near the reference model (typically 0.1 to 0.5); as beta goes
            to 0 the reference matters less and less.

    Returns:
        (loss, chosen_rewards, rejected_rewards), three scalars, each a mean over the batch. The rewards are
        ``policy - reference`` log-probabilities, WITHOUT the factor beta (the book's choice; papers often
        include it), and detached: they are for tracking only.
    """
    # log(pi(c) / pi(r)): how much more the policy likes the chosen answer than the rejected one; the same
    # for the reference. Logs of ratios are differences of logs.
    model_logratios = model_chosen_logprobs - model_rejected_logprobs  # (b,)
    reference_logratios = reference_chosen_logprobs - reference_rejected_logprobs  # (b,)
    logits = model_logratios - reference_logratios  # (b,): the policy's preference beyond the reference's

    # -log(sigmoid(z)) falls as z grows: the loss rewards moving the preference towards the chosen answer.
    # logsigmoid is the numerically stable form of log(sigmoid(z)).
    losses = -F.logsigmoid(beta * logits)  # (b,)

    chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()  # (b,)
    rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()  # (b,)

    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


def compute_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, selection_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean log-probability that a model gives each sequence's tokens (the selected ones).

    Args:
        logits: (b, num_tokens, vocab_size), the model's output for ``labels``.
        labels: (b, num_tokens), the token ids that were fed to the model.
        selection_mask: (b, num_tokens), True (or 1) for the tokens to count; None counts all of them.

    Returns:
        (b,): for each sequence, the mean over the selected positions of log p(token | the tokens before it).

    The logits at position j predict token j + 1, so token 0 (never predicted) and the last position's
    logits (predicting beyond the sequence) are dropped, and the mask is shifted like the labels.
    """
    labels = labels[:, 1:].clone()  # (b, num_tokens - 1): the tokens that were predicted
    logits = logits[:, :-1, :]  # (b, num_tokens - 1, vocab_size): the predictions of those tokens

    log_probs = F.log_softmax(logits, dim=-1)  # (b, num_tokens - 1, vocab_size)

    # Pick, at every position, the log-probability of the token that actually came next.
    selected_log_probs = torch.gather(input=log_probs, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    # selected_log_probs: (b, num_tokens - 1)

    if selection_mask is not None:
        mask = selection_mask[:, 1:].clone()  # (b, num_tokens - 1), aligned with the labels

        # Zero out the tokens not selected, then average over the selected ones only.
        selected_log_probs = selected_log_probs * mask  # (b, num_tokens - 1)
        avg_log_prob = selected_log_probs.sum(-1) / mask.sum(-1)  # (b,)
        return avg_log_prob

    return selected_log_probs.mean(-1)  # (b,)


def compute_dpo_loss_batch(
    batch: dict, policy_model: torch.nn.Module, reference_model: torch.nn.Module, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss and rewards of one batch from :func:`custom_collate_fn`.

    The policy model's log-probabilities keep their graph (the loss is backpropagated into the policy);
    the reference model's are computed under ``torch.no_grad()``, so it is never trained.
    """
    policy_chosen_log_probas = compute_logprobs(
        logits=policy_model(batch["chosen"]),  # (b, L, vocab_size)
        labels=batch["chosen"],
        selection_mask=batch["chosen_mask"],
    )  # (b,)
    policy_rejected_log_probas = compute_logprobs(
        logits=policy_model(batch["rejected"]), labels=batch["rejected"], selection_mask=batch["rejected_mask"]
    )  # (b,)

    with torch.no_grad():
        ref_chosen_log_probas = compute_logprobs(
            logits=reference_model(batch["chosen"]), labels=batch["chosen"], selection_mask=batch["chosen_mask"]
        )  # (b,)
        ref_rejected_log_probas = compute_logprobs(
            logits=reference_model(batch["rejected"]),
            labels=batch["rejected"],
            selection_mask=batch["rejected_mask"],
        )  # (b,)

    loss, chosen_rewards, rejected_rewards = compute_dpo_loss(
        model_chosen_logprobs=policy_chosen_log_probas,
        model_rejected_logprobs=policy_rejected_log_probas,
        reference_chosen_logprobs=ref_chosen_log_probas,
        reference_rejected_logprobs=ref_rejected_log_probas,
        beta=beta,
    )
    return loss, chosen_rewards, rejected_rewards


def compute_dpo_loss_loader(
    data_loader, policy_model: torch.nn.Module, reference_model: torch.nn.Module, beta: float,
    num_batches: int | None = None,
) -> tuple[float, float, float]:
    """Mean loss, chosen reward and rejected reward over the first ``num_batches`` batches (default: all).

    An empty loader gives ``(nan, nan, nan)``. (The book's version returns a single nan there, which its
    callers cannot unpack.)
    """
    total_loss, total_chosen_rewards, total_rejected_rewards = 0.0, 0.0, 0.0
    if len(data_loader) == 0:
        return float("nan"), float("nan"), float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))  # never more batches than the loader has

    for i, batch in enumerate(data_loader):
        if i < num_batches:
            loss, chosen_rewards, rejected_rewards = compute_dpo_loss_batch(
                batch=batch, policy_model=policy_model, reference_model=reference_model, beta=beta
            )
            total_loss += loss.item()
            total_chosen_rewards += chosen_rewards.item()
            total_rejected_rewards += rejected_rewards.item()
        else:
            break

    total_loss /= num_batches
    total_chosen_rewards /= num_batches
    total_rejected_rewards /= num_batches
    return total_loss, total_chosen_rewards, total_rejected_rewards


def evaluate_dpo_loss_loader(
    policy_model: torch.nn.Module, reference_model: torch.nn.Module, train_loader, val_loader, beta: float,
    eval_iter: int,
) -> dict[str, float]:
    """DPO loss and rewards on ``eval_iter`` batches of each loader, in eval mode and without gradients.

    Returns a dict with the keys ``train_loss``, ``train_chosen_reward``, ``train_rejected_reward``,
    ``val_loss``, ``val_chosen_reward``, ``val_rejected_reward``. The policy model is put back in training
    mode afterwards.
    """
    policy_model.eval()
    with torch.no_grad():
        train_loss, train_chosen_rewards, train_rejected_rewards = compute_dpo_loss_loader(
            data_loader=train_loader, policy_model=policy_model, reference_model=reference_model, beta=beta,
            num_batches=eval_iter,
        )
        val_loss, val_chosen_rewards, val_rejected_rewards = compute_dpo_loss_loader(
            data_loader=val_loader, policy_model=policy_model, reference_model=reference_model, beta=beta,
            num_batches=eval_iter,
        )

    res = {
        "train_loss": train_loss,
        "train_chosen_reward": train_chosen_rewards,
        "train_rejected_reward": train_rejected_rewards,
        "val_loss": val_loss,
        "val_chosen_reward": val_chosen_rewards,
        "val_rejected_reward": val_rejected_rewards,
    }
    policy_model.train()
    return res


def train_model_dpo_simple(
    policy_model: torch.nn.Module,
    reference_model: torch.nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    beta: float,
    eval_freq: int,
    eval_iter: int,
    start_context: str | None,
    tokenizer,
) -> dict[str, list]:
    """Chapter 5's training loop with the DPO loss: one optimizer step per batch on the policy model.

    Every ``eval_freq`` steps (counted from 0 over all epochs) the loss and rewards are evaluated on
    ``eval_iter`` batches of each loader, recorded and printed with the reward margins (chosen minus
    rejected reward). After every epoch a sample is generated from ``start_context`` with the policy model
    (``start_context=None`` skips it). ``optimizer`` should hold the policy model's parameters only.

    Returns a dict of lists, one entry per evaluation: ``train_losses``, ``train_chosen_rewards``,
    ``train_rejected_rewards``, ``val_losses``, ``val_chosen_rewards``, ``val_rejected_rewards`` and
    ``tokens_seen`` (chosen tokens trained on so far, padding included).
    """
    tracking = {
        "train_losses": [],
        "train_chosen_rewards": [],
        "train_rejected_rewards": [],
        "val_losses": [],
        "val_chosen_rewards": [],
        "val_rejected_rewards": [],
        "tokens_seen": [],
    }
    tokens_seen, global_step = 0, -1

    for epoch in range(num_epochs):
        policy_model.train()

        for batch in train_loader:
            optimizer.zero_grad()
            loss, chosen_rewards, rejected_rewards = compute_dpo_loss_batch(
                batch=batch, policy_model=policy_model, reference_model=reference_model, beta=beta
            )
            loss.backward()  # gradients reach the policy only: the reference ran under no_grad
            optimizer.step()

            tokens_seen += batch["chosen"].numel()  # b * L
            global_step += 1

            if global_step % eval_freq == 0:
                res = evaluate_dpo_loss_loader(
                    policy_model=policy_model, reference_model=reference_model, train_loader=train_loader,
                    val_loader=val_loader, beta=beta, eval_iter=eval_iter,
                )
                tracking["train_losses"].append(res["train_loss"])
                tracking["train_chosen_rewards"].append(res["train_chosen_reward"])
                tracking["train_rejected_rewards"].append(res["train_rejected_reward"])
                tracking["val_losses"].append(res["val_loss"])
                tracking["val_chosen_rewards"].append(res["val_chosen_reward"])
                tracking["val_rejected_rewards"].append(res["val_rejected_reward"])
                tracking["tokens_seen"].append(tokens_seen)
                train_reward_margin = res["train_chosen_reward"] - res["train_rejected_reward"]
                val_reward_margin = res["val_chosen_reward"] - res["val_rejected_reward"]
                print(
                    f"Ep {epoch + 1} (Step {global_step:06d}): "
                    f"Train loss {res['train_loss']:.3f}, Val loss {res['val_loss']:.3f}, "
                    f"Train reward margins {train_reward_margin:.3f}, "
                    f"Val reward margins {val_reward_margin:.3f}"
                )

        if start_context is not None:
            # The book passes a global `model` here; the policy model is the one being trained.
            device = next(policy_model.parameters()).device
            generate_and_print_sample(
                model=policy_model, tokenizer=tokenizer, device=device, start_context=start_context
            )

    return tracking
