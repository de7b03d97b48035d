"""Correct stand-ins for the parts of chapter 7's composites (probe_kit.parts.replaced swaps them in).

A test of a composite (the answers of a model, the F1 score of two answers, the DPO loss of a batch, the DPO
training loop) runs the student's composite with these parts in place of the student's own, so a bug in a part
costs only the part's own tests. They follow the book's chapter 7 and its DPO notebook, with the same names and
signatures as the stubs, and call one another (never the student's code): a stand-in's globals are this module.

`INSTRUCTION_PARTS` and `DPO_PARTS` map each name to its stand-in, for `replaced(student, **INSTRUCTION_PARTS)`.
"""

import re
import string
from collections import Counter

import torch
import torch.nn.functional as F

# -- chapter 7: prompts, answers and their scores ------------------------------------------------------------------

PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.")


def format_input(entry):
    """The Alpaca-style prompt: the preamble, the instruction, and the input only when there is one."""
    prompt = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry["input"]:
        prompt += f"\n\n### Input:\n{entry['input']}"
    return prompt


def extract_response(response_text, input_text):
    """The generated text after the prompt, without the response header, stripped."""
    answer = response_text[len(input_text):]
    return answer.replace("### Response:", "").strip()


def normalize_answer(text):
    """SQuAD's normalization: lower case, no ASCII punctuation, no articles, single spaces."""
    kept = "".join(character for character in text.lower() if character not in string.punctuation)
    words = re.sub(r"\b(a|an|the)\b", " ", kept).split()
    return " ".join(words)


def exact_match_score(prediction, ground_truth):
    return 1.0 if normalize_answer(prediction) == normalize_answer(ground_truth) else 0.0


def f1_score(prediction, ground_truth):
    """Token F1 of the normalized answers, words counted as bags."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    if len(predicted) == 0 or len(expected) == 0:
        return 1.0 if predicted == expected else 0.0
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


INSTRUCTION_PARTS = {"format_input": format_input, "extract_response": extract_response,
                     "normalize_answer": normalize_answer, "exact_match_score": exact_match_score,
                     "f1_score": f1_score}


# -- the DPO notebook: log-probabilities, the loss, batches, loaders, the evaluation ----------------------------

def compute_logprobs(logits, labels, selection_mask=None):
    """Each sequence's mean log-probability of its next tokens (over the selected ones): shape (batch_size,)."""
    token_logprobs = -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    if selection_mask is None:
        return token_logprobs.mean(dim=-1)
    weights = selection_mask[:, 1:].to(token_logprobs.dtype)
    return (token_logprobs * weights).sum(dim=-1) / weights.sum(dim=-1)


def compute_dpo_loss(model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs,
                     reference_rejected_logprobs, beta=0.1):
    """(loss, chosen reward, rejected reward), averaged over the batch; the rewards without a graph."""
    chosen_ratio = model_chosen_logprobs - reference_chosen_logprobs
    rejected_ratio = model_rejected_logprobs - reference_rejected_logprobs
    loss = F.softplus(-beta * (chosen_ratio - rejected_ratio)).mean()  # softplus(-x) = -logsigmoid(x)
    return loss, chosen_ratio.detach().mean(), rejected_ratio.detach().mean()


def compute_dpo_loss_batch(batch, policy_model, reference_model, beta):
    """The DPO loss and rewards of one batch; the frozen reference model runs without gradients."""
    def answer_logprobs(model, key):
        return compute_logprobs(model(batch[key]), batch[key], selection_mask=batch[f"{key}_mask"])

    policy = [answer_logprobs(policy_model, key) for key in ("chosen", "rejected")]
    with torch.no_grad():
        reference = [answer_logprobs(reference_model, key) for key in ("chosen", "rejected")]
    return compute_dpo_loss(*policy, *reference, beta=beta)


def compute_dpo_loss_loader(data_loader, policy_model, reference_model, beta, num_batches=None):
    """The mean loss, chosen and rejected reward (floats) over the first num_batches batches (all by default)."""
    if len(data_loader) == 0:
        return float("nan"), float("nan"), float("nan")
    count = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    sums = [0.0, 0.0, 0.0]
    for index, batch in enumerate(data_loader):
        if index == count:
            break
        values = compute_dpo_loss_batch(batch, policy_model, reference_model, beta)
        sums = [total + value.item() for total, value in zip(sums, values)]
    return tuple(total / count for total in sums)


def evaluate_dpo_loss_loader(policy_model, reference_model, train_loader, val_loader, beta, eval_iter):
    """The six numbers of an evaluation, in eval mode; the policy is put back into training mode."""
    policy_model.eval()
    results = {}
    with torch.no_grad():
        for split, loader in (("train", train_loader), ("val", val_loader)):
            loss, chosen, rejected = compute_dpo_loss_loader(loader, policy_model, reference_model, beta,
                                                             num_batches=eval_iter)
            results.update({f"{split}_loss": loss, f"{split}_chosen_reward": chosen,
                            f"{split}_rejected_reward": rejected})
    policy_model.train()
    return results


DPO_PARTS = {"compute_logprobs": compute_logprobs, "compute_dpo_loss": compute_dpo_loss,
             "compute_dpo_loss_batch": compute_dpo_loss_batch, "compute_dpo_loss_loader": compute_dpo_loss_loader,
             "evaluate_dpo_loss_loader": evaluate_dpo_loss_loader}


def parts(table, *names):
    """The stand-ins of `names` from `table` (INSTRUCTION_PARTS or DPO_PARTS), for replaced(student, **...)."""
    return {name: table[name] for name in names}
