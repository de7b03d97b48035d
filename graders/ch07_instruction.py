"""Grader of chapter 7: finetuning to follow instructions.

The text functions (format_input, split_data, extract_response, the answer scores) are called with the
course's own entries and compared exactly. The dataset runs with GPT-2's tokenizer in the worker; the collate
functions run on seeded batches of token ids, and custom_collate_fn once more on a meta-device (to see that it
moves the batch where `device` says, without a GPU). Generation and the short finetuning run use a tiny GPT
(the support code's GPTModel, loaded with the weights of a seeded reference model) whose vocabulary is GPT-2's
tokens of the course's data renumbered from 0, so a training step takes milliseconds; both run on the CPU,
where a fixed seed gives the reference's numbers, and the reference runs the same probe on the trusted side.

The dataset, generation and the scores run on correct stand-ins of the functions they call (format_input,
extract_response, normalize_answer, ...: probe_kit/finetuning_parts.py), so a bug costs the points of the function
it is in; the finetuning run alone runs the student's dataset and collate function together (PARTS_FIT).

Edge cases where the book and the course differ, and what is accepted:
- generate_model_responses is the course's name for the book's inline loop; whether it changes the entries it
  is given (the book writes the answers into test_data) is not graded, only what it returns.
- An end-of-text token inside an item (the book masks by value, so it would count as "the first") never occurs
  in the graded batches: masking by value or by position are both accepted.
- The exact match and F1 scores are the course's (SQuAD's), not the book's: the book scores with a judge model
  (Ollama), which the notebook offers as an option and nothing grades.
"""


import operator
from collections import Counter
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from checks.ch07_instruction import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import (
    ListOf,
    Mistake,
    error_mentions,
    expect_close,
    expect_count,
    expect_equal,
    expect_true,
    explain_errors,
    probe,
    which_mistake,
)
from course.grading.compare import with_mistakes
from course.grading.contracts import Fields
from course.grading.imports import plain_imports
from course.grading.probes import run_here
from graders.shared.finetuning import (
    compact_tokenizer,
    compact_vocabulary,
    course_data,
    expect_dataset,
    expect_losses,
    numbers_match,
    tiny_config,
    tiny_gpt,
)

with plain_imports():
    from reference import instruction as ref
    from reference.tiktoken_offline import get_gpt2_tokenizer


# The one test that runs the student's parts together: the finetuning run is about how the dataset and the collate
# function fit (through functools.partial and a DataLoader), so it names the part to fix first (depends_on).
PARTS_FIT = {"test_finetuning_run": "the run feeds the student's InstructionDataset through the student's "
                                    "custom_collate_fn and a DataLoader: it tests that the two fit together"}

DATA = course_data("instruction_data.json")
PAD = 50256
WITH_INPUT = [entry for entry in DATA if entry["input"]]
WITHOUT_INPUT = [entry for entry in DATA if not entry["input"]]
# Entries with and without an input, and two written for the grader (an input over two lines, braces).
ENTRIES = [WITH_INPUT[0], WITHOUT_INPUT[0], WITH_INPUT[5], WITHOUT_INPUT[7],
           {"instruction": "Sort these numbers in ascending order.", "input": "9, 2, 7\n4, 1",
            "output": "1, 2, 4, 7, 9."},
           {"instruction": "What does {x} mean in a Python f-string?", "input": "",
            "output": "It inserts the value of x."}]


def as_float(value, *, what, hint):
    """A student's score as a Python float (bools, ints and one-element tensors accepted: unlike as_number, a score
    may be True)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    expect_true(type(value) in (bool, int, float), what=what, problem=f"expected a number, got {type(value).__name__}.",
                hint=hint)
    return float(value)


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="inputs"))
def call_each(student, name, inputs, stand_ins=()):
    """The student's function `name` called with each list of positional arguments, with correct stand-ins for
    the parts named in `stand_ins` (probe_kit.finetuning_parts)."""
    from probe_kit.finetuning_parts import INSTRUCTION_PARTS, parts
    from probe_kit.parts import replaced

    function = getattr(student, name)
    with replaced(student, **parts(INSTRUCTION_PARTS, *stand_ins)):
        return [function(*arguments) for arguments in inputs]


@probe(returns=ListOf(length="cases"))
def split_lists(student, name, cases):
    """split_data(data, **kwargs) for each (data, kwargs), as lists."""
    results = []
    for data, kwargs in cases:
        parts = getattr(student, name)(data, **kwargs)
        results.append([list(part) for part in parts] if isinstance(parts, (tuple, list)) else parts)
    return results


@probe(returns=Fields("encoded_texts", "items", "length", "keeps_data"))
def instruction_dataset(student, class_name, entries):
    """InstructionDataset with GPT-2's tokenizer and a correct format_input: .encoded_texts, .items (dataset[i] as a
    list for each i), .length (len(dataset)) and .keeps_data (whether dataset.data is the entries given)."""
    import tiktoken
    from probe_kit.finetuning_parts import format_input
    from probe_kit.parts import replaced

    with replaced(student, format_input=format_input):
        dataset = getattr(student, class_name)(entries, tiktoken.get_encoding("gpt2"))
    items = [[int(token) for token in dataset[i]] for i in range(len(entries))]
    encoded = [[int(token) for token in text] for text in dataset.encoded_texts]
    return {"encoded_texts": encoded, "items": items, "length": len(dataset), "keeps_data": dataset.data == entries}


@probe(returns=ListOf(length="cases"))
def collate_batches(student, name, cases):
    """The student's collate function `name` on each (batch, kwargs); tuples become lists."""
    results = []
    for batch, kwargs in cases:
        result = getattr(student, name)([list(item) for item in batch], **kwargs)
        results.append(list(result) if isinstance(result, tuple) else result)
    return results


@probe(returns=Fields("placed", "items"))
def collate_on_device(student, name, batch, device):
    """custom_collate_fn with device=`device` (the meta device: no values, only where the tensors are): .placed,
    [device type, dtype] of each returned tensor, and .items, what the items look like afterwards."""
    items = [list(item) for item in batch]
    result = getattr(student, name)(items, device=device)
    placed = [[str(t.device.type), str(t.dtype)] if isinstance(t, torch.Tensor) else type(t).__name__
              for t in result]
    return {"placed": placed, "items": items}


@probe(returns=ListOf(length="cases"))
def model_responses(student, cfg, state, vocabulary, entries, cases):
    """generate_model_responses on the CPU with a tiny GPT whose token ids are GPT-2's `vocabulary` renumbered
    from 0, for each case of keyword arguments (context_size, eos_id, json_key), with correct stand-ins for
    format_input and extract_response."""
    from probe_kit.finetuning_parts import INSTRUCTION_PARTS, parts
    from probe_kit.parts import replaced
    from probe_kit.text import CompactTokenizer

    from reference.gpt import GPTModel

    model = GPTModel(cfg)
    model.load_state_dict(state)
    model.eval()
    tokenizer = CompactTokenizer(vocabulary)
    results = []
    for kwargs in cases:
        with replaced(student, **parts(INSTRUCTION_PARTS, "format_input", "extract_response")):
            answers = student.generate_model_responses(model, [dict(entry) for entry in entries], tokenizer, "cpu",
                                                       **kwargs)
        results.append([dict(answer) if isinstance(answer, dict) else answer for answer in answers])
    return results


@probe(returns=Fields("train_losses", "val_losses", "tokens_seen"))
def finetuning_run(student, cfg, state, vocabulary, train_entries, val_entries, settings):
    """A short, seeded finetuning run on the CPU: the student's InstructionDataset and custom_collate_fn (as the
    book wires them, with functools.partial and DataLoader), chapter 5's train_model_simple from the support code
    and an Adam optimizer: .train_losses, .val_losses and .tokens_seen. The grader runs this very function with the
    reference's dataset and collate function to get the expected numbers."""
    import contextlib
    import functools
    import io

    from probe_kit.finetuning_parts import format_input
    from probe_kit.optim import Adam
    from probe_kit.parts import replaced
    from probe_kit.text import CompactTokenizer
    from torch.utils.data import DataLoader

    from reference.gpt import GPTModel
    from reference.pretraining import train_model_simple

    tokenizer = CompactTokenizer(vocabulary)
    collate = functools.partial(student.custom_collate_fn, pad_token_id=len(vocabulary) - 1, device="cpu",
                                allowed_max_length=settings["allowed_max_length"])
    with replaced(student, format_input=format_input):  # the prompts are format_input's test, not this one's
        train_set, val_set = student.InstructionDataset(train_entries, tokenizer), student.InstructionDataset(
            val_entries, tokenizer)
    train_loader = DataLoader(train_set, batch_size=settings["batch_size"], collate_fn=collate, shuffle=True,
                              drop_last=True, num_workers=0)
    val_loader = DataLoader(val_set, batch_size=settings["batch_size"], collate_fn=collate, shuffle=False,
                            drop_last=False, num_workers=0)
    model = GPTModel(cfg)
    model.load_state_dict(state)
    optimizer = Adam(model.parameters(), lr=settings["lr"])
    torch.manual_seed(settings["seed"])  # the training loader shuffles with torch's global generator
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, val_losses, tokens_seen = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=settings["num_epochs"],
            eval_freq=settings["eval_freq"], eval_iter=settings["eval_iter"],
            start_context=settings["start_context"], tokenizer=tokenizer)
    return {"train_losses": list(train_losses), "val_losses": list(val_losses), "tokens_seen": list(tokens_seen)}


# -- section 7.2: the prompt format and the split ---------------------------------------------------------------

def format_hint(got, entry, expected):
    """The hint for a wrong prompt: an input section for an empty input, or the response header added too soon."""
    if not entry["input"] and got == expected + "\n\n### Input:\n":
        return "an entry whose input is empty gets no '### Input:' section at all."
    if isinstance(got, str) and "### Response" in got:
        return "the prompt ends after the instruction (or the input): the response header is added later."
    return ("the preamble, then '\\n\\n### Instruction:\\n' and the instruction, then, only if "
            "entry['input'] is not empty, '\\n\\n### Input:\\n' and the input.")


@pytest.mark.points(1)
@pytest.mark.runs("format_input")
def test_format_input(submission):
    """format_input: the Alpaca-style prompt, with the input section only when the entry has an input."""
    got = submission.run(call_each, name="format_input", inputs=[[entry] for entry in ENTRIES])
    for index, (entry, prompt) in enumerate(zip(ENTRIES, got)):
        expected = ref.format_input(entry)
        kind = "with an input" if entry["input"] else "without an input"
        expect_equal(prompt, expected, what=f"format_input of entry {index + 1} ({kind})",
                     hint=partial(format_hint, prompt, entry, expected))


def split_hint(got, train, val, test):
    """The hint for a wrong split: whether the validation and test parts are swapped."""
    if got == [train, test, val]:
        return ("your validation and test parts are swapped: return (train_data, val_data, test_data), where the "
                "test part comes right after the training part in the data.")
    return ("the training part has int(len(data) * train_frac) entries and the test part int(len(data) * test_frac); "
            "the test part follows the training part, and the validation part is what is left (section 7.2).")


@pytest.mark.points(1)
@pytest.mark.runs("split_data")
def test_split_data(submission):
    """split_data: the first 85% for training, the next 10% for testing, the rest for validation, in order."""
    cases = [(list(range(100)), {}), (list(range(1100)), {}), (list(range(23)), {}),
             (list(range(40)), {"train_frac": 0.5, "test_frac": 0.25})]
    got = submission.run(split_lists, name="split_data", cases=cases)
    for (data, kwargs), parts in zip(cases, got):
        expected = ref.split_data(data, **kwargs)
        what = f"split_data of {len(data)} entries" + (f" with {kwargs}" if kwargs else "")
        expect_true(isinstance(parts, list) and len(parts) == 3, what=what,
                    problem="expected three lists (train_data, val_data, test_data).", hint=None)
        for name, part, expected_part in zip(("train_data", "val_data", "test_data"), parts, expected):
            expect_equal(part, expected_part, what=f"{what}: {name}", hint=partial(split_hint, parts, *expected))


# -- section 7.3: the dataset --------------------------------------------------------------------------------

def training_text(entry, header=ref.RESPONSE_HEADER, answer=True):
    """The text InstructionDataset tokenizes for `entry`, or what it is with one classic mistake."""
    return ref.format_input(entry) + header + (entry["output"] if answer else "")


RESPONSE_MISTAKES = [
    Mistake("the answer without the response header",
            "append '\\n\\n### Response:\\n' and then the answer to the prompt.", header=""),
    Mistake("the response header without the two newlines before it",
            "the header is '\\n\\n### Response:\\n', with two newlines before '###'.", header="### Response:\n"),
    Mistake("the prompt alone, without the response",
            "each training text is the prompt, the response header and the answer.", header="", answer=False),
]


def dataset_hint(got, entry):
    """The hint for an entry's wrong token ids: the classic mistake whose text they are."""
    encode = get_gpt2_tokenizer().encode
    found = which_mistake(got, RESPONSE_MISTAKES, lambda **change: encode(training_text(entry, **change)),
                          matches=operator.eq)
    if found is not None:
        return f"your token ids are exactly those of {found.did}: {found.fix}"
    return ("the prompt (format_input), the response header '\\n\\n### Response:\\n' and the answer as one text, "
            "encoded with tokenizer.encode (section 7.3).")


@pytest.mark.points(2)
@pytest.mark.runs("InstructionDataset")
@pytest.mark.stand_ins("format_input")
def test_instruction_dataset(submission):
    """InstructionDataset: each entry as the token ids of prompt, response header and answer, tokenized once."""
    entries = ENTRIES[:4] + DATA[10:14]
    with explain_errors(error_mentions("disallowed special token", hint="encode the text with tokenizer.encode.")):
        got = submission.run(instruction_dataset, class_name="InstructionDataset", entries=entries)
    expect_dataset(got, ref.InstructionDataset(entries, get_gpt2_tokenizer()).encoded_texts,
                   problem="expected a list with one list of token ids per entry.",
                   hint="tokenize every entry in __init__ and keep the lists in self.encoded_texts.",
                   entry_hint=lambda index: dataset_hint(got.encoded_texts[index], entries[index]))
    expect_true(got.keeps_data is True, what="dataset.data", problem="is not the list of entries given.",
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
    Mistake("replacing EVERY padding target by ignore_index, the first end-of-text token included",
            "keep the first pad_token_id of each row of targets (the end-of-text token the model must learn to "
            "produce) and replace only the later ones: skip the first of the positions you found.",
            mistake="all padding"),
    Mistake("padding targets left as they are", "replace every padding target after the first by ignore_index, so "
            "that cross_entropy skips them.", mistake="no masking"),
    Mistake("replacing the padding of the inputs by ignore_index as well",
            "only the targets get ignore_index; the inputs keep pad_token_id (the model needs a token id at every "
            "position).", mistake="inputs masked too"),
    Mistake("targets equal to the inputs, not shifted", "targets = padded[1:], the inputs shifted by one.",
            mistake="not shifted"),
    Mistake("padding to the longest item without the extra end-of-text token",
            "every item gets one pad_token_id appended first, so the batch is padded to the longest item + 1 tokens "
            "(and the inputs drop the last one).", mistake="no extra token"),
]


def same_pair(got, mistaken):
    """A `matches` for (inputs, targets): the student's pair of tensors holds the mistake's token ids."""
    return (isinstance(got, list) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)
            and all(c.shape == g.shape and torch.equal(c, g.long()) for c, g in zip(mistaken, got)))


def describe_case(batch, kwargs):
    lengths = ", ".join(str(len(item)) for item in batch)
    settings = "".join(f", {key}={value}" for key, value in kwargs.items())
    return f"a batch of items of lengths {lengths}{settings}"


def expect_pair(result, *, what):
    expect_true(isinstance(result, list) and len(result) == 2, what=what,
                problem="expected a pair (inputs, targets).", hint="return inputs_tensor, targets_tensor.")


@pytest.mark.points(1)
@pytest.mark.runs("custom_collate_draft_1")
def test_collate_draft_1(submission):
    """custom_collate_draft_1: one end-of-text token per item, padded to one length, the last column dropped."""
    cases = [(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(1, 3)] + [(BOOK_BATCH, {"pad_token_id": 0})]
    got = submission.run(collate_batches, name="custom_collate_draft_1", cases=cases)
    for (batch, kwargs), inputs in zip(cases, got):
        expect_equal(inputs, ref.custom_collate_draft_1(batch, **kwargs), what=f"custom_collate_draft_1 on "
                     f"{describe_case(batch, kwargs)}",
                     hint="pad every item (after appending one pad_token_id) to the longest item + 1 tokens, "
                          "stack, and drop the last column: inputs = padded[:-1].")


@pytest.mark.points(1)
@pytest.mark.runs("custom_collate_draft_2")
def test_collate_draft_2(submission):
    """custom_collate_draft_2: the inputs, and the targets shifted one position to the left."""
    cases = [(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(2, 3)] + [(BOOK_BATCH, {"pad_token_id": 0})]
    got = submission.run(collate_batches, name="custom_collate_draft_2", cases=cases)
    for (batch, kwargs), result in zip(cases, got):
        what = f"custom_collate_draft_2 on {describe_case(batch, kwargs)}"
        expect_pair(result, what=what)
        for part, got_part, expected_part in zip(("inputs", "targets"), result,
                                                 ref.custom_collate_draft_2(batch, **kwargs)):
            expect_equal(got_part, expected_part, what=f"{what}: {part}",
                         hint="inputs = padded[:-1], targets = padded[1:] (the next token of each input token).")


@pytest.mark.points(3)
@pytest.mark.runs("custom_collate_fn")
def test_collate_fn_targets(submission):
    """custom_collate_fn: padded inputs, shifted targets, every padding target after the first set to -100."""
    cases = ([(BOOK_BATCH, {})] + [(batch, {}) for batch in random_batches(3, 4)]
             + [(BOOK_BATCH, {"pad_token_id": 0, "ignore_index": -1})])
    got = submission.run(collate_batches, name="custom_collate_fn", cases=cases)
    for (batch, kwargs), result in zip(cases, got):
        what = f"custom_collate_fn on {describe_case(batch, kwargs)}"
        expect_pair(result, what=what)
        hint = with_mistakes(result, COLLATE_MISTAKES, partial(collate_with, batch, **kwargs), matches=same_pair,
                           yours="your batch is",
                           hint="pad as in draft 2; then, in each row of targets, find the positions equal to "
                                     "pad_token_id and set all but the first to ignore_index.")
        for part, got_part, expected_part in zip(("inputs", "targets"), result, collate_with(batch, **kwargs)):
            expect_equal(got_part, expected_part, what=f"{what}: {part}", hint=hint)


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
    hint = ("after padding and masking, cut each row to its first allowed_max_length tokens: "
            "inputs[:allowed_max_length] and targets[:allowed_max_length] (a longer limit changes nothing).")
    for index, (batch, kwargs) in enumerate(cases):
        if not kwargs:
            continue
        what = f"custom_collate_fn on {describe_case(batch, kwargs)}"
        result, full = got[index], got[index - index % 4]  # the same batch without allowed_max_length
        expect_pair(result, what=what)
        expect_equal(result[0], collate_with(batch, **kwargs)[0], what=f"{what}: inputs", hint=hint)
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
    got = submission.run(collate_on_device, name="custom_collate_fn", batch=batch, device="meta")
    what = "custom_collate_fn(batch, device='meta')"
    expect_true(isinstance(got.placed, list) and len(got.placed) == 2, what=what,
                problem="expected a pair (inputs, targets) of tensors.", hint="return inputs_tensor, targets_tensor.")
    for part, placed in zip(("inputs", "targets"), got.placed):
        expect_equal(placed, ["meta", "torch.int64"], what=f"{what}: the device and dtype of the {part}",
                     hint="build the rows with torch.tensor(list of ints) (int64) and move the stacked tensors "
                          "with .to(device) before returning them.")
    expect_equal(got.items, batch, what=f"{what}: the items of the batch after the call",
                 hint="work on a copy of each item (a list's .copy()): the items belong to the dataset, and "
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


def extract_hint(got, response_text, input_text):
    """The hint for a wrong response: the header left in, or the whitespace."""
    rest = response_text[len(input_text):]
    if got == rest.replace("### Response:", ""):
        return "strip the whitespace around the answer: .strip()."
    if got == rest.strip():
        return "remove the '### Response:' header: .replace('### Response:', '')."
    return ("cut off the prompt (the first len(input_text) characters), then remove '### Response:' and strip the "
            "whitespace.")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_format_input")
@pytest.mark.runs("extract_response")
def test_extract_response(submission):
    """extract_response: the generated text without the prompt and the '### Response:' header, stripped."""
    cases = generated_texts()
    got = submission.run(call_each, name="extract_response", inputs=cases)
    for index, ((response_text, input_text), response) in enumerate(zip(cases, got)):
        expect_equal(response, ref.extract_response(response_text, input_text),
                     what=f"extract_response of generated text {index + 1}",
                     hint=partial(extract_hint, response, response_text, input_text))


# The tiny GPTs' vocabulary: GPT-2's tokens of the course's training texts (see the module's docstring).
VOCABULARY = compact_vocabulary(training_text(entry) for entry in DATA + ENTRIES)
TINY = tiny_config(VOCABULARY)


@pytest.mark.points(2)
@pytest.mark.runs("generate_model_responses")
@pytest.mark.stand_ins("format_input", "extract_response")
def test_generate_model_responses(submission):
    """generate_model_responses: greedy answers of a tiny GPT to each entry, stopped at eos_id, as new entries."""
    model = tiny_gpt(VOCABULARY, 7)
    entries = DATA[85:88]
    # eos_id: the third token the model generates for the first entry, so that stopping there matters.
    prompt = torch.tensor([compact_tokenizer(VOCABULARY).encode(ref.format_input(entries[0]))])
    with torch.no_grad():
        generated = ref.generate(model, prompt, max_new_tokens=3, context_size=40)
    eos_id = int(generated[0, -1])
    inputs = dict(cfg=TINY, state=model.state_dict(), vocabulary=VOCABULARY, entries=entries,
                  cases=[{"max_new_tokens": 6, "context_size": 40, "eos_id": eos_id},
                         {"max_new_tokens": 4, "eos_id": eos_id, "json_key": "answer"}])
    got = submission.run(model_responses, **inputs)
    expected = run_here(model_responses, SimpleNamespace(generate_model_responses=ref.generate_model_responses),
                        **inputs)
    for kwargs, answers, expected_answers in zip(inputs["cases"], got, expected):
        settings = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        what = f"generate_model_responses({settings})"
        expect_true(isinstance(answers, list) and len(answers) == len(entries), what=what,
                    problem="expected a list with one entry per entry given.", hint="return the list of entries.")
        for position, (answer, expected_answer) in enumerate(zip(answers, expected_answers)):
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
    for text, normalized in zip(NORMALIZE_TEXTS, got):
        expect_equal(normalized, ref.normalize_answer(text), what=f"normalize_answer({text!r})",
                     hint="in this order: text.lower(); drop every character of string.punctuation; replace the "
                          "whole words a, an, the by a space (re.sub(r'\\b(a|an|the)\\b', ' ', text)); then "
                          "' '.join(text.split()).")


@pytest.mark.points(1)
@pytest.mark.runs("exact_match_score")
@pytest.mark.stand_ins("normalize_answer")
def test_exact_match_score(submission):
    """exact_match_score: 1.0 when the normalized answers are equal, else 0.0."""
    got = submission.run(call_each, name="exact_match_score", inputs=[list(pair) for pair in ANSWER_PAIRS],
                         stand_ins=["normalize_answer"])
    hint = "compare normalize_answer(prediction) with normalize_answer(ground_truth); return float(...)."
    for (prediction, truth), score in zip(ANSWER_PAIRS, got):
        what = f"exact_match_score({prediction!r}, {truth!r})"
        value = as_float(score, what=what, hint=hint)
        expect_true(value == ref.exact_match_score(prediction, truth), what=what, problem=f"is {value}, which is "
                    "wrong.", hint=hint)


def f1_with(prediction, truth, bags=True, normalize=True):
    """The token F1 of two answers, or what it is with words counted as sets, or split without normalize_answer
    (classic mistakes)."""
    predicted, expected = [(ref.normalize_answer(text) if normalize else text).split() for text in (prediction, truth)]
    if not bags:
        predicted, expected = set(predicted), set(expected)
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values()) if bags else len(predicted & expected)
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


F1_MISTAKES = [
    Mistake("sets of words", "count the words as bags (collections.Counter, whose & keeps the smaller count of each "
            "word), so that a word shared twice counts twice.", gives="give", bags=False),
    Mistake("words split without normalize_answer", "normalize first.", gives="give", normalize=False),
]


@pytest.mark.points(2)
@pytest.mark.runs("f1_score")
@pytest.mark.stand_ins("normalize_answer")
def test_f1_score(submission):
    """f1_score: the harmonic mean of token precision and recall between the normalized answers."""
    got = submission.run(call_each, name="f1_score", inputs=[list(pair) for pair in ANSWER_PAIRS],
                         stand_ins=["normalize_answer"])
    values = [as_float(value, what=f"f1_score{pair}", hint="return a float between 0 and 1.")
              for value, pair in zip(got, ANSWER_PAIRS)]
    hint = with_mistakes(values, F1_MISTAKES, lambda **change: [f1_with(*pair, **change) for pair in ANSWER_PAIRS],
                       matches=numbers_match(1e-9), yours="your scores are",
                       hint="precision = shared words / predicted words, recall = shared words / reference "
                                 "words, F1 = 2 * precision * recall / (precision + recall); an empty answer scores "
                                 "1.0 only against an empty answer.")
    for value, (prediction, truth) in zip(values, ANSWER_PAIRS):
        expected = torch.tensor(ref.f1_score(prediction, truth), dtype=torch.float64)
        expect_close(torch.tensor(value, dtype=torch.float64), expected, atol=1e-9, rtol=1e-9,
                     what=f"f1_score({prediction!r}, {truth!r})", hint=hint)


@pytest.mark.points(1)
@pytest.mark.runs("evaluate_responses")
@pytest.mark.stand_ins("exact_match_score", "f1_score", "normalize_answer")
def test_evaluate_responses(submission):
    """evaluate_responses: mean exact match and F1 in percent over the entries, with their count."""
    answers = [{"instruction": entry["instruction"], "input": entry["input"], "output": truth,
                "model_response": prediction} for entry, (prediction, truth) in zip(DATA, ANSWER_PAIRS)]
    other_key = [{"instruction": "Name a primary color.", "input": "", "output": "Red.", "guess": guess}
                 for guess in ("red", "Blue.", "The red.")]
    inputs = [[answers], [answers[:4]], [other_key, "guess"], [[]]]
    got = submission.run(call_each, name="evaluate_responses", inputs=inputs,
                         stand_ins=["exact_match_score", "f1_score", "normalize_answer"])
    hint = ("100 * the mean of exact_match_score and of f1_score of entry[json_key] against entry['output'], "
            "and the number of entries; an empty list gives 0.0, 0.0 and 0.")
    for arguments, result in zip(inputs, got):
        expected = ref.evaluate_responses(*arguments)
        what = f"evaluate_responses of {len(arguments[0])} entries" + (f" with json_key={arguments[1]!r}"
                                                                         if len(arguments) > 1 else "")
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
@pytest.mark.runs("InstructionDataset", "custom_collate_fn")
@pytest.mark.stand_ins("format_input")
def test_finetuning_run(submission):
    """A short finetuning run through chapter 5's loop with your dataset and collate function: the reference's
    losses and tokens seen (2 epochs of 4 batches of a tiny GPT, on the CPU)."""
    inputs = dict(cfg=TINY, state=tiny_gpt(VOCABULARY, 5).state_dict(), vocabulary=VOCABULARY,
                  train_entries=DATA[:16], val_entries=DATA[90:96], settings=FINETUNING)
    got = submission.run(finetuning_run, **inputs)
    reference = SimpleNamespace(InstructionDataset=ref.InstructionDataset, custom_collate_fn=ref.custom_collate_fn)
    expected = run_here(finetuning_run, reference, **inputs)
    what = "finetuning (2 epochs of 4 batches, evaluating every 3 steps)"
    hint = ("the batches come from your InstructionDataset through your custom_collate_fn (with pad_token_id, "
            "allowed_max_length and device given by functools.partial): check that -100 replaces the padding "
            "targets after the first end-of-text token only, and that allowed_max_length cuts every row.")
    expect_equal([int(t) for t in got.tokens_seen], expected.tokens_seen, what=f"{what}: tokens seen", hint=hint)
    expect_losses(got.train_losses, expected.train_losses, what=f"{what}: training losses", hint=hint)
    expect_losses(got.val_losses, expected.val_losses, what=f"{what}: validation losses", hint=hint)
