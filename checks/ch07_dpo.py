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

HINT_FROZEN = "compute the reference model's log-probabilities inside `with torch.no_grad():`."
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
                "rejected_mask.", "return batch_data.")
    return batch


def as_lists(tensor, what, shape, hint):
    expect_shape(tensor, shape, what, hint)
    return tensor.long().tolist()


def tiny_models(seed=123):
    """A tiny GPT (vocabulary 128) as the reference model and an independent copy as the policy."""
    from reference.gpt import GPTModel

    torch.manual_seed(seed)
    cfg = {"vocab_size": 128, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
           "qkv_bias": False}
    reference = GPTModel(cfg).eval()
    return copy.deepcopy(reference), reference


def tiny_batch(ns):
    """The hand-made items collated with padding 0, so that every id fits the tiny GPT's vocabulary."""
    return ns["custom_collate_fn"]([{key: list(value) for key, value in item.items()} for item in ITEMS],
                                   pad_token_id=0)


@contextlib.contextmanager
def policy_as_global_model(namespace, policy):
    """The book's loop samples from a global `model` (the policy model in the book's notebook): while the check
    runs, `model` names the check's policy model, as the hidden grader does; the notebook's own is put back."""
    missing = object()
    saved = namespace.get("model", missing)
    namespace["model"] = policy
    try:
        yield
    finally:
        if saved is missing:
            del namespace["model"]
        else:
            namespace["model"] = saved


def expect_number(value, expected, what, hint):
    require(isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1),
                f"{what}: expected one number, got {type(value).__name__}.", "average over the batch with .mean().")
    expect_close(torch.as_tensor(float(value)), expected, what, hint)


# -- section 1 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_preference_dataset", subject="PreferenceDataset",
                 description="PreferenceDataset encodes the prompt, prompt + chosen and prompt + rejected")
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
                     "prompt = format_input(entry); chosen = prompt + '\\n\\n### Response:\\n' + entry['chosen'], "
                     "rejected the same with entry['rejected'], each encoded with the tokenizer.")


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
    hint = "mask[len(sequence):] = False (padding); mask[:prompt.shape[0] + 2] = False (prompt and two newlines)."
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
    batch = collate(ns, allowed_max_length=6, device="cpu")
    for key in ("chosen", "rejected", "chosen_mask", "rejected_mask"):
        expect_shape(batch[key], (2, 6), f"batch[{key!r}] with allowed_max_length=6",
                     "cut every stacked tensor to tensor[:, :allowed_max_length].")
        require(batch[key].device.type == "cpu", f"batch[{key!r}] is not on the CPU.", "move it with .to(device).")
    expect_equal(batch["chosen"].tolist(), [row[:6] for row in CHOSEN], "batch['chosen'] with allowed_max_length=6",
                 "cut after padding: tensor[:, :allowed_max_length].")


# -- sections 4 and 5 ---------------------------------------------------------------------------------------------

@CHECKS.register("test_compute_logprobs", subject="compute_logprobs",
                 description="compute_logprobs on the cross-entropy example, with and without a mask")
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


@CHECKS.register("test_dpo_loss", subject="compute_dpo_loss",
                 description="compute_dpo_loss is ln 2 when the policy equals the reference")
def check_dpo_loss(ns):
    chosen, rejected = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -3.0])
    result = ns["compute_dpo_loss"](chosen, rejected, chosen, rejected)
    require(isinstance(result, (tuple, list)) and len(result) == 3, "compute_dpo_loss does not return three "
                "values.", "return loss, chosen_rewards, rejected_rewards (each a mean over the batch).")
    expect_number(result[0], LN2, "compute_dpo_loss(policy = reference): the loss",
                  "-F.logsigmoid(beta * logits).mean(), logits = (policy chosen - rejected) - (reference chosen - "
                  "rejected).")


@CHECKS.register("test_dpo_rewards", subject="compute_dpo_loss",
                 description="the rewards are the policy's log-probabilities minus the reference's (without beta)")
def check_dpo_rewards(ns):
    chosen, rejected = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -3.0])
    _, chosen_rewards, rejected_rewards = ns["compute_dpo_loss"](chosen + 0.5, rejected - 1.0, chosen, rejected)
    hint = "chosen_rewards = (policy chosen - reference chosen).detach().mean(); the same for rejected."
    expect_number(chosen_rewards, 0.5, "the chosen reward (policy chosen raised by 0.5)", hint)
    expect_number(rejected_rewards, -1.0, "the rejected reward (policy rejected lowered by 1.0)", hint)


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
                 description="compute_dpo_loss_batch is ln 2 with zero rewards when the policy copies the reference")
def check_dpo_loss_batch(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    loss, chosen_rewards, rejected_rewards = ns["compute_dpo_loss_batch"](batch, policy, reference, 0.1)
    hint = ("compute_logprobs(policy_model(batch['chosen']), batch['chosen'], batch['chosen_mask']), the same for "
            "rejected and for the reference model, then compute_dpo_loss(..., beta).")
    expect_number(loss, LN2, "compute_dpo_loss_batch(policy = copy of reference): the loss", hint)
    expect_number(chosen_rewards, 0.0, "compute_dpo_loss_batch(policy = copy of reference): the chosen reward", hint)
    expect_number(rejected_rewards, 0.0, "compute_dpo_loss_batch(policy = copy of reference): the rejected reward",
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
                 description="compute_dpo_loss_loader averages the batches' loss and rewards")
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
                expect_number(value, expected, f"{what}: {name}", "add the .item() of each batch's values and divide "
                              "by the number of batches used.")


@CHECKS.register("test_evaluate_dpo_loss_loader", subject="evaluate_dpo_loss_loader",
                 description="evaluate_dpo_loss_loader returns the six values and leaves the policy training")
def check_evaluate_dpo_loss_loader(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    policy.train()
    result = ns["evaluate_dpo_loss_loader"](policy, reference, [batch], [batch], 0.1, 1)
    require(isinstance(result, dict) and sorted(result) == sorted(EVAL_KEYS), "evaluate_dpo_loss_loader does "
                "not return a dict with the keys " + ", ".join(EVAL_KEYS) + ".", "")
    expect_number(result["val_loss"], LN2, "evaluate_dpo_loss_loader(policy = copy of reference): val_loss",
                  "compute_dpo_loss_loader(val_loader, ..., num_batches=eval_iter).")
    require(policy.training, "the policy model is left in eval mode.", "call policy_model.train() at the end.")


# -- section 7 ----------------------------------------------------------------------------------------------------

@CHECKS.register("test_train_model_dpo_simple", subject="train_model_dpo_simple",
                 description="a short training run tracks losses and tokens seen and leaves the reference model alone")
def check_train_model_dpo_simple(ns):
    batch = tiny_batch(ns)
    policy, reference = tiny_models()
    before = [p.detach().clone() for p in reference.parameters()]
    train = ns["train_model_dpo_simple"]
    with contextlib.redirect_stdout(io.StringIO()), policy_as_global_model(train.__globals__, policy):
        tracking = train(policy, reference, [batch, batch], [batch], SGD(policy.parameters(), 0.05), num_epochs=1,
                         beta=0.1, eval_freq=1, eval_iter=1, start_context="Hi", tokenizer=CharTokenizer())
    require(isinstance(tracking, dict) and sorted(tracking) == sorted(TRACKING_KEYS), "train_model_dpo_simple "
                "does not return a dict with the keys " + ", ".join(TRACKING_KEYS) + ".", "")
    expect_equal([int(t) for t in tracking["tokens_seen"]], [18, 36], "tokens_seen after 2 steps of 2 x 9 tokens, "
                 "evaluating after each", "tokens_seen += batch['chosen'].numel() after each step.")
    require(all(torch.equal(a, b) for a, b in zip(before, reference.parameters())), "the reference model "
                "changed during training.", HINT_FROZEN)
    require(tracking["train_losses"][-1] < LN2, f"the training loss after 2 steps is "
                f"{tracking['train_losses'][-1]:.4f}, not below ln 2: the policy did not learn.",
                "zero_grad, compute_dpo_loss_batch, loss.backward() and optimizer.step() at every batch.")
