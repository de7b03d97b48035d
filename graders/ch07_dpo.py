"""Grader of the chapter 7 bonus: Direct Preference Optimization (DPO).

The dataset runs with GPT-2's tokenizer in the worker and the collate function on hand-made and tokenized
preference items; both are compared exactly, masks included (True on the answer tokens only). compute_logprobs
and compute_dpo_loss run on constructed logits and log-probabilities, with the property checks the loss must
meet: ln 2 when the policy equals the reference, falling as the chosen answer's log-probability rises. The
batch, loader, evaluation and training functions run with tiny GPTs (the support code's GPTModel, loaded with the
weights of seeded reference models) whose vocabulary is GPT-2's tokens of the course's preference data renumbered
from 0, on batches the reference's collate function made, on the CPU; the reference runs the same probes on the
trusted side. The reference model must be frozen: it gets no gradient and does not change.

Each composite (the loss of a batch, of a loader, the evaluation, the training loop) runs on correct stand-ins of
the functions it calls (probe_kit/finetuning_parts.py, @pytest.mark.stand_ins), so a bug costs the points of the
function it is in. Beyond the book's examples the grader probes: large logits and far-apart log-probabilities
(the log of a softmax or of a sigmoid underflows to -inf there), rewards returned with their graph, a loader that
returns tensors where the book's .item() gives floats, an evaluation left in eval mode or run with dropout, and a
training loop handed a policy in eval mode (it must switch it to training mode itself).

Edge cases where the book and the course differ, and what is accepted:
- compute_dpo_loss_loader on an empty loader: the book returns one NaN, the course three; not graded.
- train_model_dpo_simple: the book's samples its text after each epoch from a global `model` (in the book's
  notebook the policy model); the grader makes `model` name the policy model while the function runs, so the
  book's code and the course's (which samples from policy_model) both pass.
- The masks keep the book's "### Response:\\n" header (all but its first two newline tokens) in the answer, as
  the book's "+2" does; that is the graded contract.
"""

import math
import operator
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from checks.ch07_dpo import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import (
    ListOf,
    Mistake,
    as_number,
    error_mentions,
    expect_close,
    expect_equal,
    expect_tensor,
    expect_true,
    explain_errors,
    name_mistake,
    probe,
)
from course.grading.compare import with_mistakes
from course.grading.contracts import Fields
from course.grading.imports import plain_imports
from course.grading.inputs import rand, randint, randn
from course.grading.probes import run_here
from graders.shared.finetuning import (
    compact_tokenizer,
    compact_vocabulary,
    course_data,
    expect_dataset,
    expect_losses,
    numbers_match,
    tensors_match,
    tiny_config,
    tiny_gpt,
)

with plain_imports():
    from reference import dpo as ref
    from reference.gpt import GPTModel
    from reference.instruction import RESPONSE_HEADER, format_input
    from reference.tiktoken_offline import get_gpt2_tokenizer


# The student's code that the loss of a batch and of a loader run (@pytest.mark.runs), as the book writes them.
# Each composite runs on correct stand-ins of its parts (@pytest.mark.stand_ins; probe_kit/finetuning_parts.py), so
# that a bug in a part costs only the part's own tests.
BATCH_PARTS = ("compute_logprobs", "compute_dpo_loss")
LOADER_PARTS = ("compute_dpo_loss_batch", *BATCH_PARTS)
EVALUATION_PARTS = ("compute_dpo_loss_loader", *LOADER_PARTS)
TRAINING_PARTS = ("evaluate_dpo_loss_loader", *EVALUATION_PARTS)

DATA = course_data("preference_data.json")
PAD = 50256
LN2 = math.log(2)
KEYS = ("chosen", "rejected")
MASKS = ("chosen_mask", "rejected_mask")
HINT_FROZEN = ("the reference model must not be trained: run it and compute its log-probabilities with gradients "
               "turned off (a torch.no_grad() block), so that no gradient reaches it.")
HINT_MEAN = "average over the batch with .mean()."  # for a loss or reward that is not one number


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=Fields("encoded_texts", "items", "length"))
def preference_dataset(student, class_name, entries):
    """PreferenceDataset with GPT-2's tokenizer: .encoded_texts, .items (dataset[i] for each i) and .length
    (len(dataset)); token ids as ints."""
    import tiktoken

    def plain(item):
        if not isinstance(item, dict):
            return type(item).__name__
        return {str(key): [int(token) for token in value] for key, value in item.items()}

    dataset = getattr(student, class_name)(entries, tiktoken.get_encoding("gpt2"))
    return {"encoded_texts": [plain(item) for item in dataset.encoded_texts],
            "items": [plain(dataset[i]) for i in range(len(entries))], "length": len(dataset)}


@probe(returns=ListOf(length="cases"))
def collate_batches(student, name, cases):
    """The student's collate function on each (items, kwargs); the items are fresh copies every time."""
    results = []
    for items, kwargs in cases:
        batch = [{key: list(value) for key, value in item.items()} for item in items]
        result = getattr(student, name)(batch, **kwargs)
        if isinstance(result, dict) and isinstance(result.get("prompt"), tuple):
            result = dict(result, prompt=list(result["prompt"]))
        results.append(result)
    return results


@probe(returns=Fields("placed", "items"))
def collate_on_device(student, name, items, device):
    """The student's collate function with device=`device`: .placed, {key: [device type, dtype]} of each returned
    tensor (None for a result that is not a dict), and .items, what the items look like afterwards."""
    batch = [{key: list(value) for key, value in item.items()} for item in items]
    result = getattr(student, name)(batch, device=device)
    placed = {str(key): [str(value.device.type), str(value.dtype)] if isinstance(value, torch.Tensor)
              else type(value).__name__ for key, value in result.items()} if isinstance(result, dict) else None
    return {"placed": placed, "items": batch}


@probe(returns=ListOf(length="cases"))
def logprobs(student, name, cases):
    """compute_logprobs for each (logits, labels, mask or None); with a mask it is passed as selection_mask."""
    results = []
    for logits, labels, mask in cases:
        if mask is None:
            results.append(getattr(student, name)(logits, labels))
        else:
            results.append(getattr(student, name)(logits, labels, selection_mask=mask))
    return results


@probe(returns=ListOf(Fields("returned", "has_gradient", "rewards_attached"), length="cases"))
def dpo_losses(student, name, cases):
    """compute_dpo_loss for each (four log-probability tensors, beta or None for the default): .returned, what it
    returned as a list, detached (loss, chosen rewards, rejected rewards), .has_gradient, whether the loss has
    a gradient, and .rewards_attached, for each reward whether it came back attached to the graph."""
    results = []
    for logprobs, beta in cases:
        logprobs = [t.clone().requires_grad_(True) for t in logprobs]
        if beta is None:
            result = getattr(student, name)(*logprobs)
        else:
            result = getattr(student, name)(*logprobs, beta=beta)
        result = list(result) if isinstance(result, (tuple, list)) else [result]
        has_gradient = isinstance(result[0], torch.Tensor) and result[0].requires_grad
        attached = [isinstance(r, torch.Tensor) and (r.requires_grad or r.grad_fn is not None) for r in result[1:]]
        results.append({"returned": [r.detach() if isinstance(r, torch.Tensor) else r for r in result],
                        "has_gradient": has_gradient, "rewards_attached": attached})
    return results


@probe(returns=Fields("losses", "gradient"))
def loss_landscape(student, name, chosen, rejected, offsets):
    """compute_dpo_loss with the reference's log-probabilities `chosen`, `rejected` and the policy's the same
    except for its chosen ones raised by each offset: .losses, and .gradient, d loss / d policy's chosen
    log-probabilities at offset 0."""
    losses, gradient = [], None
    for offset in offsets:
        policy_chosen = (chosen + offset).clone().requires_grad_(True)
        loss = getattr(student, name)(policy_chosen, rejected.clone(), chosen.clone(), rejected.clone())[0]
        if offset == 0 and isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            loss.backward()
            gradient = policy_chosen.grad
        losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
    return {"losses": losses, "gradient": gradient}


@probe(returns=ListOf(Fields("loss", "chosen_rewards", "rejected_rewards", "gradients", "touched"), length="cases"))
def batch_losses(student, name, cfg, policy_state, reference_state, batch, cases, stand_ins=()):
    """compute_dpo_loss_batch for each (beta, policy is a copy of the reference) with tiny GPTs on the CPU, then
    backward through the loss: .loss, .chosen_rewards, .rejected_rewards, .gradients ({policy parameter:
    gradient}) and .touched (names of the reference's parameters that got a gradient). The parts named in
    `stand_ins` are correct stand-ins (probe_kit.finetuning_parts) while it runs."""
    from probe_kit.finetuning_parts import DPO_PARTS, parts
    from probe_kit.parts import replaced

    from reference.gpt import GPTModel

    def detached(value):
        return value.detach() if isinstance(value, torch.Tensor) else value

    results = []
    for beta, same in cases:
        policy, reference = GPTModel(cfg), GPTModel(cfg)
        policy.load_state_dict(reference_state if same else policy_state)
        reference.load_state_dict(reference_state)
        policy.eval()
        reference.eval()
        with replaced(student, **parts(DPO_PARTS, *stand_ins)):
            loss, chosen_rewards, rejected_rewards = getattr(student, name)(batch, policy, reference, beta)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.backward()
        gradients = {key: p.grad for key, p in policy.named_parameters() if p.grad is not None}
        touched = [key for key, p in reference.named_parameters() if p.grad is not None]
        results.append({"loss": detached(loss), "chosen_rewards": detached(chosen_rewards),
                        "rejected_rewards": detached(rejected_rewards), "gradients": gradients, "touched": touched})
    return results


@probe(returns=ListOf(Fields("result", "types"), length="cases"))
def loader_losses(student, name, cfg, policy_state, reference_state, batches, cases, stand_ins=()):
    """compute_dpo_loss_loader on a DataLoader over the ready-made `batches`, for each num_batches (None: left
    out), without gradients, with correct stand-ins for the parts named in `stand_ins`: what it returned (a
    tuple as a list) and the type names of the values (a tensor is not the float the book's .item() gives)."""
    from probe_kit.finetuning_parts import DPO_PARTS, parts
    from probe_kit.parts import replaced
    from torch.utils.data import DataLoader

    from reference.gpt import GPTModel

    policy, reference = GPTModel(cfg), GPTModel(cfg)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    policy.eval()
    reference.eval()
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    results = []
    with torch.no_grad(), replaced(student, **parts(DPO_PARTS, *stand_ins)):
        for num_batches in cases:
            if num_batches is None:
                result = getattr(student, name)(loader, policy, reference, 0.1)
            else:
                result = getattr(student, name)(loader, policy, reference, 0.1, num_batches=num_batches)
            result = list(result) if isinstance(result, tuple) else result
            types = [type(value).__name__ for value in result] if isinstance(result, list) else []
            results.append({"result": result, "types": types})
    return results


@probe(returns=Fields("first", "second", "training_after"))
def evaluation(student, name, cfg, policy_state, reference_state, train_batches, val_batches, eval_iter,
               stand_ins=()):
    """evaluate_dpo_loss_loader on a policy in training mode (with dropout), twice after different seeds, with
    correct stand-ins for the parts named in `stand_ins`: .first and .second results, and .training_after, the
    policy's training flag after the first call."""
    from probe_kit.finetuning_parts import DPO_PARTS, parts
    from probe_kit.parts import replaced
    from torch.utils.data import DataLoader

    from reference.gpt import GPTModel

    policy, reference = GPTModel(cfg), GPTModel(cfg)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    reference.eval()
    train_loader = DataLoader(train_batches, batch_size=None, shuffle=False)
    val_loader = DataLoader(val_batches, batch_size=None, shuffle=False)
    results = []
    for seed in (1, 2):
        policy.train()
        torch.manual_seed(seed)
        with replaced(student, **parts(DPO_PARTS, *stand_ins)):
            results.append(getattr(student, name)(policy, reference, train_loader, val_loader, 0.1, eval_iter))
        if seed == 1:
            training_after = policy.training
    return {"first": results[0], "second": results[1], "training_after": training_after}


@probe(returns=Fields("tracking", "printed", "unchanged", "touched"))
def dpo_training_run(student, name, cfg, policy_state, reference_state, vocabulary, train_batches, val_batches,
                     settings, stand_ins=()):
    """The student's DPO training loop on the CPU with tiny GPTs (with dropout, the policy handed over in eval
    mode, as a model that was just evaluated), an Adam optimizer over the policy's parameters and ready-made
    batches, with correct stand-ins for the parts named in `stand_ins`: .tracking (the dict it returns), .printed
    (the lines it prints), .unchanged (whether the reference model is unchanged) and .touched (names of the
    reference's parameters that got a gradient).
    The book's loop samples from a global `model` (the policy in the book's notebook): while it runs, `model`
    names the policy model. The grader runs this very function with the reference's loop to get the expected
    values."""
    import contextlib
    import io

    from probe_kit.finetuning_parts import DPO_PARTS, parts
    from probe_kit.optim import Adam
    from probe_kit.parts import replaced
    from probe_kit.text import CompactTokenizer
    from torch.utils.data import DataLoader

    from reference.gpt import GPTModel

    policy, reference = GPTModel(cfg), GPTModel(cfg)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    policy.eval()  # the loop itself must put the policy into training mode
    reference.eval()
    before = {key: value.clone() for key, value in reference.state_dict().items()}
    train_loader = DataLoader(train_batches, batch_size=None, shuffle=False)
    val_loader = DataLoader(val_batches, batch_size=None, shuffle=False)
    optimizer = Adam(policy.parameters(), lr=settings["lr"])
    had_model = "model" in vars(student)
    if not had_model:
        student.model = policy
    printed = io.StringIO()
    torch.manual_seed(settings["seed"])
    try:
        with contextlib.redirect_stdout(printed), replaced(student, **parts(DPO_PARTS, *stand_ins)):
            tracking = getattr(student, name)(
                policy, reference, train_loader, val_loader, optimizer, num_epochs=settings["num_epochs"],
                beta=settings["beta"], eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
                start_context=settings["start_context"], tokenizer=CompactTokenizer(vocabulary))
    finally:
        if not had_model:
            del student.model
    unchanged = all(torch.equal(value, before[key]) for key, value in reference.state_dict().items())
    touched = [key for key, p in reference.named_parameters() if p.grad is not None]
    if isinstance(tracking, dict):
        tracking = {str(key): [float(v) for v in values] for key, values in tracking.items()}
    return {"tracking": tracking, "printed": printed.getvalue().splitlines(), "unchanged": unchanged,
            "touched": touched}


# -- the data of the tests (trusted side) -------------------------------------------------------------------

def full_text(entry, key):
    return format_input(entry) + RESPONSE_HEADER + entry[key]


# The tiny GPTs' vocabulary: GPT-2's tokens of the course's preference texts (at most 70 tokens: they fit).
VOCABULARY = compact_vocabulary(full_text(entry, key) for entry in DATA for key in KEYS)
EOT = len(VOCABULARY) - 1  # the compact id of the end-of-text token, the padding of the tiny models' batches
TINY = tiny_config(VOCABULARY)


def tiny_state(seed, **overrides):
    return tiny_gpt(VOCABULARY, seed, **overrides).state_dict()


def tiny_models(cfg, policy_state, reference_state):
    policy, reference = GPTModel(cfg), GPTModel(cfg)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    return policy.eval(), reference.eval()


def compact_batches(entries, batch_size):
    """Batches of the reference's collate function over compact-encoded entries (padding with EOT)."""
    items = list(ref.PreferenceDataset(entries, compact_tokenizer(VOCABULARY)))
    return [ref.custom_collate_fn(items[i:i + batch_size], pad_token_id=EOT)
            for i in range(0, len(items), batch_size)]


# Two hand-made items: a prompt, the two "\n" tokens (198) that open the response header, then the answer.
HAND_ITEMS = [
    {"prompt": [1, 2, 3], "chosen": [1, 2, 3, 198, 198, 10, 11, 12], "rejected": [1, 2, 3, 198, 198, 10, 20]},
    {"prompt": [4, 5], "chosen": [4, 5, 198, 198, 30], "rejected": [4, 5, 198, 198, 31, 32, 33, 34]},
]


def gpt2_items(entries):
    return [dict(item) for item in ref.PreferenceDataset(entries, get_gpt2_tokenizer())]


def collate_cases():
    """(items, kwargs) for the collate tests: hand-made items, another pad id, tokenized entries, a single item."""
    tokenized = gpt2_items(DATA[:3])
    return [(HAND_ITEMS, {}), (HAND_ITEMS, {"pad_token_id": 0}), (tokenized, {}), (tokenized[1:2], {}),
            (gpt2_items(DATA[3:7]), {})]


def describe_items(items, kwargs):
    settings = "".join(f", {key}={value}" for key, value in kwargs.items())
    lengths = ", ".join(f"{len(item['chosen'])}/{len(item['rejected'])}" for item in items)
    return f"a batch of {len(items)} item(s) (chosen/rejected lengths {lengths}){settings}"


def expect_batch_dict(got, *, what):
    expect_true(isinstance(got, dict), what=what, problem=f"expected a dict, got {type(got).__name__}.",
                hint="return one dict with the keys prompt, chosen, rejected, chosen_mask, rejected_mask.")
    missing = [key for key in ("prompt", *KEYS, *MASKS) if key not in got]
    expect_true(not missing, what=what, problem=f"has no key {missing[0]!r}." if missing else "",
                hint="the dict holds prompt, chosen, rejected, chosen_mask and rejected_mask.")


def expect_keys(got, keys, *, what, hint):
    expect_true(isinstance(got, dict) and sorted(got) == sorted(keys), what=what,
                problem="expected a dict with the keys " + ", ".join(keys) + ".", hint=hint)


def expect_masks(batch, expected, *, what, hint):
    """The student's chosen_mask and rejected_mask equal the reference's (bool, or 0/1 of any dtype, is accepted)."""
    for key in MASKS:
        mask = expect_tensor(batch[key], what=f"{what}: batch[{key!r}]", shape=tuple(expected[key].shape), hint=hint)
        if mask.dtype != torch.bool:
            expect_true(bool(((mask == 0) | (mask == 1)).all()), what=f"{what}: batch[{key!r}]",
                        problem="holds values other than True/False (or 1/0).", hint=hint)
            mask = mask != 0
        expect_equal(mask, expected[key], what=f"{what}: batch[{key!r}]", hint=hint)


# -- PreferenceDataset -------------------------------------------------------------------------------------------

def item_with(entry, swapped=False, header_in_prompt=False, header=RESPONSE_HEADER):
    """PreferenceDataset's item of `entry`, or what it is with one classic mistake."""
    encode, prompt = get_gpt2_tokenizer().encode, format_input(entry)
    chosen, rejected = ("rejected", "chosen") if swapped else KEYS
    return {"prompt": encode(prompt + (RESPONSE_HEADER if header_in_prompt else "")),
            "chosen": encode(prompt + header + entry[chosen]), "rejected": encode(prompt + header + entry[rejected])}


DATASET_MISTAKES = [
    Mistake("chosen and rejected swapped",
            "the chosen answer is entry['chosen']; entry['rejected'] is the answer not preferred.", swapped=True),
    Mistake("a prompt that includes the response header",
            "the prompt is format_input(entry) alone; the header opens the chosen and rejected texts.",
            header_in_prompt=True),
    Mistake("answers without the response header",
            "each answer text is the prompt, then the header '\\n\\n### Response:\\n', then the answer.",
            header=""),
]
HINT_ITEM = ("a dict of three token-id lists (tokenizer.encode): 'prompt', the prompt (format_input of the entry); "
             "'chosen', the prompt, the response header and entry['chosen'] as one text; 'rejected', the same with "
             "entry['rejected'] (section 1 of the notebook).")


@pytest.mark.points(2)
@pytest.mark.runs("PreferenceDataset")
def test_preference_dataset(submission):
    """PreferenceDataset: prompt, prompt + chosen answer and prompt + rejected answer as GPT-2 token ids."""
    entries = DATA[:6]
    with explain_errors(error_mentions("disallowed special token", hint="encode the texts with tokenizer.encode.")):
        got = submission.run(preference_dataset, class_name="PreferenceDataset", entries=entries)
    expect_dataset(got, ref.PreferenceDataset(entries, get_gpt2_tokenizer()).encoded_texts,
                   problem="expected a list with one dict per entry.",
                   hint="tokenize every entry in __init__ and append a dict to self.encoded_texts.",
                   entry_hint=lambda index: name_mistake(got.encoded_texts[index], DATASET_MISTAKES,
                                                         partial(item_with, entries[index]), matches=operator.eq,
                                                         yours="your item is") or HINT_ITEM)


# -- the collate function ----------------------------------------------------------------------------------------

def collate_with(items, pad_token_id=PAD, allowed_max_length=None, mask_prompt_tokens=True, mistake=None):
    """The reference's collate function, or what it gives with one classic mistake."""
    if mistake is None:
        return ref.custom_collate_fn(items, pad_token_id=pad_token_id, allowed_max_length=allowed_max_length,
                                     mask_prompt_tokens=mask_prompt_tokens)
    header = len(get_gpt2_tokenizer().encode(RESPONSE_HEADER))  # 5 tokens: "\n", "\n", "###", " Response", ":\n"
    extra = 0 if mistake == "no extra pad" else 1
    common = max(len(item[key]) + extra for item in items for key in KEYS)
    result = {}
    for key in KEYS:
        own = max(len(item[key]) + extra for item in items)
        rows, masks = [], []
        for item in items:
            sequence = item[key]
            length = own if mistake == "padded separately" else common
            padded = sequence + [pad_token_id] * (length - len(sequence))
            mask = torch.ones(len(padded), dtype=torch.bool)
            if mistake != "padding kept":
                mask[len(sequence):] = False
            if mask_prompt_tokens and mistake != "prompt kept":
                skip = {"no +2": 0, "header left out": header}.get(mistake, 2)
                mask[:len(item["prompt"]) + skip] = False
            rows.append(torch.tensor(padded))
            masks.append(mask)
        result[key], result[f"{key}_mask"] = torch.stack(rows), torch.stack(masks)
    return result


MASK_MISTAKES = [
    Mistake("masks that keep the prompt", "set the mask to False on the prompt's tokens and the two newlines after "
            "it (when mask_prompt_tokens): the prompt's length + 2 positions from the start.", mistake="prompt kept"),
    Mistake("masks that keep the two newline tokens after the prompt", "the prompt is followed by the two '\\n' "
            "tokens of '\\n\\n### Response:\\n': mask the prompt's length + 2 positions.", mistake="no +2"),
    Mistake("masks that leave out the whole '\\n\\n### Response:\\n' header",
            "the book's masks keep '### Response:\\n' in the answer and skip only the two newline tokens before it: "
            "the prompt's length + 2 positions are masked, no more.", mistake="header left out"),
    Mistake("masks that keep the padding", "set the mask to False on the padding, from position len(sequence) on.",
            mistake="padding kept"),
]
ID_MISTAKES = [
    Mistake("padding chosen and rejected to two different lengths",
            "chosen and rejected share one length: 1 + the longest chosen OR rejected sequence of the batch.",
            mistake="padded separately"),
    Mistake("padding to the longest sequence without one extra pad token",
            "the common length is max(len(item[key]) + 1 ...): every sequence ends with at least one pad token.",
            mistake="no extra pad"),
]


def same_batch(keys):
    """A `matches` for batches: the student's dict holds the mistake's tensors under `keys` (values compared as
    integers, so 0/1 masks count as bool ones)."""
    return lambda got, mistaken: isinstance(got, dict) and all(
        isinstance(got.get(key), torch.Tensor) and got[key].shape == mistaken[key].shape
        and torch.equal(got[key].long(), mistaken[key].long()) for key in keys)


def batch_hint(items, kwargs, got, keys, mistakes, otherwise):
    """The hint for a wrong batch: the classic mistake it is exactly, else `otherwise` (computed on failure)."""
    return with_mistakes(got, mistakes, lambda **change: collate_with(items, **kwargs, **change),
                       matches=same_batch(keys), yours="your batch is", hint=otherwise)


def collated(submission, cases):
    """The student's custom_collate_fn on each (items, kwargs) of `cases`, checked to be a dict of the five keys:
    (items, kwargs, the student's batch, what it is, the reference's batch) for each."""
    got = submission.run(collate_batches, name="custom_collate_fn", cases=cases)
    for (items, kwargs), batch in zip(cases, got):
        what = f"custom_collate_fn on {describe_items(items, kwargs)}"
        expect_batch_dict(batch, what=what)
        yield items, kwargs, batch, what, collate_with(items, **kwargs)


@pytest.mark.points(2)
@pytest.mark.runs("custom_collate_fn")
def test_collate_token_ids(submission):
    """custom_collate_fn: chosen and rejected padded to one common length, and the prompts as a list."""
    hint = ("pad each chosen and rejected sequence with pad_token_id to max_length_common = 1 + the longest "
            "chosen or rejected sequence of the batch; the prompts stay a list of 1-d tensors.")
    for items, kwargs, batch, what, expected in collated(submission, collate_cases()):
        for key in KEYS:
            expect_equal(batch[key], expected[key], what=f"{what}: batch[{key!r}]",
                         hint=batch_hint(items, kwargs, batch, KEYS, ID_MISTAKES, hint))
        expect_equal(batch["prompt"], [torch.tensor(item["prompt"]) for item in items],
                     what=f"{what}: batch['prompt']",
                     hint="batch['prompt'] is the list of torch.tensor(item['prompt']).")


@pytest.mark.points(3)
@pytest.mark.depends_on("test_collate_token_ids")
@pytest.mark.runs("custom_collate_fn")
def test_collate_masks(submission):
    """custom_collate_fn: chosen_mask and rejected_mask are True on the answer's tokens only (no prompt, no padding)."""
    hint = ("start from a mask of True, set it to False from len(sequence) on (the padding) and, with "
            "mask_prompt_tokens, on the first prompt.shape[0] + 2 tokens (the prompt and the two newlines).")
    for items, kwargs, batch, what, expected in collated(submission, collate_cases()):
        expect_masks(batch, expected, what=what, hint=batch_hint(items, kwargs, batch, MASKS, MASK_MISTAKES, hint))


@pytest.mark.points(1)
@pytest.mark.depends_on("test_collate_masks")
@pytest.mark.runs("custom_collate_fn")
def test_collate_without_prompt_masking(submission):
    """custom_collate_fn with mask_prompt_tokens=False: the masks leave out the padding only."""
    cases = [(items, dict(kwargs, mask_prompt_tokens=False)) for items, kwargs in collate_cases()[::2]]
    hint = "with mask_prompt_tokens=False only the padding is masked out: the prompt stays True."
    for _, _, batch, what, expected in collated(submission, cases):
        expect_masks(batch, expected, what=what, hint=hint)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_collate_token_ids")
@pytest.mark.runs("custom_collate_fn")
def test_collate_truncation_and_device(submission):
    """custom_collate_fn with allowed_max_length cuts the four tensors; `device` is where they are returned."""
    tokenized = gpt2_items(DATA[:3])
    cases = [(HAND_ITEMS, {}), (HAND_ITEMS, {"allowed_max_length": 6}), (tokenized, {}),
             (tokenized, {"allowed_max_length": 60}), (tokenized, {"allowed_max_length": 1024})]
    got = submission.run(collate_batches, name="custom_collate_fn", cases=cases)
    hint = ("after stacking, cut every one of the four tensors to its first allowed_max_length columns: "
            "tensor_stack[:, :allowed_max_length].")
    for index, (items, kwargs) in enumerate(cases):
        if not kwargs:
            continue
        what = f"custom_collate_fn on {describe_items(items, kwargs)}"
        full = got[index - 1] if index in (1, 3) else got[2]  # the same items without allowed_max_length
        expect_batch_dict(got[index], what=what)
        expected = collate_with(items, **kwargs)
        for key in KEYS:
            expect_equal(got[index][key], expected[key], what=f"{what}: batch[{key!r}]", hint=hint)
        if isinstance(full, dict):  # the masks are compared with your own, cut: their content is another test's
            for key in MASKS:
                if isinstance(full.get(key), torch.Tensor):
                    expect_equal(got[index][key], full[key][:, :kwargs["allowed_max_length"]],
                                 what=f"{what}: batch[{key!r}] compared with your mask without allowed_max_length, "
                                      "cut", hint=hint)
    got = submission.run(collate_on_device, name="custom_collate_fn", items=HAND_ITEMS, device="meta")
    what = "custom_collate_fn(batch, device='meta')"
    expect_true(isinstance(got.placed, dict), what=what, problem="did not return a dict.", hint=None)
    for key in (*KEYS, *MASKS):
        expect_true(isinstance(got.placed.get(key), list) and got.placed[key][0] == "meta", what=f"{what}: "
                    f"batch[{key!r}]", problem=f"is not on the meta device ({got.placed.get(key)}).",
                    hint="move each stacked tensor with .to(device) before returning the batch.")
    expect_equal(got.items, HAND_ITEMS, what=f"{what}: the items after the call",
                 hint="build new lists (sequence + [pad_token_id] * n): the items belong to the dataset.")


# -- log-probabilities and the DPO loss ---------------------------------------------------------------------------

def answer_mask(seed, batch, num_tokens):
    """A mask like the collate function's: False on a prompt, True on an answer, False on some padding."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool)
    for row in range(batch):
        start = int(torch.randint(1, num_tokens // 2, (1,), generator=generator))
        end = int(torch.randint(start + 1, num_tokens + 1, (1,), generator=generator))
        mask[row, start:end] = True
    return mask


def logprobs_with(logits, labels, mask=None, mistake=None):
    """compute_logprobs, or what it gives with one classic mistake."""
    if mistake == "not shifted":
        log_probs, targets, kept = F.log_softmax(logits, dim=-1), labels, mask
    else:
        cut = logits[:, 1:] if mistake == "logits cut at the front" else logits[:, :-1]
        log_probs = F.softmax(cut, dim=-1) if mistake == "probabilities" else F.log_softmax(cut, dim=-1)
        if mistake == "log of softmax":
            log_probs = torch.log(F.softmax(cut, dim=-1))
        targets = labels[:, 1:]
        kept = None if mask is None else (mask[:, :-1] if mistake == "mask not shifted" else mask[:, 1:])
    selected = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if kept is None:
        return selected.sum(-1) if mistake == "sum" else selected.mean(-1)
    kept = kept.to(selected.dtype)
    if mistake == "sum":
        return (selected * kept).sum(-1)
    if mistake == "mask ignored in the mean":
        return (selected * kept).mean(-1)
    return (selected * kept).sum(-1) / kept.sum(-1)


LOGPROB_MISTAKES = [
    Mistake("log-probabilities of the labels at their own positions (no shift)",
            "the logits at position j predict token j + 1: labels[:, 1:] against logits[:, :-1, :].",
            mistake="not shifted"),
    Mistake("logits[:, 1:] against labels[:, 1:]",
            "drop the LAST position of the logits (it predicts beyond the sequence): logits[:, :-1, :].",
            mistake="logits cut at the front"),
    Mistake("a mask that is not shifted like the labels", "shift the mask as well: selection_mask[:, 1:].",
            mistake="mask not shifted"),
    Mistake("a sum over the tokens instead of a mean", "divide by the number of selected tokens, mask.sum(-1).",
            mistake="sum"),
    Mistake("the masked sum divided by every position",
            "average over the selected tokens only: (selected_log_probs * mask).sum(-1) / mask.sum(-1).",
            mistake="mask ignored in the mean"),
    Mistake("probabilities instead of log-probabilities", "take log-probabilities: F.log_softmax over the vocabulary.",
            mistake="probabilities"),
    Mistake("the log of a softmax, which underflows to -inf for the unlikely tokens of large logits",
            "F.log_softmax computes the same in one stable step.", mistake="log of softmax"),
]


@pytest.mark.points(3)
@pytest.mark.runs("compute_logprobs")
def test_compute_logprobs(submission):
    """compute_logprobs: the mean log-probability of each sequence's next tokens, over the selected tokens."""
    shapes = [(3, 7, 11), (2, 5, 4), (4, 9, 6)]
    cases = []
    for seed, (batch, num_tokens, vocab) in enumerate(shapes):
        logits, labels = randn(40 + seed, batch, num_tokens, vocab), randint(50 + seed, vocab, batch, num_tokens)
        cases += [(logits, labels, answer_mask(60 + seed, batch, num_tokens)), (logits, labels, None)]
    # Large logits (a confident model): the log of a softmax underflows to -inf there, log_softmax does not.
    logits, labels = randn(43, 3, 8, 12) * 40, randint(53, 12, 3, 8)
    cases += [(logits, labels, answer_mask(63, 3, 8)), (logits, labels, None)]
    with explain_errors(error_mentions("gather", hint="torch.gather picks, along the last dimension, the "
                                                      "log-probability of each next token: its index is the shifted "
                                                      "labels with one more dimension (unsqueeze(-1)); section 5.")):
        got = submission.run(logprobs, name="compute_logprobs", cases=cases)
    for (logits, labels, mask), result in zip(cases, got):
        what = (f"compute_logprobs on logits of shape {tuple(logits.shape)} "
                + ("with a selection mask" if mask is not None else "without a mask"))
        expect_close(result, ref.compute_logprobs(logits, labels, mask), what=what, mistakes=LOGPROB_MISTAKES,
                     mistaken=partial(logprobs_with, logits, labels, mask), matches=tensors_match(1e-5),
                     yours="your result is",
                     hint="log_softmax over the vocabulary, gather the log-probability of labels[:, 1:] from "
                          "logits[:, :-1], then average each row over the positions where selection_mask[:, 1:] is "
                          "True.")


def logprob_sets(seed, batch=6):
    """Four seeded tensors of log-probabilities (policy chosen, policy rejected, reference chosen, reference
    rejected), each of shape (batch,), between -5 and 0."""
    return [-rand(seed + k, batch) * 5 for k in range(4)]


# The last case has log-probabilities far apart (as after much training): the log of a sigmoid underflows there.
LOSS_CASES = [(logprob_sets(70), None), (logprob_sets(80), 0.5), (logprob_sets(90, 3), 0.25), (logprob_sets(100), 0.1),
              ([t * 100 for t in logprob_sets(110)], 0.5)]


def dpo_loss_with(pc, pr, rc, rr, beta, mistake=None):
    """compute_dpo_loss's loss, or what it gives with one classic mistake."""
    logits = (pc - pr) - (rc - rr)
    if mistake == "no beta":
        return -F.logsigmoid(logits).mean()
    if mistake == "sign flipped":
        return -F.logsigmoid(-beta * logits).mean()
    if mistake == "no minus":
        return F.logsigmoid(beta * logits).mean()
    if mistake == "sum":
        return -F.logsigmoid(beta * logits).sum()
    if mistake == "ratios added":
        return -F.logsigmoid(beta * ((pc - pr) + (rc - rr))).mean()
    if mistake == "sigmoid":
        return -torch.sigmoid(beta * logits).mean()
    if mistake == "log of sigmoid":
        return -torch.log(torch.sigmoid(beta * logits)).mean()
    return -F.logsigmoid(beta * logits).mean()


LOSS_MISTAKES = [
    Mistake("a loss without beta", "multiply the difference of the log-ratios by beta before logsigmoid.",
            mistake="no beta"),
    Mistake("a loss with the log-ratios the wrong way round",
            "logits = (policy chosen - policy rejected) - (reference chosen - reference rejected).",
            mistake="sign flipped"),
    Mistake("logsigmoid without the minus sign", "the loss is -F.logsigmoid(beta * logits): minimising it raises the "
            "chosen answer's log-ratio.", mistake="no minus"),
    Mistake("a sum over the batch", "average over the batch: losses.mean().", mistake="sum"),
    Mistake("the reference's log-ratio added instead of subtracted",
            "subtract the reference's log-ratio: model_logratios - reference_logratios.", mistake="ratios added"),
    Mistake("-sigmoid instead of -logsigmoid", "take the log of the sigmoid (F.logsigmoid).", mistake="sigmoid"),
    Mistake("the log of a sigmoid, which underflows to -inf when the policy strongly prefers the rejected answer",
            "F.logsigmoid computes the same in one stable step.", mistake="log of sigmoid"),
]


def dpo_loss_results(got, logprobs, beta):
    """What compute_dpo_loss returned, after checking it returned three results; and the case's description."""
    what = f"compute_dpo_loss on a batch of {logprobs[0].shape[0]} " + ("(default beta)" if beta is None
                                                                      else f"with beta={beta}")
    expect_true(len(got.returned) == 3, what=what,
                problem="expected three results (loss, chosen_rewards, rejected_rewards).",
                hint="return three scalars: the loss, the chosen reward and the rejected reward, each averaged "
                     "over the batch.")
    return got.returned, what


@pytest.mark.points(2)
@pytest.mark.runs("compute_dpo_loss")
def test_dpo_loss(submission):
    """compute_dpo_loss: -logsigmoid(beta * (policy log-ratio - reference log-ratio)), averaged over the batch."""
    got = submission.run(dpo_losses, name="compute_dpo_loss", cases=LOSS_CASES)
    for (logprobs, beta), result in zip(LOSS_CASES, got):
        returned, what = dpo_loss_results(result, logprobs, beta)
        loss = as_number(returned[0], what=f"{what}: the loss", shape_hint=HINT_MEAN)
        expected = ref.compute_dpo_loss(*logprobs, **({} if beta is None else {"beta": beta}))[0]
        expect_close(loss, expected.double(), what=f"{what}: the loss", atol=1e-5, rtol=1e-5, mistakes=LOSS_MISTAKES,
                     mistaken=partial(dpo_loss_with, *logprobs, 0.1 if beta is None else beta),
                     matches=tensors_match(1e-5), yours="your loss is",
                     hint="logits = (model_chosen - model_rejected) - (reference_chosen - reference_rejected); "
                          "the loss of each example is minus the log-sigmoid of beta times logits, averaged over the "
                          "batch (beta defaults to 0.1; section 4 of the notebook).")


def rewards_hint(reward, difference, beta, name):
    """The hint for a wrong reward: whether it is the book's reward multiplied by beta."""
    if torch.allclose(reward, (beta * difference).mean().double(), atol=1e-6, rtol=1e-5):
        return ("your rewards are multiplied by beta: the book tracks the rewards without it, "
                f"({name} log-probabilities of the policy - those of the reference).mean().")
    return (f"the {name} reward is (model_{name}_logprobs - reference_{name}_logprobs), detached and averaged over "
            "the batch.")


@pytest.mark.points(1)
@pytest.mark.runs("compute_dpo_loss")
def test_dpo_rewards(submission):
    """compute_dpo_loss: the chosen and rejected rewards, policy minus reference log-probabilities (no beta),
    detached."""
    got = submission.run(dpo_losses, name="compute_dpo_loss", cases=LOSS_CASES)
    hint = "average the rewards over the batch with .mean()."
    for (logprobs, beta), result in zip(LOSS_CASES, got):
        returned, what = dpo_loss_results(result, logprobs, beta)
        pc, pr, rc, rr = logprobs
        for name, value, difference in (("chosen", returned[1], pc - rc), ("rejected", returned[2], pr - rr)):
            reward = as_number(value, what=f"{what}: {name} rewards", type_hint=hint, shape_hint=hint)
            expect_close(reward, difference.mean().double(), what=f"{what}: {name} rewards", atol=1e-5, rtol=1e-5,
                         hint=partial(rewards_hint, reward, difference, 0.1 if beta is None else beta, name))
        for name, attached in zip(("chosen", "rejected"), result.rewards_attached):
            expect_true(not attached, what=f"{what}: the {name} rewards", problem="came back attached to the "
                        "graph (requires_grad or a grad_fn): they are for watching, and a tracked value that keeps "
                        "its graph keeps every step's activations in memory.",
                        hint="detach the log-probability differences before averaging them (the book's .detach()).")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_dpo_loss")
@pytest.mark.runs("compute_dpo_loss")
def test_dpo_loss_properties(submission):
    """compute_dpo_loss: ln 2 when the policy equals the reference; falls as the chosen log-probability rises."""
    chosen, rejected = -rand(110, 5) * 5, -rand(111, 5) * 5
    offsets = [-2.0, -1.0, -0.5, 0, 0.5, 1.0, 2.0]
    got = submission.run(loss_landscape, name="compute_dpo_loss", chosen=chosen, rejected=rejected, offsets=offsets)
    what = "compute_dpo_loss"
    values = [as_number(loss, what=f"{what} (policy's chosen log-probabilities + {offset})", shape_hint=HINT_MEAN)
              for loss, offset in zip(got.losses, offsets)]
    expect_close(values[offsets.index(0)], torch.tensor(LN2, dtype=torch.float64), atol=1e-6, rtol=1e-6,
                 what=f"{what} with the policy's log-probabilities equal to the reference's",
                 hint="when the policy equals the reference, the difference of the log-ratios is 0 and the loss is "
                      "-logsigmoid(0) = ln 2.")
    falling = all(later < earlier for earlier, later in zip(values, values[1:]))
    expect_true(falling, what=f"{what} as the policy's chosen log-probabilities rise (offsets {offsets})",
                problem="the loss does not fall at every step: " + ", ".join(f"{float(v):.4f}" for v in values) + ".",
                hint="raising the chosen answer's log-probability must lower the loss: -logsigmoid(beta * logits) "
                     "with logits = (chosen - rejected) - (reference chosen - reference rejected).")
    expect_true(isinstance(got.gradient, torch.Tensor) and got.gradient.shape == chosen.shape
                and bool((got.gradient < 0).all()), what=f"{what}: the gradient of the loss with respect to the "
                "policy's chosen log-probabilities", problem="is missing or not negative everywhere.",
                hint="return the loss as a tensor connected to its inputs (no .item(), .detach() or torch.no_grad()): "
                     "training backpropagates through it.")


# -- batches, loaders and training with tiny GPTs -------------------------------------------------------------------

BATCH = compact_batches(DATA[:4], 4)[0]
RESULTS = (("loss", "loss"), ("chosen_rewards", "chosen rewards"), ("rejected_rewards", "rejected rewards"))


def batch_inputs(policy_state, reference_state, cases):
    """The arguments of batch_losses for compute_dpo_loss_batch on BATCH, on stand-ins of its parts."""
    return dict(name="compute_dpo_loss_batch", cfg=TINY, policy_state=policy_state, reference_state=reference_state,
                batch=BATCH, cases=cases, stand_ins=list(BATCH_PARTS))


@pytest.mark.points(2)
@pytest.mark.runs("compute_dpo_loss_batch")
@pytest.mark.stand_ins(*BATCH_PARTS)
def test_dpo_loss_batch(submission):
    """compute_dpo_loss_batch: the DPO loss and rewards of a batch from the masked log-probabilities of the
    policy and the reference model (tiny GPTs), and ln 2 when the policy is a copy of the reference."""
    inputs = batch_inputs(tiny_state(1), tiny_state(2), cases=[(0.1, False), (0.5, False), (0.1, True)])
    got, expected = submission.run(batch_losses, **inputs), run_here(batch_losses, ref, **inputs)
    hint = ("four masked log-probabilities: compute_logprobs of each model's logits on the chosen sequences, with "
            "those sequences as the labels and the chosen mask as selection_mask, and the same for rejected; then "
            "compute_dpo_loss of the policy's and the reference's with beta (section 6).")
    for (beta, same), result, reference in zip(inputs["cases"], got, expected):
        what = f"compute_dpo_loss_batch with beta={beta}" + (" (policy = reference)" if same else "")
        for field, name in RESULTS:
            value = as_number(getattr(result, field), what=f"{what}: {name}", type_hint=hint, shape_hint=hint)
            expect_close(value, getattr(reference, field).double(), what=f"{what}: {name}", atol=1e-5, rtol=1e-5,
                         hint=hint)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_dpo_loss_batch")
@pytest.mark.runs("compute_dpo_loss_batch")
@pytest.mark.stand_ins(*BATCH_PARTS)
def test_dpo_batch_gradients(submission):
    """compute_dpo_loss_batch: backpropagating the loss trains the policy, and the frozen reference gets no gradient."""
    inputs = batch_inputs(tiny_state(3), tiny_state(4), cases=[(0.1, False)])
    (got,) = submission.run(batch_losses, **inputs)
    what = "after backpropagating compute_dpo_loss_batch's loss"
    expect_true(got.touched == [], what=f"{what}: the reference model", problem=f"got gradients ({len(got.touched)} "
                "parameters, e.g. " + (got.touched[0] if got.touched else "") + ").", hint=HINT_FROZEN)
    (expected,) = run_here(batch_losses, ref, **inputs)
    expect_true(isinstance(got.gradients, dict) and set(got.gradients) == set(expected.gradients),
                what=f"{what}: the policy model", problem="some of its parameters got no gradient.",
                hint="the loss must come from the policy's log-probabilities with their graph (no torch.no_grad() or "
                     ".detach() around the policy model).")
    for key in ("out_head.weight", "tok_emb.weight", "trf_blocks.0.att.W_query.weight", "final_norm.scale"):
        expect_close(got.gradients[key], expected.gradients[key], what=f"{what}: the gradient of the policy's {key}",
                     atol=1e-6, rtol=1e-4, hint="the policy's log-probabilities of the chosen and rejected answers "
                                                "feed the loss with their graph.")


LOADER_BATCHES = compact_batches(DATA[8:20], 4)


def loader_with(batches, policy, reference, num_batches, mistake=None):
    """compute_dpo_loss_loader on a list of batches, or what it gives with one classic mistake."""
    results = [[float(v) for v in ref.compute_dpo_loss_batch(b, policy, reference, 0.1)] for b in batches]
    count = len(batches) if num_batches is None else min(num_batches, len(batches))
    if mistake == "num_batches ignored":
        count = len(batches)
    used = results[:count]
    divisor = num_batches if mistake == "not capped" and num_batches is not None else len(used)
    if mistake == "sum":
        divisor = 1
    return [sum(r[k] for r in used) / divisor for k in range(3)]


LOADER_MISTAKES = [
    Mistake("averaging over every batch whatever num_batches says", "stop after the first num_batches batches.",
            mistake="num_batches ignored"),
    Mistake("dividing by num_batches when the loader has fewer batches",
            "use min(num_batches, len(data_loader)) batches and divide by that number.", mistake="not capped"),
    Mistake("sums instead of averages", "divide the totals by the number of batches used.", mistake="sum"),
]


@pytest.mark.points(2)
@pytest.mark.runs("compute_dpo_loss_loader")
@pytest.mark.stand_ins(*LOADER_PARTS)
def test_dpo_loss_loader(submission):
    """compute_dpo_loss_loader: mean loss, chosen and rejected reward over all or the first num_batches batches."""
    policy_state, reference_state = tiny_state(5), tiny_state(6)
    cases = [None, 2, 10]
    got = submission.run(loader_losses, name="compute_dpo_loss_loader", cfg=TINY, policy_state=policy_state,
                         reference_state=reference_state, batches=LOADER_BATCHES, cases=cases,
                         stand_ins=list(LOADER_PARTS))
    policy, reference = tiny_models(TINY, policy_state, reference_state)
    with torch.no_grad():
        for num_batches, returned in zip(cases, got):
            result = returned.result
            what = (f"compute_dpo_loss_loader on {len(LOADER_BATCHES)} batches"
                    + ("" if num_batches is None else f" with num_batches={num_batches}"))
            expect_true(isinstance(result, list) and len(result) == 3, what=what,
                        problem="expected three numbers (loss, chosen reward, rejected reward).",
                        hint="return total_loss, total_chosen_rewards, total_rejected_rewards.")
            values = [as_number(v, what=what, shape_hint=HINT_MEAN) for v in result]
            expected = loader_with(LOADER_BATCHES, policy, reference, num_batches)
            expect_true(all(kind in ("float", "int") for kind in returned.types), what=what,
                        problem=f"returned {', '.join(returned.types)}, where three Python floats are expected.",
                        hint="add up each batch's values as Python numbers (a tensor's .item()): a tensor total "
                             "keeps every batch's graph alive while training.")
            hint = with_mistakes(
                values, LOADER_MISTAKES, partial(loader_with, LOADER_BATCHES, policy, reference, num_batches),
                matches=numbers_match(1e-5), yours="your result is",
                hint="add loss.item(), chosen_rewards.item() and rejected_rewards.item() of "
                          "compute_dpo_loss_batch over the batches used, and divide each by their number.")
            for name, value, expected_value in zip(("loss", "chosen reward", "rejected reward"), values, expected):
                expect_close(value, torch.tensor(expected_value, dtype=torch.float64), what=f"{what}: {name}",
                             atol=1e-5, rtol=1e-5, hint=hint)


EVAL_KEYS = ("train_loss", "train_chosen_reward", "train_rejected_reward", "val_loss", "val_chosen_reward",
             "val_rejected_reward")


def dropout_hint(first, second):
    """The hint for a wrong evaluation: whether two calls differed (dropout on)."""
    if isinstance(second, dict) and any(first.get(k) != second.get(k) for k in EVAL_KEYS):
        return ("two calls gave different results, so dropout was on: put the policy model in eval mode before "
                "computing the losses.")
    return "compute_dpo_loss_loader on eval_iter batches of each loader, with gradients turned off."


@pytest.mark.points(1)
@pytest.mark.runs("evaluate_dpo_loss_loader")
@pytest.mark.stand_ins(*EVALUATION_PARTS)
def test_evaluate_dpo_loss_loader(submission):
    """evaluate_dpo_loss_loader: losses and rewards on eval_iter batches of each loader in eval mode, as a dict;
    the policy is left in training mode."""
    cfg = dict(TINY, drop_rate=0.3)  # dropout: eval mode matters
    policy_state, reference_state = tiny_state(7, drop_rate=0.3), tiny_state(8, drop_rate=0.3)
    train_batches, val_batches = LOADER_BATCHES, compact_batches(DATA[40:48], 4)
    got = submission.run(evaluation, name="evaluate_dpo_loss_loader", cfg=cfg, policy_state=policy_state,
                         reference_state=reference_state, train_batches=train_batches, val_batches=val_batches,
                         eval_iter=2, stand_ins=list(EVALUATION_PARTS))
    policy, reference = tiny_models(cfg, policy_state, reference_state)
    with torch.no_grad():
        train = loader_with(train_batches, policy, reference, 2)
        val = loader_with(val_batches, policy, reference, 2)
    expected = dict(zip(EVAL_KEYS, train + val))
    what = "evaluate_dpo_loss_loader(..., beta=0.1, eval_iter=2)"
    expect_keys(got.first, EVAL_KEYS, what=what, hint=None)
    for key in EVAL_KEYS:
        expect_close(as_number(got.first[key], what=f"{what}: {key}", shape_hint=HINT_MEAN),
                     torch.tensor(expected[key], dtype=torch.float64), what=f"{what}: {key}", atol=1e-5, rtol=1e-5,
                     hint=lambda: dropout_hint(got.first, got.second))
    expect_true(got.training_after is True, what=what, problem="the policy model is left in eval mode.",
                hint="put the policy model back into training mode before returning: training goes on after the "
                     "evaluation.")


DPO_TRAINING = {"seed": 123, "lr": 5e-3, "beta": 0.5, "num_epochs": 2, "eval_freq": 2, "eval_iter": 1,
                "start_context": "Below is an instruction"}
TRACKING_KEYS = ("train_losses", "train_chosen_rewards", "train_rejected_rewards", "val_losses",
                 "val_chosen_rewards", "val_rejected_rewards", "tokens_seen")


def mistaken_dpo_loop(mistake):
    """train_model_dpo_simple with one classic mistake, built from the reference's other functions."""

    def train_model_dpo_simple(policy_model, reference_model, train_loader, val_loader, optimizer, num_epochs, beta,
                               eval_freq, eval_iter, start_context, tokenizer):
        tracking = {key: [] for key in TRACKING_KEYS}
        tokens_seen, step = 0, -1
        for _ in range(num_epochs):
            if mistake != "no train mode":
                policy_model.train()
            for batch in train_loader:
                if mistake != "no zero_grad":
                    optimizer.zero_grad()
                ref.compute_dpo_loss_batch(batch, policy_model, reference_model, beta)[0].backward()
                optimizer.step()
                tokens_seen += batch["chosen"].numel() * (2 if mistake == "both counted" else 1)
                step += 1
                if (step + 1 if mistake == "steps from 1" else step) % eval_freq == 0:
                    res = ref.evaluate_dpo_loss_loader(policy_model, reference_model, train_loader, val_loader, beta,
                                                       eval_iter)
                    for key, name in zip(TRACKING_KEYS, EVAL_KEYS):
                        tracking[key].append(res[name])
                    tracking["tokens_seen"].append(tokens_seen)
        return tracking

    return train_model_dpo_simple


TRAINING_MISTAKES = [
    Mistake("training without resetting the gradients",
            "reset the optimizer's gradients (zero_grad) at every step: otherwise the gradients of all earlier steps "
            "add up.",
            mistake="no zero_grad"),
    Mistake("counting the steps from 1 (evaluating after steps 1, 3, ...)",
            "global_step starts at -1 and is increased after each step, so the first evaluation is after step 0.",
            mistake="steps from 1"),
    Mistake("counting the rejected tokens as well", "count the tokens of the chosen sequences only (the number of "
            "elements of batch['chosen']).", mistake="both counted"),
    Mistake("training a policy that was handed over in eval mode (dropout off) without switching it to training mode",
            "the loop is given a model that may have just been evaluated: put the policy into training mode at the "
            "start of every epoch.", mistake="no train mode"),
]


def training_with(inputs, mistake=None):
    """The tracking dict of the reference's DPO loop on `inputs` (dpo_training_run's), or of the loop with one
    classic mistake."""
    loop = ref.train_model_dpo_simple if mistake is None else mistaken_dpo_loop(mistake)
    with torch.enable_grad():  # mistakes are recomputed under torch.no_grad(): training needs gradients
        return run_here(dpo_training_run, SimpleNamespace(train_model_dpo_simple=loop), **inputs).tracking


@pytest.mark.points(3)
@pytest.mark.runs("train_model_dpo_simple")
@pytest.mark.stand_ins(*TRAINING_PARTS)
def test_train_model_dpo_simple(submission):
    """train_model_dpo_simple: a short seeded DPO run gives the reference's losses, rewards and tokens seen, and
    leaves the reference model as it was (2 epochs of 3 batches of tiny GPTs with dropout, the policy handed over in
    eval mode, evaluating every 2 steps)."""
    state = tiny_state(9)  # the policy starts as a copy of the reference model, as in the book
    inputs = dict(name="train_model_dpo_simple", cfg=dict(TINY, drop_rate=0.2), policy_state=state,
                  reference_state=state, vocabulary=VOCABULARY, train_batches=compact_batches(DATA[20:32], 4),
                  val_batches=compact_batches(DATA[48:52], 4), settings=DPO_TRAINING, stand_ins=list(TRAINING_PARTS))
    got = submission.run(dpo_training_run, **inputs)
    expected = training_with(inputs)
    what = "train_model_dpo_simple (2 epochs of 3 batches, evaluating every 2 steps)"
    expect_true(got.unchanged is True and got.touched == [], what=f"{what}: the reference model",
                problem="changed or got gradients during training (with a correct compute_dpo_loss_batch).",
                hint="the loop trains the policy only: the optimizer it is given holds the policy's parameters, and "
                     "nothing in the loop should run the reference model with gradients or change it.")
    expect_keys(got.tracking, TRACKING_KEYS, what=what,
                hint="return the tracking dict, one list per key with one entry per evaluation.")
    hint = with_mistakes(got.tracking, TRAINING_MISTAKES, partial(training_with, inputs),
                       matches=numbers_match(1e-4), yours="your run is",
                       hint="one optimizer step per batch (reset the gradients, the batch's DPO loss, "
                                 "backpropagate, step); count the tokens of batch['chosen']; an evaluation after "
                                 "steps 0, eval_freq, 2 * eval_freq, ... (section 7 of the notebook).")
    expect_equal([int(t) for t in got.tracking["tokens_seen"]], [int(t) for t in expected["tokens_seen"]],
                 what=f"{what}: tokens_seen", hint=hint)
    for key in TRACKING_KEYS[:-1]:
        expect_losses(got.tracking[key], expected[key], what=f"{what}: {key}", hint=hint)
