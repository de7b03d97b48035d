"""Public checks of chapter 7 (finetuning to follow instructions), one per hidden grader test.

The worked examples are the notebook's own: the book's entries 50 and 999 in the Alpaca format, the book's
three-item batch [0, 1, 2, 3, 4], [5, 6], [7, 8, 9] and the tensors the book prints for it, the split of 1,100
entries into 935, 55 and 110, and the notebook's scoring examples. Where a model or a tokenizer is needed, the
checks use a character tokenizer (one token per ASCII character) and a tiny GPT, so they take milliseconds; the
hidden grader uses GPT-2's tokenizer, other entries and batches, and compares with a reference implementation.
"""

import contextlib
import io
from functools import partial

import torch

from checks import Checks, Class, Function, Interface, expect_close, expect_equal, expect_shape, require

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("format_input", "(entry)"),
    Function("split_data", "(data, train_frac=0.85, test_frac=0.1)"),
    Class("InstructionDataset", "(data, tokenizer)", example={"data": [], "tokenizer": None},
          attributes=("data", "encoded_texts"), methods={"__getitem__": "(index)", "__len__": "()"}),
    Function("custom_collate_draft_1", "(batch, pad_token_id=50256, device='cpu')"),
    Function("custom_collate_draft_2", "(batch, pad_token_id=50256, device='cpu')"),
    Function("custom_collate_fn", "(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, "
                                  "device='cpu')"),
    Function("extract_response", "(response_text, input_text)"),
    Function("generate_model_responses", "(model, data, tokenizer, device, max_new_tokens=256, context_size=None, "
                                         "eos_id=50256, json_key='model_response')"),
    Function("normalize_answer", "(text)"),
    Function("exact_match_score", "(prediction, ground_truth)"),
    Function("f1_score", "(prediction, ground_truth)"),
    Function("evaluate_responses", "(data, json_key='model_response')"),
)

CHECKS = Checks("ch07_instruction", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

# The book's entries 50 and 999, and their prompts as the book prints them.
BOOK_ENTRY_50 = {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
                 "output": "The correct spelling is 'Occasion.'"}
BOOK_ENTRY_999 = {"instruction": "What is an antonym of 'complicated'?", "input": "",
                  "output": "An antonym of 'complicated' is 'simple'."}
PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.")
PROMPT_50 = (PREAMBLE + "\n\n### Instruction:\nIdentify the correct spelling of the following word."
             "\n\n### Input:\nOcassion")
PROMPT_999 = PREAMBLE + "\n\n### Instruction:\nWhat is an antonym of 'complicated'?"
HEADER = "\n\n### Response:\n"

# The book's example batch and what it prints for it (padding 50256, ignored targets -100).
BATCH = ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])
P = 50256
BOOK_INPUTS = [[0, 1, 2, 3, 4], [5, 6, P, P, P], [7, 8, 9, P, P]]
BOOK_TARGETS_DRAFT_2 = [[1, 2, 3, 4, P], [6, P, P, P, P], [8, 9, P, P, P]]
BOOK_TARGETS = [[1, 2, 3, 4, P], [6, P, -100, -100, -100], [8, 9, P, -100, -100]]

HINT_COLLATE = ("pad every item with pad_token_id to 1 + the longest item's length; the inputs drop the last token, "
                "the targets the first.")


class CharTokenizer:
    """One token per ASCII character (ids 1 to 127); 0 is left free for padding."""

    def encode(self, text, allowed_special=None):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) if 0 < i < 128 else "?" for i in ids)


def tiny_gpt(seed=123):
    from reference.gpt import GPTModel

    torch.manual_seed(seed)
    cfg = {"vocab_size": 128, "context_length": 256, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0,
           "qkv_bias": False}
    return GPTModel(cfg).eval()


def as_lists(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def expect_pair(result, what):
    require(isinstance(result, (tuple, list)) and len(result) == 2, f"{what} does not return a pair "
                "(inputs, targets).", "return inputs_tensor, targets_tensor.")
    return result


# -- section 7.2 ------------------------------------------------------------------------------------------------

@CHECKS.register("test_format_input", subject="format_input",
                 description="format_input gives the book's prompts for entries 50 (with input) and 999 (without)")
def check_format_input(ns):
    format_input = ns["format_input"]
    hint = ("the preamble, then '\\n\\n### Instruction:\\n' and the instruction, then '\\n\\n### Input:\\n' and the "
            "input only when entry['input'] is not empty.")
    expect_equal(format_input(dict(BOOK_ENTRY_50)), PROMPT_50, "format_input(book entry 50)", hint)
    expect_equal(format_input(dict(BOOK_ENTRY_999)), PROMPT_999, "format_input(book entry 999, no input)", hint)


@CHECKS.register("test_split_data", subject="split_data",
                 description="split_data splits 1,100 entries into the book's 935, 55 and 110, by position")
def check_split_data(ns):
    data = list(range(1100))
    parts = ns["split_data"](data)
    require(isinstance(parts, (tuple, list)) and len(parts) == 3, "split_data does not return three parts.",
                "return the three parts in the order train, val, test.")
    train, val, test = parts
    expect_equal([len(train), len(val), len(test)], [935, 55, 110], "the lengths of train, val and test",
                 "int(len(data) * train_frac) for training, int(len(data) * test_frac) for testing, the rest for "
                 "validation; the order of the returned parts is train, val, test.")
    expect_equal(list(train[:3]) + list(test[:2]) + list(val[:2]), [0, 1, 2, 935, 936, 1045, 1046],
                 "the first entries of train, test and val", "train first, then test, then val: data[:935], "
                 "data[935:1045], data[1045:].")


@CHECKS.register("test_instruction_dataset", subject="InstructionDataset",
                 description="InstructionDataset encodes the prompt (your format_input's), the response header and the "
                             "answer of each entry",
                 error_hint="encode the text with tokenizer.encode (section 7.3).")
def check_instruction_dataset(ns):
    entries = [dict(BOOK_ENTRY_50), dict(BOOK_ENTRY_999)]
    tokenizer = CharTokenizer()
    dataset = ns["InstructionDataset"](entries, tokenizer)
    expect_equal(len(dataset), 2, "len(InstructionDataset(two entries, tokenizer))", "__len__ returns len(self.data).")
    for index, entry in enumerate(entries):
        # The prompt from your own format_input (whose own check is test_format_input): this check is the dataset's.
        expected = tokenizer.encode(ns["format_input"](dict(entry)) + HEADER + entry["output"])
        expect_equal(as_lists(dataset[index]), expected, f"dataset[{index}] (one token per character; the prompt "
                     "as your format_input writes it)",
                     "the token ids of the prompt (format_input), the response header and the answer, as one "
                     "text; __getitem__ returns the stored token ids of entry `index`.")


# -- section 7.3 ------------------------------------------------------------------------------------------------

@CHECKS.register("test_collate_draft_1", subject="custom_collate_draft_1",
                 description="custom_collate_draft_1 pads the book's batch as the book prints it")
def check_collate_draft_1(ns):
    got = ns["custom_collate_draft_1"]([list(item) for item in BATCH])
    expect_shape(got, (3, 5), "custom_collate_draft_1(batch)", HINT_COLLATE)
    expect_equal(got.tolist(), BOOK_INPUTS, "custom_collate_draft_1(batch)", HINT_COLLATE)


@CHECKS.register("test_collate_draft_2", subject="custom_collate_draft_2",
                 description="custom_collate_draft_2 gives the book's inputs and targets (shifted by one)")
def check_collate_draft_2(ns):
    inputs, targets = expect_pair(ns["custom_collate_draft_2"]([list(item) for item in BATCH]),
                                  "custom_collate_draft_2(batch)")
    expect_equal(as_lists(inputs), BOOK_INPUTS, "custom_collate_draft_2(batch): inputs", HINT_COLLATE)
    expect_equal(as_lists(targets), BOOK_TARGETS_DRAFT_2, "custom_collate_draft_2(batch): targets",
                 "the targets are the padded item without its first token: padded[1:].")


@CHECKS.register("test_collate_fn_targets", subject="custom_collate_fn",
                 description="custom_collate_fn replaces the padding targets after the first end-of-text by -100")
def check_collate_fn_targets(ns):
    inputs, targets = expect_pair(ns["custom_collate_fn"]([list(item) for item in BATCH]),
                                  "custom_collate_fn(batch)")
    expect_equal(as_lists(inputs), BOOK_INPUTS, "custom_collate_fn(batch): inputs", HINT_COLLATE)
    expect_equal(as_lists(targets), BOOK_TARGETS, "custom_collate_fn(batch): targets",
                 "keep the first end-of-text token of each row's targets (the model learns to stop) and set every "
                 "later padding token to ignore_index.")


@CHECKS.register("test_collate_fn_truncation", subject="custom_collate_fn",
                 description="custom_collate_fn cuts inputs and targets to allowed_max_length")
def check_collate_fn_truncation(ns):
    inputs, targets = expect_pair(ns["custom_collate_fn"]([list(item) for item in BATCH], allowed_max_length=3),
                                  "custom_collate_fn(batch, allowed_max_length=3)")
    expect_equal(as_lists(inputs), [row[:3] for row in BOOK_INPUTS], "custom_collate_fn(batch, "
                 "allowed_max_length=3): inputs", "cut both tensors to their first allowed_max_length tokens.")
    # The targets against your own targets without allowed_max_length, cut: their masking is test_collate_fn_targets'.
    full = expect_pair(ns["custom_collate_fn"]([list(item) for item in BATCH]), "custom_collate_fn(batch)")[1]
    expect_equal(as_lists(targets), [row[:3] for row in as_lists(full)], "custom_collate_fn(batch, "
                 "allowed_max_length=3): targets, compared with your targets without allowed_max_length, cut to 3",
                 "cut the targets after the -100 masking, like the inputs.")


@CHECKS.register("test_collate_fn_device", subject="custom_collate_fn",
                 description="custom_collate_fn returns int64 tensors on `device` and leaves the items alone")
def check_collate_fn_device(ns):
    # The meta device holds no values, only shapes: it shows where the tensors go without a GPU.
    items = [list(item) for item in BATCH]
    inputs, targets = expect_pair(ns["custom_collate_fn"](items, device="meta"), "custom_collate_fn(batch)")
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        require(isinstance(tensor, torch.Tensor) and tensor.dtype == torch.int64 and tensor.device.type == "meta",
                f"custom_collate_fn(batch, device='meta'): the {name} are not an int64 tensor on the meta device "
                f"(got {getattr(tensor, 'dtype', type(tensor).__name__)} on "
                f"{getattr(getattr(tensor, 'device', None), 'type', 'no device')}).",
                "build the rows from lists of ints (int64) and move the stacked tensors to `device` before "
                "returning them.")
    expect_equal([list(item) for item in items], [list(item) for item in BATCH], "the items after the call",
                 "pad a copy of each item (a list's .copy()): the items belong to the dataset.")


@CHECKS.register("test_extract_response", subject="extract_response",
                 description="extract_response keeps the answer without the prompt and the response header")
def check_extract_response(ns):
    generated = PROMPT_50 + HEADER + BOOK_ENTRY_50["output"] + "\n"
    expect_equal(ns["extract_response"](generated, PROMPT_50), BOOK_ENTRY_50["output"],
                 "extract_response(prompt + header + answer, prompt)",
                 "drop the first len(input_text) characters, remove '### Response:' and strip the whitespace.")


@CHECKS.register("test_generate_model_responses", subject="generate_model_responses",
                 description="generate_model_responses returns copies of the entries with an answer under json_key, "
                             "and stops at eos_id")
def check_generate_model_responses(ns):
    entries = [dict(BOOK_ENTRY_50), dict(BOOK_ENTRY_999)]
    got = ns["generate_model_responses"](tiny_gpt(), entries, CharTokenizer(), "cpu", max_new_tokens=3,
                                         eos_id=0, json_key="answer")
    what = "generate_model_responses(tiny GPT, two entries, max_new_tokens=3, json_key='answer')"
    require(isinstance(got, list) and len(got) == 2, f"{what} does not return a list of two entries.",
                "return one entry per entry of data.")
    for index, answer in enumerate(got):
        require(isinstance(answer, dict) and isinstance(answer.get("answer"), str),
                    f"{what}: entry {index} is not a dict with a text under 'answer'.",
                    "a copy of the entry with the extracted answer under json_key: {**entry, json_key: text}.")
        # (Whether the entries given are changed is not checked: the book writes the answers into them.)
        expect_equal({k: v for k, v in answer.items() if k != "answer"}, (BOOK_ENTRY_50, BOOK_ENTRY_999)[index],
                     f"{what}: entry {index} without its answer", "keep the entry's own keys and values.")
        require(len(answer["answer"]) <= 3, f"{what}: entry {index}'s answer {answer['answer']!r} is longer "
                    "than 3 new tokens (one character each).", "generate max_new_tokens tokens after the prompt and "
                    "cut the answer out with extract_response.")
    # eos_id: the first token the tiny GPT chooses after the first prompt, so that generation must stop at once.
    from reference.pretraining import generate

    model = tiny_gpt()
    with torch.no_grad():
        first = generate(model, torch.tensor([CharTokenizer().encode(PROMPT_50)]), max_new_tokens=1,
                         context_size=256)
    eos_id = int(first[0, -1])
    got = ns["generate_model_responses"](model, [dict(BOOK_ENTRY_50)], CharTokenizer(), "cpu", max_new_tokens=3,
                                         eos_id=eos_id)
    require(isinstance(got, list) and len(got) == 1 and isinstance(got[0], dict), f"generate_model_responses "
            f"(one entry, eos_id={eos_id}) does not return a list of one entry.", "")
    expect_equal(got[0].get("model_response"), "", f"generate_model_responses(one entry, eos_id={eos_id}, the "
                 "first token the model chooses): the answer", "pass eos_id on to generate, which stops as soon as "
                 "the model chooses that token: the answer is then empty.")


# -- section 7.8 ------------------------------------------------------------------------------------------------

@CHECKS.register("test_normalize_answer", subject="normalize_answer",
                 description="normalize_answer on the notebook's example")
def check_normalize_answer(ns):
    expect_equal(ns["normalize_answer"]("  The capital, of FRANCE; is paris!! "), "capital of france is paris",
                 "normalize_answer('  The capital, of FRANCE; is paris!! ')",
                 "lower case, drop string.punctuation, drop the words a/an/the, single spaces.")


@CHECKS.register("test_exact_match_score", subject="exact_match_score",
                 description="exact_match_score is 1.0 for answers equal after normalizing case and punctuation, else "
                             "0.0")
def check_exact_match_score(ns):
    score = ns["exact_match_score"]
    truth = "Capital of Canada: Ottawa."  # (no articles: this check does not depend on removing them)
    hint = "1.0 when the two answers are equal after normalize_answer, else 0.0 (a float)."
    expect_equal(score("capital of canada ottawa", truth), 1.0, "exact_match_score('capital of canada ottawa', "
                 f"{truth!r}) (lower case, no punctuation)", hint)
    expect_equal(score("Ottawa", truth), 0.0, f"exact_match_score('Ottawa', {truth!r})", hint)


@CHECKS.register("test_f1_score", subject="f1_score",
                 description="f1_score on the notebook's example (without articles) gives 0.75, and counts a "
                             "repeated word as often as both answers hold it")
def check_f1_score(ns):
    # The notebook's example without its articles (this check does not depend on removing them).
    got = ns["f1_score"]("Capital is Ottawa.", "Capital of Canada is Ottawa.")
    expect_close(torch.tensor(float(got)), 0.75, "f1_score('Capital is Ottawa.', 'Capital of Canada is Ottawa.')",
                 "3 shared words: precision 3/3, recall 3/5, F1 = 2 * p * r / (p + r).")
    got = ns["f1_score"]("x x y", "x y y")
    hint = ("count the words as bags (collections.Counter), not as sets: 'x' is shared once and 'y' once, so 2 "
            "shared words, precision 2/3 and recall 2/3.")
    if abs(float(got) - 1.0) < 1e-6:
        hint = "that is exactly what sets of words give: " + hint
    expect_close(torch.tensor(float(got)), 2 / 3, "f1_score('x x y', 'x y y')", hint)


@CHECKS.register("test_evaluate_responses", subject="evaluate_responses",
                 description="evaluate_responses gives the mean of your exact_match_score and f1_score in percent, "
                             "and the count")
def check_evaluate_responses(ns):
    data = [{"output": "The capital of Canada is Ottawa.", "model_response": "the capital of canada is ottawa"},
            {"output": "Red.", "model_response": "Blue."}]
    got = ns["evaluate_responses"]([dict(entry) for entry in data])
    require(isinstance(got, dict) and sorted(got) == ["count", "exact_match", "f1"],
            "evaluate_responses does not return a dict with the keys exact_match, f1 and count.", "")
    # With correct scores: 50.0, 50.0 and 2. Computed here with your own scores (they have their own checks).
    means = [100.0 * sum(float(ns[name](entry["model_response"], entry["output"])) for entry in data) / len(data)
             for name in ("exact_match_score", "f1_score")]
    expect_equal([round(float(got["exact_match"]), 6), round(float(got["f1"]), 6), got["count"]],
                 [round(means[0], 6), round(means[1], 6), 2],
                 "evaluate_responses(one right and one wrong answer), compared with your exact_match_score and "
                 "f1_score", "100 * the mean of the scores over the entries, and the number of entries.")


# -- section 7.6 ------------------------------------------------------------------------------------------------

@CHECKS.register("test_finetuning_run", subject="custom_collate_fn",
                 description="your dataset and collate function feed chapter 5's loss through a DataLoader")
def check_finetuning_run(ns):
    from torch.utils.data import DataLoader

    from reference.pretraining import calc_loss_batch

    dataset = ns["InstructionDataset"]([dict(BOOK_ENTRY_50), dict(BOOK_ENTRY_999)], CharTokenizer())
    collate = partial(ns["custom_collate_fn"], pad_token_id=0, allowed_max_length=100, device="cpu")
    inputs, targets = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate, shuffle=False)))
    expect_shape(inputs, (2, 100), "the inputs of a batch (allowed_max_length=100)",
                 "cut every row to allowed_max_length tokens.")
    expect_shape(targets, (2, 100), "the targets of a batch (allowed_max_length=100)", "")
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        loss = calc_loss_batch(inputs, targets, tiny_gpt(), "cpu")
    require(bool(torch.isfinite(loss)) and 3.0 < float(loss) < 7.0, f"the loss of an untrained GPT on that "
                f"batch is {float(loss):.3f}, far from ln(128) = 4.85.", "the targets are the inputs shifted by one.")
