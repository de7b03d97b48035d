"""Grader of chapter 7: finetuning to follow instructions.

The text functions (format_input, split_data, extract_response, the answer scores) are called with the
course's own entries and compared exactly. The dataset runs with GPT-2's tokenizer in the worker; the collate
functions run on seeded batches of token ids, and custom_collate_fn once more on a meta-device (to see that it
moves the batch where `device` says, without a GPU). Generation and the short finetuning run use a tiny GPT
(the support code's GPTModel, loaded with the weights of a seeded reference model) whose vocabulary is GPT-2's
tokens of the course's data renumbered from 0, so a training step takes milliseconds; both run on the CPU,
where a fixed seed gives the reference's numbers, and the reference runs the same probe on the trusted side.

Edge cases where the book and the course differ, and what is accepted:
- generate_model_responses is the course's name for the book's inline loop; whether it changes the entries it
  is given (the book writes the answers into test_data) is not graded, only what it returns.
- An end-of-text token inside an item (the book masks by value, so it would count as "the first") never occurs
  in the graded batches: masking by value or by position are both accepted.
- The exact match and F1 scores are the course's (SQuAD's), not the book's: the book scores with a judge model
  (Ollama), which the notebook offers as an option and nothing grades.
"""

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from checks.ch07_instruction import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import ListOf, expect_close, expect_count, expect_equal, expect_true, probe
from course.grading.diagnosis import explain_errors
from course.grading.imports import plain_imports
from course.grading.inputs import reference_module
from course.worker.runtime.records import ErrorKind

with plain_imports():
    import tiktoken  # noqa: F401 - imported here once, without rewriting, for the probes run on this side
    from torch.utils.data import DataLoader  # noqa: F401 - the same

    from reference import instruction as ref
    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer


DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "instruction_data.json").read_text("utf-8"))
PAD = 50256
WITH_INPUT = [entry for entry in DATA if entry["input"]]
WITHOUT_INPUT = [entry for entry in DATA if not entry["input"]]
# Entries with and without an input, and two written for the grader (an input over two lines, braces).
ENTRIES = [WITH_INPUT[0], WITHOUT_INPUT[0], WITH_INPUT[5], WITHOUT_INPUT[7],
           {"instruction": "Sort these numbers in ascending order.", "input": "9, 2, 7\n4, 1",
            "output": "1, 2, 4, 7, 9."},
           {"instruction": "What does {x} mean in a Python f-string?", "input": "",
            "output": "It inserts the value of x."}]


def error_mentions(*phrases, hint):
    """A diagnosis: `hint` for an error raised in the student's code whose text contains one of `phrases`."""

    def diagnose(record):
        raised = record.kind is ErrorKind.RAISED
        return hint if raised and any(p in f"{record.type}: {record.message}" for p in phrases) else None

    return diagnose


def as_float(value, *, what, hint):
    """A student's score as a Python float (ints and one-element tensors accepted)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    expect_true(type(value) in (bool, int, float), what=what, problem=f"expected a number, got {type(value).__name__}.",
                hint=hint)
    return float(value)


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="inputs"))
def call_each(student, name, inputs):
    """The student's function `name` called with each list of positional arguments."""
    function = getattr(student, name)
    return [function(*arguments) for arguments in inputs]


@probe(returns=ListOf(length="cases"))
def split_lists(student, name, cases):
    """split_data(data, **kwargs) for each (data, kwargs), as lists."""
    results = []
    for data, kwargs in cases:
        parts = getattr(student, name)(data, **kwargs)
        results.append([list(part) for part in parts] if isinstance(parts, (tuple, list)) else parts)
    return results


@probe(returns=ListOf(length=4))
def instruction_dataset(student, class_name, entries):
    """[encoded_texts, [dataset[i] as a list for each i], len(dataset), whether dataset.data is the entries
    given] with GPT-2's tokenizer."""
    import tiktoken

    dataset = getattr(student, class_name)(entries, tiktoken.get_encoding("gpt2"))
    items = [[int(token) for token in dataset[i]] for i in range(len(entries))]
    encoded = [[int(token) for token in text] for text in dataset.encoded_texts]
    return [encoded, items, len(dataset), dataset.data == entries]


@probe(returns=ListOf(length="cases"))
def collate_batches(student, name, cases):
    """The student's collate function `name` on each (batch, kwargs); tuples become lists."""
    results = []
    for batch, kwargs in cases:
        result = getattr(student, name)([list(item) for item in batch], **kwargs)
        results.append(list(result) if isinstance(result, tuple) else result)
    return results


@probe(returns=ListOf(length=2))
def collate_on_device(student, name, batch, device):
    """[device and dtype of each returned tensor, what the items look like afterwards]: custom_collate_fn with
    device=`device` (the meta device: no values, only where the tensors are)."""
    items = [list(item) for item in batch]
    result = getattr(student, name)(items, device=device)
    described = [[str(t.device.type), str(t.dtype)] if isinstance(t, torch.Tensor) else type(t).__name__
                 for t in result]
    return [described, items]


@probe(returns=ListOf(length="cases"))
def model_responses(student, cfg, state, vocabulary, entries, cases):
    """generate_model_responses on the CPU with a tiny GPT whose token ids are GPT-2's `vocabulary` renumbered
    from 0, for each case of keyword arguments (context_size, eos_id, json_key)."""
    import tiktoken

    from reference.gpt import GPTModel

    class CompactTokenizer:
        def __init__(self, gpt2_ids):
            self.gpt2 = tiktoken.get_encoding("gpt2")
            self.gpt2_ids = list(gpt2_ids)
            self.compact_ids = {gpt2_id: i for i, gpt2_id in enumerate(self.gpt2_ids)}

        def encode(self, text, allowed_special=frozenset()):
            return [self.compact_ids[i] for i in self.gpt2.encode(text, allowed_special=allowed_special)]

        def decode(self, ids):
            return self.gpt2.decode([self.gpt2_ids[i] for i in ids])

    model = GPTModel(cfg)
    model.load_state_dict(state)
    model.eval()
    tokenizer = CompactTokenizer(vocabulary)
    results = []
    for kwargs in cases:
        answers = student.generate_model_responses(model, [dict(entry) for entry in entries], tokenizer, "cpu",
                                                   **kwargs)
        results.append([dict(answer) if isinstance(answer, dict) else answer for answer in answers])
    return results


@probe(returns=ListOf(length=3))
def finetuning_run(student, cfg, state, vocabulary, train_entries, val_entries, settings):
    """A short, seeded finetuning run on the CPU: the student's InstructionDataset and custom_collate_fn (as the
    book wires them, with functools.partial and DataLoader), chapter 5's train_model_simple from the support code
    and an Adam optimizer. Returns [train_losses, val_losses, tokens_seen]. The grader runs this very function
    with the reference's dataset and collate function to get the expected numbers."""
    import contextlib
    import functools
    import io

    import tiktoken
    from torch.utils.data import DataLoader

    from reference.gpt import GPTModel
    from reference.pretraining import train_model_simple

    class CompactTokenizer:
        def __init__(self, gpt2_ids):
            self.gpt2 = tiktoken.get_encoding("gpt2")
            self.gpt2_ids = list(gpt2_ids)
            self.compact_ids = {gpt2_id: i for i, gpt2_id in enumerate(self.gpt2_ids)}

        def encode(self, text, allowed_special=frozenset()):
            return [self.compact_ids[i] for i in self.gpt2.encode(text, allowed_special=allowed_special)]

        def decode(self, ids):
            return self.gpt2.decode([self.gpt2_ids[i] for i in ids])

    tokenizer = CompactTokenizer(vocabulary)
    collate = functools.partial(student.custom_collate_fn, pad_token_id=len(vocabulary) - 1, device="cpu",
                                allowed_max_length=settings["allowed_max_length"])
    train_loader = DataLoader(student.InstructionDataset(train_entries, tokenizer), batch_size=settings["batch_size"],
                              collate_fn=collate, shuffle=True, drop_last=True, num_workers=0)
    val_loader = DataLoader(student.InstructionDataset(val_entries, tokenizer), batch_size=settings["batch_size"],
                            collate_fn=collate, shuffle=False, drop_last=False, num_workers=0)
    class Adam:
        """Adam written out: torch.optim's would import torch._dynamo, seconds of work in the worker."""

        def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
            self.params, self.lr, self.betas, self.eps, self.steps = list(params), lr, betas, eps, 0
            self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]

        def zero_grad(self, set_to_none=True):
            for param in self.params:
                param.grad = None

        @torch.no_grad()
        def step(self):
            self.steps += 1
            beta1, beta2 = self.betas
            for param, (mean, square) in zip(self.params, self.moments):
                if param.grad is not None:
                    mean.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                    square.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                    denominator = (square / (1 - beta2 ** self.steps)).sqrt_().add_(self.eps)
                    param.addcdiv_(mean, denominator, value=-self.lr / (1 - beta1 ** self.steps))

    model = GPTModel(cfg)
    model.load_state_dict(state)
    optimizer = Adam(model.parameters(), lr=settings["lr"])
    torch.manual_seed(settings["seed"])  # the training loader shuffles with torch's global generator
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, val_losses, tokens_seen = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=settings["num_epochs"],
            eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
            start_context=settings["start_context"], tokenizer=tokenizer)
    return [list(train_losses), list(val_losses), list(tokens_seen)]


# -- section 7.2: the prompt format and the split ---------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("format_input")
def test_format_input(submission):
    """format_input: the Alpaca-style prompt, with the input section only when the entry has an input."""
    got = submission.run(call_each, name="format_input", inputs=[[entry] for entry in ENTRIES])
    for index, entry in enumerate(ENTRIES):
        expected = ref.format_input(entry)

        def diagnose(got=got[index], entry=entry, expected=expected):
            if not entry["input"] and got == expected + "\n\n### Input:\n":
                return "an entry whose input is empty gets no '### Input:' section at all."
            if isinstance(got, str) and "### Response" in got:
                return "the prompt ends after the instruction (or the input): the response header is added later."
            return ("the preamble, then '\\n\\n### Instruction:\\n' and the instruction, then, only if "
                    "entry['input'] is not empty, '\\n\\n### Input:\\n' and the input.")

        kind = "with an input" if entry["input"] else "without an input"
        expect_equal(got[index], expected, what=f"format_input of entry {index + 1} ({kind})", hint=diagnose)


@pytest.mark.points(1)
@pytest.mark.runs("split_data")
def test_split_data(submission):
    """split_data: the first 85% for training, the next 10% for testing, the rest for validation, in order."""
    cases = [(list(range(100)), {}), (list(range(1100)), {}), (list(range(23)), {}),
             (list(range(40)), {"train_frac": 0.5, "test_frac": 0.25})]
    got = submission.run(split_lists, name="split_data", cases=cases)
    for index, (data, kwargs) in enumerate(cases):
        train, val, test = ref.split_data(data, **kwargs)
        what = f"split_data of {len(data)} entries" + (f" with {kwargs}" if kwargs else "")

        def diagnose(got=got[index], train=train, val=val, test=test):
            if got == [train, test, val]:
                return ("your validation and test parts are swapped: return (train_data, val_data, test_data), "
                        "where the test part comes right after the training part in the data.")
            return ("train_portion = int(len(data) * train_frac), test_portion = int(len(data) * test_frac); the "
                    "test part follows the training part, and the validation part is what is left.")

        expect_true(isinstance(got[index], list) and len(got[index]) == 3, what=what,
                    problem="expected three lists (train_data, val_data, test_data).", hint=None)
        for part, got_part, expected_part in zip(("train_data", "val_data", "test_data"), got[index],
                                                 (train, val, test)):
            expect_equal(got_part, expected_part, what=f"{what}: {part}", hint=diagnose)


# -- section 7.3: the dataset --------------------------------------------------------------------------------

RESPONSE_MISTAKES = [
    ("the answer without the response header", lambda e: ref.format_input(e) + e["output"],
     "append '\\n\\n### Response:\\n' and then the answer to the prompt."),
    ("the response header without the two newlines before it",
     lambda e: ref.format_input(e) + "### Response:\n" + e["output"],
     "the header is '\\n\\n### Response:\\n', with two newlines before '###'."),
    ("the prompt alone, without the response", lambda e: ref.format_input(e),
     "each training text is the prompt, the response header and the answer."),
]


@pytest.mark.points(2)
@pytest.mark.depends_on("test_format_input")
@pytest.mark.runs("InstructionDataset", "format_input")
def test_instruction_dataset(submission):
    """InstructionDataset: each entry as the token ids of prompt, response header and answer, tokenized once."""
    entries = ENTRIES[:4] + DATA[10:14]
    with explain_errors(error_mentions("disallowed special token", hint="encode the text with tokenizer.encode.")):
        encoded, items, length, keeps_data = submission.run(instruction_dataset, class_name="InstructionDataset",
                                                            entries=entries)
    tokenizer = get_gpt2_tokenizer()
    expected = ref.InstructionDataset(entries, tokenizer).encoded_texts
    expect_count(length, len(entries), what="len(dataset)", hint="__len__ returns the number of entries.")

    def diagnose(index):
        got = encoded[index] if isinstance(encoded, list) and index < len(encoded) else None
        for description, text, fix in RESPONSE_MISTAKES:
            if got == tokenizer.encode(text(entries[index])):
                return f"your token ids are exactly those of {description}: {fix}"
        return "format_input(entry) + '\\n\\n### Response:\\n' + entry['output'], encoded with tokenizer.encode."

    expect_true(isinstance(encoded, list) and len(encoded) == len(entries), what="dataset.encoded_texts",
                problem="expected a list with one list of token ids per entry.",
                hint="tokenize every entry in __init__ and keep the lists in self.encoded_texts.")
    for index in range(len(entries)):
        expect_equal(encoded[index], expected[index], what=f"dataset.encoded_texts[{index}]",
                     hint=lambda index=index: diagnose(index))
        expect_equal(items[index], expected[index], what=f"dataset[{index}]",
                     hint="__getitem__ returns self.encoded_texts[index].")
    expect_true(keeps_data is True, what="dataset.data", problem="is not the list of entries given.",
                hint="keep the entries: self.data = data.")


# -- section 7.3: batching -------------------------------------------------------------------------------------

BOOK_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]  # the book's example


def random_batches(seed, count):
    """`count` seeded batches of 1 to 5 items of 1 to 9 token ids (never the pad id), and one of equal lengths."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        size = int(torch.randint(1, 6, (1,), generator=generator))
        lengths = torch.randint(1, 10, (size,), generator=generator).tolist()
        batches.append([torch.randint(1, PAD, (n,), generator=generator).tolist() for n in lengths])
    batches.append([torch.randint(1, PAD, (4,), generator=generator).tolist() for _ in range(3)])
    return batches


def collate_with(batch, pad_token_id=PAD, ignore_index=-100, allowed_max_length=None, mistake=None):
    """custom_collate_fn, or what it gives with one classic mistake."""
    extra = 0 if mistake == "no extra token" else 1
    longest = max(len(item) + extra for item in batch)
    inputs, targets = [], []
    for item in batch:
        padded = item + [pad_token_id] * (longest - len(item))
        row_inputs = torch.tensor(padded[:-1])
        row_targets = torch.tensor(padded[:-1] if mistake == "not shifted" else padded[1:])
        pads = (row_targets == pad_token_id).nonzero().flatten()
        if mistake == "all padding":
            row_targets[pads] = ignore_index
        elif mistake != "no masking":
            row_targets[pads[1:]] = ignore_index
        if mistake == "inputs masked too":
            input_pads = (row_inputs == pad_token_id).nonzero().flatten()
            row_inputs[input_pads[1:]] = ignore_index
        if allowed_max_length is not None:
            row_inputs, row_targets = row_inputs[:allowed_max_length], row_targets[:allowed_max_length]
        inputs.append(row_inputs)
        targets.append(row_targets)
    return [torch.stack(inputs), torch.stack(targets)]


COLLATE_MISTAKES = [
    ("all padding", "replacing EVERY padding target by ignore_index, the first end-of-text token included",
     "keep the first pad_token_id of each row of targets (the end-of-text token the model must learn to "
     "produce) and replace only the later ones: targets[indices[1:]] = ignore_index."),
    ("no masking", "padding targets left as they are", "replace every padding target after the first by "
     "ignore_index, so that cross_entropy skips them."),
    ("inputs masked too", "replacing the padding of the inputs by ignore_index as well",
     "only the targets get ignore_index; the inputs keep pad_token_id (the model needs a token id at every "
     "position)."),
    ("not shifted", "targets equal to the inputs, not shifted", "targets = padded[1:], the inputs shifted by one."),
    ("no extra token", "padding to the longest item without the extra end-of-text token",
     "every item gets one pad_token_id appended first, so the batch is padded to the longest item + 1 tokens "
     "(and the inputs drop the last one)."),
]


def name_collate_mistake(case, got):
    batch, kwargs = case
    if not isinstance(got, list) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
        return None
    for mistake, description, fix in COLLATE_MISTAKES:
        candidate = collate_with(batch, **kwargs, mistake=mistake)
        if all(c.shape == g.shape and torch.equal(c, g.long()) for c, g in zip(candidate, got)):
            return f"your batch is exactly what {description} gives: {fix}"
    return None


def describe_case(batch, kwargs):
    lengths = ", ".join(str(len(item)) for item in batch)
    settings = "".join(f", {key}={value}" for key, value in kwargs.items())
    return f"a batch of items of lengths {lengths}{settings}"


@pytest.mark.points(1)
@pytest.mark.runs("custom_collate_draft_1")
def test_collate_draft_1(submission):
    """custom_collate_draft_1: one end-of-text token per item, padded to one length, the last column dropped."""
    cases = [(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(1, 3)] + [(BOOK_BATCH, {"pad_token_id": 0})]
    got = submission.run(collate_batches, name="custom_collate_draft_1", cases=cases)
    for index, (batch, kwargs) in enumerate(cases):
        expect_equal(got[index], ref.custom_collate_draft_1(batch, **kwargs), what=f"custom_collate_draft_1 on "
                     f"{describe_case(batch, kwargs)}",
                     hint="pad every item (after appending one pad_token_id) to the longest item + 1 tokens, "
                          "stack, and drop the last column: inputs = padded[:-1].")


@pytest.mark.points(1)
@pytest.mark.runs("custom_collate_draft_2")
def test_collate_draft_2(submission):
    """custom_collate_draft_2: the inputs, and the targets shifted one position to the left."""
    cases = [(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(2, 3)] + [(BOOK_BATCH, {"pad_token_id": 0})]
    got = submission.run(collate_batches, name="custom_collate_draft_2", cases=cases)
    for index, (batch, kwargs) in enumerate(cases):
        expected = list(ref.custom_collate_draft_2(batch, **kwargs))
        what = f"custom_collate_draft_2 on {describe_case(batch, kwargs)}"
        expect_true(isinstance(got[index], list) and len(got[index]) == 2, what=what,
                    problem="expected a pair (inputs, targets).", hint="return inputs_tensor, targets_tensor.")
        for part, got_part, expected_part in zip(("inputs", "targets"), got[index], expected):
            expect_equal(got_part, expected_part, what=f"{what}: {part}",
                         hint="inputs = padded[:-1], targets = padded[1:] (the next token of each input token).")


@pytest.mark.points(3)
@pytest.mark.runs("custom_collate_fn")
def test_collate_fn_targets(submission):
    """custom_collate_fn: padded inputs, shifted targets, every padding target after the first set to -100."""
    cases = ([(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(3, 4)]
             + [(BOOK_BATCH, {"pad_token_id": 0, "ignore_index": -1})])
    got = submission.run(collate_batches, name="custom_collate_fn", cases=cases)
    for index, (batch, kwargs) in enumerate(cases):
        expected = collate_with(batch, **kwargs)
        what = f"custom_collate_fn on {describe_case(batch, kwargs)}"
        expect_true(isinstance(got[index], list) and len(got[index]) == 2, what=what,
                    problem="expected a pair (inputs, targets).", hint="return inputs_tensor, targets_tensor.")

        def diagnose(case=cases[index], got=got[index]):
            return (name_collate_mistake(case, got)
                    or "pad as in draft 2; then, in each row of targets, find the positions equal to pad_token_id "
                       "and set all but the first to ignore_index.")

        for part, got_part, expected_part in zip(("inputs", "targets"), got[index], expected):
            expect_equal(got_part, expected_part, what=f"{what}: {part}", hint=diagnose)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_collate_fn_targets")
@pytest.mark.runs("custom_collate_fn")
def test_collate_fn_truncation(submission):
    """custom_collate_fn with allowed_max_length: both tensors cut to that many tokens, the masking unchanged."""
    batches = [[[11, 12, 13, 14, 15, 16], [21, 22]], BOOK_BATCH, random_batches(4, 1)[0]]
    cases = []
    for batch in batches:
        longest = max(len(item) for item in batch)
        cases += [(batch, {}), (batch, {"allowed_max_length": 3}), (batch, {"allowed_max_length": longest}),
                  (batch, {"allowed_max_length": 1024})]
    got = submission.run(collate_batches, name="custom_collate_fn", cases=cases)
    for index, (batch, kwargs) in enumerate(cases):
        if not kwargs:
            continue
        what = f"custom_collate_fn on {describe_case(batch, kwargs)}"
        result, full = got[index], got[index - index % 4]  # the same batch without allowed_max_length
        expect_true(isinstance(result, list) and len(result) == 2, what=what,
                    problem="expected a pair (inputs, targets).", hint="return inputs_tensor, targets_tensor.")
        expected_inputs = collate_with(batch, **kwargs)[0]
        hint = ("after padding and masking, cut each row to its first allowed_max_length tokens: "
                "inputs[:allowed_max_length] and targets[:allowed_max_length] (a longer limit changes nothing).")
        expect_equal(result[0], expected_inputs, what=f"{what}: inputs", hint=hint)
        # The targets are checked against your own untruncated targets: their masking is another test's.
        if isinstance(full, list) and len(full) == 2 and isinstance(full[1], torch.Tensor):
            cut = full[1][:, :kwargs["allowed_max_length"]]
            expect_equal(result[1], cut, what=f"{what}: targets, compared with your targets without "
                         "allowed_max_length cut to that length", hint=hint)


@pytest.mark.points(1)
@pytest.mark.runs("custom_collate_fn")
def test_collate_fn_device(submission):
    """custom_collate_fn returns two tensors of token ids (int64) on the given device, and leaves the items alone."""
    batch = [[11, 12, 13], [21], [31, 32]]
    described, items = submission.run(collate_on_device, name="custom_collate_fn", batch=batch, device="meta")
    what = "custom_collate_fn(batch, device='meta')"
    expect_true(isinstance(described, list) and len(described) == 2, what=what,
                problem="expected a pair (inputs, targets) of tensors.", hint="return inputs_tensor, targets_tensor.")
    for part, description in zip(("inputs", "targets"), described):
        expect_equal(description, ["meta", "torch.int64"], what=f"{what}: the device and dtype of the {part}",
                     hint="build the rows with torch.tensor(list of ints) (int64) and move the stacked tensors "
                          "with .to(device) before returning them.")
    expect_equal(items, batch, what=f"{what}: the items of the batch after the call",
                 hint="work on a copy of each item (new_item = item.copy()): the items belong to the dataset, and "
                      "appending to them makes them grow at every epoch.")


# -- section 7.5: extracting and generating responses ---------------------------------------------------------

def generated_texts():
    """(generated text, prompt) pairs: what generation returns is the prompt followed by the continuation."""
    cases = []
    for entry, continuation in zip(ENTRIES, [
            "\n\n### Response:\n" + ENTRIES[0]["output"],
            "\n\n### Response:\n  " + ENTRIES[1]["output"] + "  \n",
            " The answer follows.\n\n### Response:\nYes.\n\n### Instruction:\nRepeat",
            "\n\n### Instruction:\n" + ENTRIES[3]["instruction"],
            "\n### Response:\n\n1, 2, 4, 7, 9.\n",
            ""]):
        prompt = ref.format_input(entry)
        cases.append([prompt + continuation, prompt])
    return cases


@pytest.mark.points(1)
@pytest.mark.depends_on("test_format_input")
@pytest.mark.runs("extract_response")
def test_extract_response(submission):
    """extract_response: the generated text without the prompt and the '### Response:' header, stripped."""
    cases = generated_texts()
    got = submission.run(call_each, name="extract_response", inputs=cases)
    for index, (response_text, input_text) in enumerate(cases):
        expected = ref.extract_response(response_text, input_text)

        def diagnose(got=got[index], response_text=response_text, input_text=input_text):
            rest = response_text[len(input_text):]
            if got == rest.replace("### Response:", ""):
                return "strip the whitespace around the answer: .strip()."
            if got == rest.strip():
                return "remove the '### Response:' header: .replace('### Response:', '')."
            return ("cut off the prompt (the first len(input_text) characters), then remove '### Response:' and "
                    "strip the whitespace.")

        expect_equal(got[index], expected, what=f"extract_response of generated text {index + 1}", hint=diagnose)


# A GPT small enough that generating and training take milliseconds; its vocabulary is compact (see module doc).
TINY = {"context_length": 96, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False}


def compact_vocabulary(texts):
    """GPT-2's token ids of `texts`, sorted, with the end-of-text token last: compact id i is GPT-2 id
    vocabulary[i]."""
    tokenizer = get_gpt2_tokenizer()
    ids = sorted({token for text in texts for token in tokenizer.encode(text)} - {PAD})
    return ids + [PAD]


def training_text(entry):
    return ref.format_input(entry) + ref.RESPONSE_HEADER + entry["output"]


VOCABULARY = compact_vocabulary([training_text(entry) for entry in DATA + ENTRIES])


def compact_encode(text):
    positions = {gpt2_id: i for i, gpt2_id in enumerate(VOCABULARY)}
    return [positions[token] for token in get_gpt2_tokenizer().encode(text)]


def tiny_model(seed):
    return reference_module(GPTModel, seed, cfg=dict(TINY, vocab_size=len(VOCABULARY)))


@pytest.mark.points(2)
@pytest.mark.depends_on("test_format_input", "test_extract_response")
@pytest.mark.runs("generate_model_responses", "format_input", "extract_response")
def test_generate_model_responses(submission):
    """generate_model_responses: greedy answers of a tiny GPT to each entry, stopped at eos_id, as new entries."""
    model = tiny_model(7)
    cfg = dict(TINY, vocab_size=len(VOCABULARY))
    entries = DATA[85:88]
    reference = SimpleNamespace(generate_model_responses=ref.generate_model_responses)
    # eos_id: the third token the model generates for the first entry, so that stopping there matters.
    prompt = torch.tensor([compact_encode(ref.format_input(entries[0]))])
    with torch.no_grad():
        generated = ref.generate(model, prompt, max_new_tokens=3, context_size=40)
    eos_id = int(generated[0, -1])
    cases = [{"max_new_tokens": 6, "context_size": 40, "eos_id": eos_id},
             {"max_new_tokens": 4, "eos_id": eos_id, "json_key": "answer"}]
    got = submission.run(model_responses, cfg=cfg, state=model.state_dict(), vocabulary=VOCABULARY,
                         entries=entries, cases=cases)
    expected = model_responses(reference, cfg, model.state_dict(), VOCABULARY, entries, cases)
    for index, kwargs in enumerate(cases):
        settings = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        what = f"generate_model_responses({settings})"
        expect_true(isinstance(got[index], list) and len(got[index]) == len(entries), what=what,
                    problem="expected a list with one entry per entry given.", hint="return the list of entries.")
        for position, (answer, expected_answer) in enumerate(zip(got[index], expected[index])):
            expect_equal(answer, expected_answer, what=f"{what}: entry {position}",
                         hint="for each entry: the prompt format_input(entry), generate(model, "
                              "text_to_token_ids(prompt, tokenizer).to(device), max_new_tokens, context_size (the "
                              "model's context length when None), eos_id=eos_id), decode, extract_response, and "
                              "a copy of the entry with the answer under json_key.")


# -- section 7.7: scoring the answers (offline) ---------------------------------------------------------------

NORMALIZE_TEXTS = ["The capital of France is Paris.", "  the   Capital, of FRANCE; is paris!! ", "An apple a day",
                   "'Dance' can be classified as a verb.", "Theatre and anthem: another ANTHEM", "",
                   "well-known (really) #1 -- a_b", "A. B. C.", "Café au lait, s'il vous plaît"]

# (prediction, reference answer)
ANSWER_PAIRS = [
    ("The capital of Canada is Ottawa.", "The capital of Canada is Ottawa."),
    ("the capital of canada is ottawa", "The capital of Canada is Ottawa."),
    ("The capital is Ottawa.", "The capital of Canada is Ottawa."),
    ("Ottawa", "The capital of Canada is Ottawa."),
    ("x x y", "x y y"),
    ("red red red", "red"),
    ("blue", "red"),
    ("The.", "a"),
    ("", "red"),
    ("The mouse was chased by the cat.", "The cat chased the mouse."),
    ("5 kilometers is 5000 meters", "5 kilometers is 5,000 meters."),
]


@pytest.mark.points(1)
@pytest.mark.runs("normalize_answer")
def test_normalize_answer(submission):
    """normalize_answer: lower case, no ASCII punctuation, no articles a/an/the, single spaces."""
    got = submission.run(call_each, name="normalize_answer", inputs=[[text] for text in NORMALIZE_TEXTS])
    for index, text in enumerate(NORMALIZE_TEXTS):
        expect_equal(got[index], ref.normalize_answer(text), what=f"normalize_answer({text!r})",
                     hint="in this order: text.lower(); drop every character of string.punctuation; replace the "
                          "whole words a, an, the by a space (re.sub(r'\\b(a|an|the)\\b', ' ', text)); then "
                          "' '.join(text.split()).")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_normalize_answer")
@pytest.mark.runs("exact_match_score", "normalize_answer")
def test_exact_match_score(submission):
    """exact_match_score: 1.0 when the normalized answers are equal, else 0.0."""
    got = submission.run(call_each, name="exact_match_score", inputs=[list(pair) for pair in ANSWER_PAIRS])
    for index, (prediction, truth) in enumerate(ANSWER_PAIRS):
        what = f"exact_match_score({prediction!r}, {truth!r})"
        hint = "compare normalize_answer(prediction) with normalize_answer(ground_truth); return float(...)."
        value = as_float(got[index], what=what, hint=hint)
        expect_true(value == ref.exact_match_score(prediction, truth), what=what, problem=f"is {value}, which is "
                    "wrong.", hint=hint)


def f1_with_sets(prediction, truth):
    """The token F1 computed on sets of words instead of bags (a classic mistake)."""
    predicted, expected = set(ref.normalize_answer(prediction).split()), set(ref.normalize_answer(truth).split())
    if not predicted or not expected:
        return float(predicted == expected)
    same = len(predicted & expected)
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def f1_without_normalizing(prediction, truth):
    predicted, expected = prediction.split(), truth.split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.points(2)
@pytest.mark.depends_on("test_normalize_answer")
@pytest.mark.runs("f1_score", "normalize_answer")
def test_f1_score(submission):
    """f1_score: the harmonic mean of token precision and recall between the normalized answers."""
    got = submission.run(call_each, name="f1_score", inputs=[list(pair) for pair in ANSWER_PAIRS])
    values = [as_float(value, what=f"f1_score{pair}", hint="return a float between 0 and 1.")
              for value, pair in zip(got, ANSWER_PAIRS)]

    def diagnose():
        if all(abs(v - f1_with_sets(*pair)) < 1e-9 for v, pair in zip(values, ANSWER_PAIRS)):
            return ("your scores are exactly what sets of words give: count the words as bags, "
                    "collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens), so that a "
                    "word shared twice counts twice.")
        if all(abs(v - f1_without_normalizing(*pair)) < 1e-9 for v, pair in zip(values, ANSWER_PAIRS)):
            return "your scores are exactly what words split without normalize_answer give: normalize first."
        return ("precision = shared words / predicted words, recall = shared words / reference words, "
                "F1 = 2 * precision * recall / (precision + recall); an empty answer scores 1.0 only against an "
                "empty answer.")

    for value, (prediction, truth) in zip(values, ANSWER_PAIRS):
        expected = torch.tensor(ref.f1_score(prediction, truth), dtype=torch.float64)
        expect_close(torch.tensor(value, dtype=torch.float64), expected, atol=1e-9, rtol=1e-9,
                     what=f"f1_score({prediction!r}, {truth!r})", hint=diagnose)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_exact_match_score", "test_f1_score")
@pytest.mark.runs("evaluate_responses", "exact_match_score", "f1_score", "normalize_answer")
def test_evaluate_responses(submission):
    """evaluate_responses: mean exact match and F1 in percent over the entries, with their count."""
    answers = [{"instruction": entry["instruction"], "input": entry["input"], "output": truth,
                "model_response": prediction} for entry, (prediction, truth) in zip(DATA, ANSWER_PAIRS)]
    other_key = [{"instruction": "Name a primary color.", "input": "", "output": "Red.", "guess": guess}
                 for guess in ("red", "Blue.", "The red.")]
    inputs = [[answers], [answers[:4]], [other_key, "guess"], [[]]]
    got = submission.run(call_each, name="evaluate_responses", inputs=inputs)
    for index, arguments in enumerate(inputs):
        expected = ref.evaluate_responses(*arguments)
        what = f"evaluate_responses of {len(arguments[0])} entries" + (f" with json_key={arguments[1]!r}"
                                                                         if len(arguments) > 1 else "")
        hint = ("100 * the mean of exact_match_score and of f1_score of entry[json_key] against entry['output'], "
                "and the number of entries; an empty list gives 0.0, 0.0 and 0.")
        result = got[index]
        expect_true(isinstance(result, dict) and sorted(result) == ["count", "exact_match", "f1"], what=what,
                    problem="expected a dict with the keys 'exact_match', 'f1' and 'count'.", hint=hint)
        expect_count(result["count"], expected["count"], what=f"{what}: count", hint=hint)
        for key in ("exact_match", "f1"):
            value = as_float(result[key], what=f"{what}: {key}", hint=hint)
            expect_close(torch.tensor(value, dtype=torch.float64),
                         torch.tensor(expected[key], dtype=torch.float64), atol=1e-9, rtol=1e-9,
                         what=f"{what}: {key}", hint=hint)


# -- section 7.6: finetuning with chapter 5's loop -------------------------------------------------------------

FINETUNING = {"seed": 123, "batch_size": 4, "lr": 5e-3, "num_epochs": 2, "eval_freq": 3, "eval_iter": 2,
              "allowed_max_length": 64, "start_context": "Below is an instruction"}


@pytest.mark.points(2)
@pytest.mark.depends_on("test_instruction_dataset", "test_collate_fn_targets", "test_collate_fn_truncation")
@pytest.mark.runs("InstructionDataset", "format_input", "custom_collate_fn")
def test_finetuning_run(submission):
    """A short finetuning run through chapter 5's loop with your dataset and collate function: the reference's
    losses and tokens seen (2 epochs of 4 batches of a tiny GPT, on the CPU)."""
    cfg = dict(TINY, vocab_size=len(VOCABULARY))
    state = tiny_model(5).state_dict()
    train_entries, val_entries = DATA[:16], DATA[90:96]
    got = submission.run(finetuning_run, cfg=cfg, state=state, vocabulary=VOCABULARY, train_entries=train_entries,
                         val_entries=val_entries, settings=FINETUNING)
    reference = SimpleNamespace(InstructionDataset=ref.InstructionDataset, custom_collate_fn=ref.custom_collate_fn)
    expected = finetuning_run(reference, cfg, state, VOCABULARY, train_entries, val_entries, FINETUNING)
    what = "finetuning (2 epochs of 4 batches, evaluating every 3 steps)"
    hint = ("the batches come from your InstructionDataset through your custom_collate_fn (with pad_token_id, "
            "allowed_max_length and device given by functools.partial): check that -100 replaces the padding "
            "targets after the first end-of-text token only, and that allowed_max_length cuts every row.")
    expect_equal([int(t) for t in got[2]], expected[2], what=f"{what}: tokens seen", hint=hint)
    for position, name in ((0, "training losses"), (1, "validation losses")):
        values = torch.tensor([float(v) for v in got[position]], dtype=torch.float64)
        expect_close(values, torch.tensor(expected[position], dtype=torch.float64), atol=1e-4, rtol=1e-4,
                     what=f"{what}: {name}", hint=hint)
