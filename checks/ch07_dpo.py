"""Public checks of the chapter 7 bonus (Direct Preference Optimization), one per hidden grader test.

The worked examples are the notebook's own: the book's entry 50 with a chosen and a rejected answer, a small
batch of hand-made items whose prompt is followed by the two newline tokens of the response header, the logits
of the cross-entropy example, and the notebook's loss demo (ln 2 when the policy equals the reference, falling
as the policy prefers the chosen answers). Where models are needed, the checks use a tiny GPT and a policy that
starts as a copy of the reference model, as the book does, so that the loss must be ln 2. The hidden grader uses
GPT-2's tokenizer, other batches and models, and compares with a reference implementation.
"""

import contextlib
import copy
import io
import math
import sys

import torch
import torch.nn.functional as F

from checks import Checks, Class, Function, Interface, expect_close, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("PreferenceDataset", "(data, tokenizer)", example={"data": [], "tokenizer": None},
          attributes=("data", "encoded_texts"), methods={"__getitem__": "(index)", "__len__": "()"}),
    Function("custom_collate_fn", "(batch, pad_token_id=50256, allowed_max_length=None, mask_prompt_tokens=True, "
                                  "device='cpu')"),
    Function("compute_logprobs", "(logits, labels, selection_mask=None)"),
    Function("compute_dpo_loss", "(model_chosen_logprobs, model_rejected_logprobs, reference_chosen_logprobs, "
                                 "reference_rejected_logprobs, beta=0.1)"),
    Function("compute_dpo_loss_batch", "(batch, policy_model, reference_model, beta)"),
    Function("compute_dpo_loss_loader", "(data_loader, policy_model, reference_model, beta, num_batches=None)"),
    Function("evaluate_dpo_loss_loader", "(policy_model, reference_model, train_loader, val_loader, beta, "
                                         "eval_iter)"),
    Function("train_model_dpo_simple", "(policy_model, reference_model, train_loader, val_loader, optimizer, "
                                       "num_epochs, beta, eval_freq, eval_iter, start_context, tokenizer)"),
)

CHECKS = Checks("ch07_dpo", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

LN2 = math.log(2)

# The book's entry 50 with its two answers, and its prompt as the book prints it.
BOOK_ENTRY_50 = {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
                 "output": "The correct spelling is 'Occasion.'",
                 "rejected": "The correct spelling is obviously 'Occasion.'",
                 "chosen": "The correct spelling is 'Occasion.'"}
PROMPT_50 = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
             "request.\n\n### Instruction:\nIdentify the correct spelling of the following word."
             "\n\n### Input:\nOcassion")
HEADER = "\n\n### Response:\n"

# Two hand-made items: the prompt, the two "\n" tokens (9 here) that open the response header, then the answer.
ITEMS = [{"prompt": [1, 2, 3], "chosen": [1, 2, 3, 9, 9, 4, 5], "rejected": [1, 2, 3, 9, 9, 6]},
         {"prompt": [1, 2], "chosen": [1, 2, 9, 9, 7], "rejected": [1, 2, 9, 9, 8, 8, 8, 8]}]
P = 50256
# chosen and rejected share one length: 1 + the longest sequence (8), so 9.
CHOSEN = [[1, 2, 3, 9, 9, 4, 5, P, P], [1, 2, 9, 9, 7, P, P, P, P]]
REJECTED = [[1, 2, 3, 9, 9, 6, P, P, P], [1, 2, 9, 9, 8, 8, 8, 8, P]]
CHOSEN_MASK = [[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0]]
REJECTED_MASK = [[0, 0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0]]
CHOSEN_MASK_ALL = [[1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0]]
REJECTED_MASK_ALL = [[1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]]

HINT_FROZEN = ("run the reference model with gradients turned off (a torch.no_grad() block around its two "
               "log-probabilities): it is frozen.")
# What the hidden grader adds when the student's code raises, here as well (error_hint).
HINT_ENCODE = "encode the texts with tokenizer.encode (section 1)."
HINT_GATHER = ("torch.gather picks, along the last dimension, the log-probability of each next token: its index is "
               "the shifted labels with one more dimension (unsqueeze(-1)); section 5.")
TRACKING_KEYS = ["train_losses", "train_chosen_rewards", "train_rejected_rewards", "val_losses",
                 "val_chosen_rewards", "val_rejected_rewards", "tokens_seen"]
EVAL_KEYS = ["train_loss", "train_chosen_reward", "train_rejected_reward", "val_loss", "val_chosen_reward",
             "val_rejected_reward"]


class CharTokenizer:
    """One token per ASCII character (ids 1 to 127)."""

    def encode(self, text, allowed_special=None):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) if 0 < i < 128 else "?" for i in ids)


class SGD:
    """Plain gradient descent with the optimizer methods the training loop calls."""

    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr

    def zero_grad(self, set_to_none=True):
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self):
        for param in self.params:
            if param.grad is not None:
                param.add_(param.grad, alpha=-self.lr)


def collate(ns, **kwargs):
    batch = ns["custom_collate_fn"]([{key: list(value) for key, value in item.items()} for item in ITEMS], **kwargs)
    require(isinstance(batch, dict) and all(k in batch for k in ("prompt", "chosen", "rejected", "chosen_mask",
                                                                       "rejected_mask")),
                "custom_collate_fn does not return a dict with the keys prompt, chosen, rejected, chosen_mask and "
                "rejected_mask.", "return the dict of the five entries.")
    return batch


def as_lists(tensor, what, shape, hint):
    expect_shape(tensor, shape, what, hint)
    return tensor.long().tolist()


def tiny_models(seed=123, drop_rate=0.0):
    """A tiny GPT (vocabulary 128) as the reference model and an independent copy as the policy."""
    from reference.gpt import GPTModel

    torch.manual_seed(seed)
    cfg = {"vocab_size": 128, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
           "drop_rate": drop_rate, "qkv_bias": False}
    reference = GPTModel(cfg).eval()
    return copy.deepcopy(reference), reference


def tiny_batch(ns):
    """The batch the collate function makes of the hand-made items with padding 0 (so that every id fits the tiny
    GPT's vocabulary), written out here: the checks of the loss, the loader, the evaluation and the training run
    do not depend on your custom_collate_fn (its own checks are above)."""
    def padded(rows):
        return torch.tensor([[0 if token == P else token for token in row] for row in rows])

    return {"prompt": [torch.tensor(item["prompt"]) for item in ITEMS], "chosen": padded(CHOSEN),
            "rejected": padded(REJECTED), "chosen_mask": torch.tensor(CHOSEN_MASK, dtype=torch.bool),
            "rejected_mask": torch.tensor(REJECTED_MASK, dtype=torch.bool)}


@contextlib.contextmanager
def global_named(namespace, name, value):
    """`name` bound to `value` in the notebook's globals while the check runs; the notebook's own is put back."""
    missing = object()
    saved = namespace.get(name, missing)
    namespace[name] = value
    try:
        yield
    finally:
        if saved is missing:
            del namespace[name]
        else:
            namespace[name] = saved


def policy_as_global_model(namespace, policy):
    """The book's loop samples from a global `model` (the policy model in the book's notebook): while the check
    runs, `model` names the check's policy model, as the hidden grader does."""
    return global_named(namespace, "model", policy)


class WatchedSGD(SGD):
    """SGD that notices gradients left over from an earlier step: after each step it marks the gradients it used
    as spent (NaN). Resetting them (the optimizer's or the model's zero_grad) removes the marks; a backward pass
    without a reset adds the new gradients to them, and the next step sees NaN."""

    def __init__(self, params, lr):
        super().__init__(params, lr)
        self.steps, self.stale_steps = 0, 0

    @torch.no_grad()
    def step(self):
        self.steps += 1
        if any(p.grad is not None and bool(torch.isnan(p.grad).any()) for p in self.params):
            self.stale_steps += 1
            for param in self.params:
                if param.grad is not None:
                    param.grad.nan_to_num_(0.0)
        super().step()
        for param in self.params:
            if param.grad is not None:
                param.grad.fill_(float("nan"))


def your_batch_loss(ns, batch, policy, reference, beta, masked=True):
    """The DPO loss and rewards of a batch from the student's own compute_logprobs and compute_dpo_loss (with or
    without the masks): what compute_dpo_loss_batch must agree with."""
    logprobs = [ns["compute_logprobs"](model(batch[key]), batch[key],
                                       selection_mask=batch[f"{key}_mask"] if masked else None)
                for model in (policy, reference) for key in ("chosen", "rejected")]
    return ns["compute_dpo_loss"](*logprobs, beta=beta)


def expect_number(value, expected, what, hint):
    require(isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1),
                f"{what}: expected one number, got {type(value).__name__}.", "average over the batch with .mean().")
    expect_close(torch.as_tensor(float(value)), expected, what, hint)


# -- section 1 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_preference_dataset", subject="PreferenceDataset",
                 description="PreferenceDataset encodes the prompt, prompt + chosen and prompt + rejected",
                 error_hint=HINT_ENCODE)
def check_preference_dataset(ns):
    tokenizer = CharTokenizer()
    dataset = ns["PreferenceDataset"]([dict(BOOK_ENTRY_50)], tokenizer)
    expect_equal(len(dataset), 1, "len(PreferenceDataset(one entry, tokenizer))", "__len__ returns len(self.data).")
    item = dataset[0]
    require(isinstance(item, dict), "dataset[0] is not a dict.", "each item is a dict: prompt, chosen, rejected.")
    expected = {"prompt": tokenizer.encode(PROMPT_50),
                "chosen": tokenizer.encode(PROMPT_50 + HEADER + BOOK_ENTRY_50["chosen"]),
                "rejected": tokenizer.encode(PROMPT_50 + HEADER + BOOK_ENTRY_50["rejected"])}
    for key, value in expected.items():
        expect_equal(list(item.get(key, [])), value, f"dataset[0][{key!r}] (one token per character)",
                     "the prompt is format_input of the entry; chosen is the prompt, the response header and the "
                     "chosen answer; rejected the same with the rejected answer; each encoded with the tokenizer.")


# -- section 2 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_collate_token_ids", subject="custom_collate_fn",
                 description="custom_collate_fn pads chosen and rejected to one common length")
def check_collate_token_ids(ns):
    batch = collate(ns)
    hint = "pad to 1 + the longest chosen or rejected sequence of the batch, with pad_token_id."
    expect_equal(as_lists(batch["chosen"], "batch['chosen']", (2, 9), hint), CHOSEN, "batch['chosen']", hint)
    expect_equal(as_lists(batch["rejected"], "batch['rejected']", (2, 9), hint), REJECTED, "batch['rejected']", hint)
    prompts = batch["prompt"]
    require(isinstance(prompts, list) and [p.tolist() for p in prompts] == [i["prompt"] for i in ITEMS],
                "batch['prompt'] is not the list of the prompts as tensors.", "append torch.tensor(item['prompt']).")


@CHECKS.register("test_collate_masks", subject="custom_collate_fn",
                 description="the masks are True on the answers only (not the prompt, its two newlines, the padding)")
def check_collate_masks(ns):
    batch = collate(ns)
    hint = ("False on the padding (from position len(sequence) on) and, with mask_prompt_tokens, on the prompt's "
            "positions and the two newline tokens after it (the prompt's length + 2 positions).")
    for key, expected in (("chosen_mask", CHOSEN_MASK), ("rejected_mask", REJECTED_MASK)):
        expect_equal(as_lists(batch[key], f"batch[{key!r}]", (2, 9), hint), expected, f"batch[{key!r}] (as 0/1)", hint)


@CHECKS.register("test_collate_without_prompt_masking", subject="custom_collate_fn",
                 description="with mask_prompt_tokens=False the masks keep the prompt")
def check_collate_without_prompt_masking(ns):
    batch = collate(ns, mask_prompt_tokens=False)
    hint = "mask the prompt only when mask_prompt_tokens is True; the padding always."
    for key, expected in (("chosen_mask", CHOSEN_MASK_ALL), ("rejected_mask", REJECTED_MASK_ALL)):
        expect_equal(as_lists(batch[key], f"batch[{key!r}]", (2, 9), hint), expected,
                     f"batch[{key!r}] with mask_prompt_tokens=False (as 0/1)", hint)


@CHECKS.register("test_collate_truncation_and_device", subject="custom_collate_fn",
                 description="allowed_max_length cuts ids and masks; the tensors are on `device`")
def check_collate_truncation_and_device(ns):
    batch = collate(ns, allowed_max_length=6)
    for key in ("chosen", "rejected", "chosen_mask", "rejected_mask"):
        expect_shape(batch[key], (2, 6), f"batch[{key!r}] with allowed_max_length=6",
                     "cut every stacked tensor to its first allowed_max_length columns.")
    expect_equal(batch["chosen"].tolist(), [row[:6] for row in CHOSEN], "batch['chosen'] with allowed_max_length=6",
                 "cut after padding, keeping the first allowed_max_length columns.")
    # The meta device holds no values, only shapes: it shows where the tensors go without a GPU.
    batch = collate(ns, device="meta")
    for key in ("chosen", "rejected", "chosen_mask", "rejected_mask"):
        require(isinstance(batch[key], torch.Tensor) and batch[key].device.type == "meta",
                f"custom_collate_fn(batch, device='meta'): batch[{key!r}] is not on the meta device.",
                "move each stacked tensor to `device` before returning the batch.")


# -- sections 4 and 5 ---------------------------------------------------------------------------------------------

@CHECKS.register("test_compute_logprobs", subject="compute_logprobs",
                 description="compute_logprobs on the cross-entropy example, with and without a mask, and on its "
                             "logits times 100",
                 error_hint=HINT_GATHER)
def check_compute_logprobs(ns):
    rows = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [0.0, 0.0, 0.0]])  # the example's logits, one more row
    logits, labels = rows.unsqueeze(0), torch.tensor([[1, 0, 2]])  # (1, 3, 3), (1, 3)
    expected = -F.cross_entropy(rows[:2], torch.tensor([0, 2]))  # the first two rows predict tokens 0 and 2
    hint = ("the labels are the next tokens, labels[:, 1:], predicted by logits[:, :-1]; gather their log_softmax "
            "and average over the sequence (over the selected tokens with a mask, shifted like the labels).")
    got = ns["compute_logprobs"](logits, labels)
    expect_shape(got, (1,), "compute_logprobs(logits (1, 3, 3), labels (1, 3))", "one number per sequence.")
    expect_close(got, [float(expected)], "compute_logprobs(logits, labels)", hint)
    got = ns["compute_logprobs"](logits, labels, selection_mask=torch.tensor([[1, 1, 0]]))
    expect_close(got, [float(F.log_softmax(rows[0], dim=-1)[0])], "compute_logprobs(..., selection_mask=[[1, 1, 0]])"
                 " (only the first predicted token is selected)", hint)
    # A confident model: the same logits times 100. Token 2 of the second row is then about e^-220 likely.
    got = ns["compute_logprobs"](logits * 100, labels)
    expected = -F.cross_entropy(rows[:2] * 100, torch.tensor([0, 2]))
    require(isinstance(got, torch.Tensor) and bool(torch.isfinite(got).all()), f"compute_logprobs(logits * 100, "
            f"labels) is {got.tolist() if isinstance(got, torch.Tensor) else got}, expected [{float(expected):.2f}]: "
            "a probability of e^-220 is 0 in float32, and its log is -inf.",
            "the log of a softmax underflows; F.log_softmax computes the log-probabilities in one stable step.")
    expect_close(got, [float(expected)], "compute_logprobs(logits * 100, labels)", hint, atol=1e-2)


@CHECKS.register("test_dpo_loss", subject="compute_dpo_loss",
                 description="compute_dpo_loss is ln 2 when the policy equals the reference, and 500 when beta * "
                             "logits is -500")
def check_dpo_loss(ns):
    chosen, rejected = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -3.0])
    result = ns["compute_dpo_loss"](chosen, rejected, chosen, rejected)
    require(isinstance(result, (tuple, list)) and len(result) == 3, "compute_dpo_loss does not return three "
                "values.", "return loss, chosen_rewards, rejected_rewards (each a mean over the batch).")
    hint = ("minus the log-sigmoid of beta * logits, averaged over the batch, with logits = (policy chosen - "
            "policy rejected) - (reference chosen - reference rejected).")
    expect_number(result[0], LN2, "compute_dpo_loss(policy = reference): the loss", hint)
    # The policy's chosen answers 1,000 nats less likely: beta * logits = -500, and the loss is softplus(500) = 500.
    loss = ns["compute_dpo_loss"](chosen - 1000.0, rejected, chosen, rejected, beta=0.5)[0]
    require(isinstance(loss, torch.Tensor) and bool(torch.isfinite(loss).all()), f"compute_dpo_loss with the "
            f"policy's chosen log-probabilities 1,000 lower (beta=0.5) is {loss}, expected 500: sigmoid(-500) is 0 "
            "in float32, and its log is -inf.", "the log of a sigmoid underflows; F.logsigmoid computes it in one "
            "stable step.")
    expect_number(loss, 500.0, "compute_dpo_loss with the policy's chosen log-probabilities 1,000 lower (beta=0.5)",
                  hint)


@CHECKS.register("test_dpo_rewards", subject="compute_dpo_loss",
                 description="the rewards are the policy's log-probabilities minus the reference's (without beta), "
                             "detached from the graph")
def check_dpo_rewards(ns):
    chosen, rejected = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -3.0])
    policy_chosen, policy_rejected = (chosen + 0.5).requires_grad_(), (rejected - 1.0).requires_grad_()
    _, chosen_rewards, rejected_rewards = ns["compute_dpo_loss"](policy_chosen, policy_rejected, chosen, rejected)
    hint = ("the chosen reward is the policy's chosen log-probabilities minus the reference's, averaged over the "
            "batch; the same for rejected.")
    expect_number(chosen_rewards, 0.5, "the chosen reward (policy chosen raised by 0.5)", hint)
    expect_number(rejected_rewards, -1.0, "the rejected reward (policy rejected lowered by 1.0)", hint)
    for name, reward in (("chosen", chosen_rewards), ("rejected", rejected_rewards)):
        require(not (isinstance(reward, torch.Tensor) and (reward.requires_grad or reward.grad_fn is not None)),
                f"the {name} reward came back attached to the graph (the policy's log-probabilities require "
                "gradients here, as in training).", "the rewards are for watching: detach the differences before "
                "averaging them, as the book does.")


@CHECKS.register("test_dpo_loss_properties", subject="compute_dpo_loss",
                 description="the loss falls as the policy's chosen log-probabilities rise")
def check_dpo_loss_properties(ns):
    chosen, rejected = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -3.0])
    losses = [float(ns["compute_dpo_loss"](chosen + step, rejected, chosen, rejected)[0]) for step in (0.5, 1.0, 2.0)]
    require(LN2 > losses[0] > losses[1] > losses[2] > 0, f"the losses for the chosen log-probabilities raised "
                f"by 0.5, 1 and 2 are {[round(v, 4) for v in losses]}: they should fall below ln 2 = 0.6931.",
                "mind the sign: loss = -logsigmoid(beta * ((policy chosen - policy rejected) - (reference chosen - "
                "reference rejected))).")


# -- section 6 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_dpo_loss_batch", subject="compute_dpo_loss_batch",
                 description="compute_dpo_loss_batch is ln 2 with zero rewards when the policy copies the reference, "
                             "and, for a policy that differs, what your compute_logprobs and compute_dpo_loss give on "
                             "the masked answers")
def check_dpo_loss_batch(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    loss, chosen_rewards, rejected_rewards = ns["compute_dpo_loss_batch"](batch, policy, reference, 0.1)
    hint = ("the log-probabilities of the policy and of the reference model on the chosen and on the rejected "
            "sequences (compute_logprobs of the model's logits, the sequences as labels, their mask as "
            "selection_mask), then compute_dpo_loss with beta (section 6).")
    expect_number(loss, LN2, "compute_dpo_loss_batch(policy = copy of reference): the loss", hint)
    expect_number(chosen_rewards, 0.0, "compute_dpo_loss_batch(policy = copy of reference): the chosen reward", hint)
    expect_number(rejected_rewards, 0.0, "compute_dpo_loss_batch(policy = copy of reference): the rejected reward",
                  hint)
    # A policy moved away from the reference: the loss must be what your own parts give with the masks.
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
        got = [float(v) for v in ns["compute_dpo_loss_batch"](batch, policy, reference, 0.5)]
        expected = [float(v) for v in your_batch_loss(ns, batch, policy, reference, 0.5)]
        without_masks = [float(v) for v in your_batch_loss(ns, batch, policy, reference, 0.5, masked=False)]
    if any(abs(a - b) > 1e-4 for a, b in zip(got, expected)) and all(
            abs(a - b) < 1e-4 for a, b in zip(got, without_masks)):
        hint = ("your loss and rewards are exactly what the log-probabilities WITHOUT the masks give: pass each "
                "sequence's mask (batch['chosen_mask'], batch['rejected_mask']) as the selection_mask.")
    for name, value, number in zip(("loss", "chosen reward", "rejected reward"), got, expected):
        expect_number(value, number, f"compute_dpo_loss_batch(a policy that differs from the reference, beta=0.5): "
                      f"the {name}, compared with your compute_logprobs and compute_dpo_loss on the masked answers",
                      hint)


@CHECKS.register("test_dpo_batch_gradients", subject="compute_dpo_loss_batch",
                 description="backpropagating the batch loss reaches the policy, never the reference model")
def check_dpo_batch_gradients(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    loss = ns["compute_dpo_loss_batch"](batch, policy, reference, 0.1)[0]
    require(isinstance(loss, torch.Tensor) and loss.requires_grad, "the loss has no gradient.",
                "compute the policy's log-probabilities with their graph (no torch.no_grad() around the policy).")
    loss.backward()
    require(all(p.grad is None for p in reference.parameters()), "the reference model got gradients.", HINT_FROZEN)
    require(policy.out_head.weight.grad is not None, "the policy's out_head got no gradient.",
                "the policy's log-probabilities feed the loss with their graph.")


@CHECKS.register("test_dpo_loss_loader", subject="compute_dpo_loss_loader",
                 description="compute_dpo_loss_loader averages the batches' loss and rewards, as Python floats")
def check_dpo_loss_loader(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    loader = [batch, batch, batch]  # a list of batches works like a DataLoader here
    with torch.no_grad():
        for num_batches in (None, 2):
            result = ns["compute_dpo_loss_loader"](loader, policy, reference, 0.1, num_batches=num_batches)
            what = f"compute_dpo_loss_loader(three batches, num_batches={num_batches}, policy = copy of reference)"
            require(isinstance(result, (tuple, list)) and len(result) == 3, f"{what} does not return three "
                        "numbers.", "return the mean loss, chosen reward and rejected reward.")
            for value, expected, name in zip(result, (LN2, 0.0, 0.0), ("loss", "chosen reward", "rejected reward")):
                expect_number(value, expected, f"{what}: {name}", "add up each batch's values and divide by the "
                              "number of batches used.")
            require(all(isinstance(value, (int, float)) for value in result), f"{what} returned "
                    f"{', '.join(type(value).__name__ for value in result)}, where three Python floats are expected.",
                    "add up each batch's values as Python numbers (a tensor's .item()): a tensor total keeps every "
                    "batch's graph alive while training.")


@CHECKS.register("test_evaluate_dpo_loss_loader", subject="evaluate_dpo_loss_loader",
                 description="evaluate_dpo_loss_loader returns the six values, measured with dropout off, and leaves "
                             "the policy training")
def check_evaluate_dpo_loss_loader(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models(drop_rate=0.5)  # with dropout: eval mode matters
    results = []
    for seed in (1, 2):
        policy.train()
        torch.manual_seed(seed)
        results.append(ns["evaluate_dpo_loss_loader"](policy, reference, [batch], [batch], 0.1, 1))
        if seed == 1:
            training_after = policy.training
    result = results[0]
    require(isinstance(result, dict) and sorted(result) == sorted(EVAL_KEYS), "evaluate_dpo_loss_loader does "
            "not return a dict with the keys " + ", ".join(EVAL_KEYS) + ".", "")
    require(results[1] == result, "two calls on the same policy (with dropout, in training mode) gave different "
            f"losses ({result['val_loss']:.4f} and {results[1].get('val_loss', float('nan')):.4f}): dropout was on.",
            "put the policy model in eval mode before measuring.")
    expect_number(result["val_loss"], LN2, "evaluate_dpo_loss_loader(policy = copy of reference): val_loss",
                  "compute_dpo_loss_loader on eval_iter batches of each loader, without gradients.")
    require(training_after, "the policy model is left in eval mode.",
            "put it back into training mode before returning: training goes on.")


# -- section 7 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_train_model_dpo_simple", subject="train_model_dpo_simple",
                 description="a short training run tracks losses and tokens seen, resets the gradients at every step, "
                             "trains the policy in training mode, and changes nothing of the reference model")
def check_train_model_dpo_simple(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    policy.eval()  # as after an evaluation: the loop itself puts the policy into training mode
    before = [p.detach().clone() for p in reference.parameters()]
    train, batch_loss = ns["train_model_dpo_simple"], ns["compute_dpo_loss_batch"]
    modes = []  # the policy's mode at each training step (the loop's own calls of your compute_dpo_loss_batch)

    def watched_batch_loss(*args, **kwargs):
        if sys._getframe(1).f_code is train.__code__:  # not the calls of the evaluation
            modes.append(policy.training)
        return batch_loss(*args, **kwargs)

    optimizer = WatchedSGD(policy.parameters(), 0.05)
    with (contextlib.redirect_stdout(io.StringIO()), policy_as_global_model(train.__globals__, policy),
          global_named(train.__globals__, "compute_dpo_loss_batch", watched_batch_loss)):
        tracking = train(policy, reference, [batch, batch], [batch], optimizer, num_epochs=1, beta=0.1, eval_freq=1,
                         eval_iter=1, start_context="Hi", tokenizer=CharTokenizer())
    require(isinstance(tracking, dict) and sorted(tracking) == sorted(TRACKING_KEYS), "train_model_dpo_simple "
            "does not return a dict with the keys " + ", ".join(TRACKING_KEYS) + ".", "")
    expect_equal([int(t) for t in tracking["tokens_seen"]], [18, 36], "tokens_seen after 2 steps of 2 x 9 tokens, "
                 "evaluating after each", "count the elements of batch['chosen'] after each step.")
    require(optimizer.stale_steps == 0, f"{optimizer.stale_steps} of {optimizer.steps} optimizer steps used gradients "
            "left over from the step before: the gradients were not reset.",
            "reset the gradients (the optimizer's zero_grad) at every step, before the backward pass.")
    require(all(modes), f"{modes.count(False)} of {len(modes)} training steps ran with the policy in eval mode "
            "(it was handed over in eval mode, as after an evaluation).",
            "put the policy model into training mode at the start of every epoch.")
    require(all(torch.equal(a, b) for a, b in zip(before, reference.parameters())), "the reference model "
            "changed during training.", "the optimizer holds the policy's parameters only: nothing else may change "
            "the reference model.")
    if any(p.grad is not None for p in reference.parameters()):
        # Gradients that your compute_dpo_loss_batch gives the reference are test_dpo_batch_gradients' business.
        fresh_policy, fresh_reference = tiny_models()
        batch_loss(batch, fresh_policy, fresh_reference, 0.1)[0].backward()
        require(any(p.grad is not None for p in fresh_reference.parameters()), "the reference model got "
                "gradients during training, and not from compute_dpo_loss_batch.", HINT_FROZEN)
    require(tracking["train_losses"][-1] < LN2, f"the training loss after 2 steps is "
            f"{tracking['train_losses'][-1]:.4f}, not below ln 2: the policy did not learn.",
            "for each batch: reset the gradients, compute the batch's DPO loss, backpropagate it, step the "
            "optimizer.")
