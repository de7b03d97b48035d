"""Grader of chapter 6: finetuning for classification (spam or not spam).

The data tests send messages of the course's own sample (data/sms_spam_sample.tsv) to the worker, where a probe
builds the data frame (or writes the CSV file) and calls the student's function, with GPT-2's tokenizer
(tiktoken, offline) for SpamDataset; every row, token id and label is compared with the reference.

The model tests never use the student's chapter 4: the probes build chapter 4's GPTModel from the support code
(a tiny configuration), give it a 2-class head themselves and load the weights of a seeded reference model, so
that each function is graded on its own. Losses run on the grading device; whatever is compared exactly or step
by step (accuracies, the seeded training run with dropout, the classifier's answers) runs on the CPU, where a
fixed seed gives the reference's numbers.

Edge cases where the book's editions differ, left out of the graded contract (the notebook says so):
classify_review with max_length=None (the book's package fails on it, its notebook refuses it, the course
reads the whole message) or with max_length beyond the model's context (the notebook asserts, the package
builds an input the model cannot take, the course raises ValueError). What prepare_model_for_classification
returns is not graded (the book's code is inline and returns nothing); the model it changes in place is.
"""

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from checks.ch06_classification import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, expect_close, expect_equal, expect_true, probe
from course.grading.diagnosis import explain_errors
from course.grading.imports import plain_imports
from course.grading.inputs import randint, reference_module
from course.worker.runtime.records import ErrorKind

with plain_imports():
    import pandas as pd

    from reference import classification as ref
    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer


# The student's code that evaluating the model runs (@pytest.mark.runs), as the book writes it.
EVALUATE = ("evaluate_model", "calc_loss_loader", "calc_loss_batch")

DATA = Path(__file__).resolve().parents[1] / "data" / "sms_spam_sample.tsv"
PAD = 50256

# Tiny GPTs of the book's architecture: SMALL for losses, accuracies and training (token ids below 64), GPT2_VOCAB
# (GPT-2's 50,257 tokens, 4 dimensions) for classify_review, which reads real text through tiktoken. DROPOUT has
# dropout on, so that a function that forgets model.eval() (or model.train()) gives other numbers.
SMALL = {"vocab_size": 64, "context_length": 12, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
         "qkv_bias": False}
DROPOUT = dict(SMALL, drop_rate=0.5)
TRAINING = dict(SMALL, drop_rate=0.1)
GPT2_VOCAB = {"vocab_size": 50257, "context_length": 32, "emb_dim": 4, "n_heads": 2, "n_layers": 1,
              "drop_rate": 0.5, "qkv_bias": False}

HINT_LAST_TOKEN = ("read the prediction from the last token only: logits = model(input_batch)[:, -1, :], of shape "
                   "(batch, num_classes); because of the causal mask it is the only position that has seen the whole "
                   "message.")


def error_mentions(*phrases, hint):
    """A diagnosis: `hint` for an error raised in the student's code whose message contains one of `phrases`."""

    def diagnose(record):
        raised = record.kind is ErrorKind.RAISED
        return hint if raised and any(p in f"{record.type}: {record.message}" for p in phrases) else None

    return diagnose


def messages():
    """The course's 300 messages as the book reads its file: columns Label ("ham"/"spam") and Text."""
    return pd.read_csv(DATA, sep="\t", header=None, names=["Label", "Text"])


def frame_rows(df) -> dict:
    """A data frame as plain lists (what crosses to and from the worker)."""
    return {"index": [int(i) for i in df.index], "Label": [v.item() if hasattr(v, "item") else v
                                                          for v in df["Label"]], "Text": [str(t) for t in df["Text"]]}


def as_frame(rows: dict):
    return pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}, index=rows["index"])


def classifier(cfg, seed=123, num_classes=2):
    """The reference's classifier: a seeded GPTModel whose output head is a seeded nn.Linear(emb_dim, num_classes),
    with the chapter's freezing, in eval mode."""
    model = reference_module(GPTModel, seed, cfg=cfg)
    torch.manual_seed(seed + 1)
    return ref.prepare_model_for_classification(model, num_classes=num_classes).eval()


def token_batches(seed, rows, num_tokens, vocab_size=SMALL["vocab_size"], num_classes=2):
    """`rows` token id sequences and their class labels."""
    return randint(seed, vocab_size, rows, num_tokens), randint(seed + 1000, num_classes, rows)


def as_number(value, *, what):
    """A student's loss or accuracy as a float64 tensor of shape (): Python numbers and one-element tensors are
    accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        expect_true(False, what=what, problem=f"expected a number, got {type(value).__name__}.",
                    hint="return a Python float (e.g. total_loss / num_batches).")
    if isinstance(value, torch.Tensor):
        expect_true(value.numel() == 1, what=what, problem=f"expected one number, got a tensor of shape "
                    f"{tuple(value.shape)}.", hint="return a single number, e.g. loss.item().")
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


# -- probes: run in the worker against the student's module ---------------------------------------------------

@probe(returns=ListOf(length="cases"))
def balanced_frames(student, name, cases):
    """create_balanced_dataset on each data frame {"index", "Label", "Text"}; the result as plain lists."""
    import pandas as pd

    results = []
    for rows in cases:
        df = pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}, index=rows["index"])
        out = getattr(student, name)(df)
        results.append({"index": [int(i) for i in out.index], "Label": [str(v) for v in out["Label"]],
                        "Text": [str(t) for t in out["Text"]]})
    return results


@probe(returns=ListOf(ListOf(length=3), length="cases"))
def split_frames(student, name, cases):
    """random_split for each (rows, train_frac, validation_frac); each part as plain lists."""
    import pandas as pd

    results = []
    for rows, train_frac, validation_frac in cases:
        df = pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}, index=rows["index"])
        parts = getattr(student, name)(df, train_frac, validation_frac)
        results.append([{"index": [int(i) for i in part.index], "Label": [int(v) for v in part["Label"]],
                         "Text": [str(t) for t in part["Text"]]} for part in parts])
    return results


@probe(returns=ListOf(length="settings"))
def spam_datasets(student, name, rows, settings):
    """SpamDataset over a CSV file of `rows`, with GPT-2's tokenizer, for each settings dict (keyword arguments):
    {"max_length": the attribute, "length": len(dataset), "items": [(token ids, label), ...]}."""
    import pandas as pd
    import tiktoken

    pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}).to_csv("messages.csv", index=None)
    tokenizer = tiktoken.get_encoding("gpt2")
    results = []
    for kwargs in settings:
        dataset = getattr(student, name)("messages.csv", tokenizer, **kwargs)
        results.append({"max_length": getattr(dataset, "max_length", None), "length": len(dataset),
                        "items": [list(dataset[i]) for i in range(len(rows["Text"]))]})
    return results


@probe(returns=ListOf(length=4))
def prepared_model(student, name, cfg, state, num_classes, x):
    """The student's prepare_model_for_classification on a GPTModel (after torch.manual_seed(123), as the book
    seeds before the new head): [the head ({"type", "weight", "bias"}), {parameter: requires_grad}, the logits
    for x in eval mode, the parameters that received a gradient from the last token's logits]."""
    from reference.gpt import GPTModel

    model = GPTModel(cfg).to(DEVICE)
    model.load_state_dict(state)
    torch.manual_seed(123)
    returned = getattr(student, name)(model, num_classes=num_classes)
    if isinstance(returned, nn.Module):
        model = returned
    model = model.to(DEVICE).eval()
    head = model.out_head
    head_info = {"type": type(head).__name__, "weight": getattr(head, "weight", None),
                 "bias": getattr(head, "bias", None)}
    requires_grad = {name: bool(p.requires_grad) for name, p in model.named_parameters()}
    logits = model(x)
    with torch.no_grad():
        logits_value = logits.detach().clone()
    model.zero_grad(set_to_none=True)
    if logits.requires_grad:
        logits[:, -1, :].sum().backward()
    with_gradient = sorted(name for name, p in model.named_parameters() if p.grad is not None)
    return [head_info, requires_grad, logits_value, with_gradient]


@probe(returns=ListOf(ListOf(length=2), length="batches"))
def batch_losses(student, cfg, state, batches):
    """[loss, gradient of out_head.weight (or None)] of the student's calc_loss_batch for each (inputs, labels),
    on a classifier (GPTModel with a num_classes head) in eval mode."""
    from reference.gpt import GPTModel

    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    model = model.to(DEVICE).eval()
    results = []
    for inputs, labels in batches:
        model.zero_grad(set_to_none=True)
        loss = student.calc_loss_batch(inputs, labels, model, DEVICE)
        gradient = None
        if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            loss.sum().backward()
            gradient = model.out_head.weight.grad
        results.append([loss.detach() if isinstance(loss, torch.Tensor) else loss, gradient])
    return results


@probe(returns=ListOf(ListOf(length=2), length="cases"))
def loader_values(student, name, cfg, state, inputs, labels, cases, device):
    """The student's `name` (calc_loss_loader or calc_accuracy_loader) for each (rows, batch_size, num_batches):
    a loader over the first `rows` examples, a classifier put in TRAIN mode before each call (dropout on, so the
    function must switch it off). Returns [value, the model's training flag afterwards] per case."""
    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    device = DEVICE if device is None else device
    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    model = model.to(device)
    function = getattr(student, name)
    results = []
    for rows, batch_size, num_batches in cases:
        loader = DataLoader(TensorDataset(inputs[:rows], labels[:rows]), batch_size=batch_size, shuffle=False)
        model.train()
        torch.manual_seed(len(results))
        with torch.no_grad():
            if num_batches is None:
                value = function(loader, model, device)
            else:
                value = function(loader, model, device, num_batches=num_batches)
        results.append([value, model.training])
    return results


@probe(returns=ListOf(length=3))
def evaluate_twice(student, name, cfg, state, train_data, val_data, batch_size, eval_iter):
    """evaluate_model on a classifier with dropout in training mode, twice (after two different seeds): [first
    result, second result, the model's training flag after the first call]."""
    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    model = model.to(DEVICE)
    train_loader = DataLoader(TensorDataset(*train_data), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=batch_size, shuffle=False)
    results, training_after = [], None
    for seed in (1, 2):
        model.train()
        torch.manual_seed(seed)
        result = getattr(student, name)(model, train_loader, val_loader, DEVICE, eval_iter)
        results.append(list(result) if isinstance(result, tuple) else result)
        if training_after is None:
            training_after = model.training
    return [results[0], results[1], training_after]


@probe(returns=ListOf(length=3))
def training_run(student, name, cfg, state, train_data, val_data, settings, arguments):
    """The student's training loop `name` on the CPU from the given weights: a classifier whose last block, final
    norm and head are trainable (frozen by this probe as the book does), AdamW, torch.manual_seed(settings
    ["seed"]) just before the call, as student.<name>(model, train_loader, val_loader, optimizer, "cpu",
    **arguments). Returns [the loop's result, the final head weight, what it printed]. The grader runs this same
    function with the reference's loop for the expected values.

    The optimizer is AdamW written out here: the loops use only its zero_grad() and step(), and building one of
    torch.optim's optimizers imports torch's compiler stack (seconds, once per grading process)."""
    import contextlib
    import io
    import math

    from torch.utils.data import DataLoader, TensorDataset

    from reference.gpt import GPTModel

    class PlainAdamW:
        def __init__(self, params, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
            self.param_groups = [{"params": list(params), "lr": lr, "weight_decay": weight_decay, "betas": betas,
                                  "eps": eps}]
            self.state = {}

        def zero_grad(self, set_to_none=True):
            for param in self.param_groups[0]["params"]:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.detach_()
                    param.grad.zero_()

        @torch.no_grad()
        def step(self, closure=None):
            group = self.param_groups[0]
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state.setdefault(param, [0, torch.zeros_like(param), torch.zeros_like(param)])
                state[0] += 1
                param.mul_(1 - lr * group["weight_decay"])
                state[1].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                state[2].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                denominator = (state[2].sqrt() / math.sqrt(1 - beta2 ** state[0])).add_(group["eps"])
                param.addcdiv_(state[1], denominator, value=-lr / (1 - beta1 ** state[0]))

    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    for param in model.parameters():
        param.requires_grad = False
    for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
        for param in module.parameters():
            param.requires_grad = True
    train_loader = DataLoader(TensorDataset(*[t.cpu() for t in train_data]), batch_size=settings["batch_size"],
                              shuffle=False)
    val_loader = DataLoader(TensorDataset(*[t.cpu() for t in val_data]), batch_size=settings["batch_size"],
                            shuffle=False)
    optimizer = PlainAdamW(model.parameters(), lr=settings["lr"], weight_decay=0.1)
    torch.manual_seed(settings["seed"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = getattr(student, name)(model, train_loader, val_loader, optimizer, "cpu", **arguments)
    if isinstance(result, (list, tuple)):
        result = [list(part) if isinstance(part, tuple) else part for part in result]
    return [result, model.out_head.weight.detach(), printed.getvalue()[-2000:]]


@probe(returns=ListOf(ListOf(length=3), length="cases"))
def classified(student, name, cfg, state, cases):
    """classify_review on the CPU for each case {"text", "kwargs"}, with GPT-2's tokenizer and a classifier (in
    TRAIN mode before each call, dropout on) that records the token ids it is given: [the answer, the recorded
    input ids (or None), the model's training flag afterwards]."""
    import tiktoken

    from reference.gpt import GPTModel

    class RecordingClassifier(GPTModel):
        def forward(self, in_idx):
            self.seen.append(in_idx.detach().cpu().clone())
            return super().forward(in_idx)

    model = RecordingClassifier(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], state["out_head.weight"].shape[0])
    model.load_state_dict(state)
    tokenizer = tiktoken.get_encoding("gpt2")
    results = []
    for case in cases:
        model.seen = []
        model.train()
        torch.manual_seed(0)
        answer = getattr(student, name)(case["text"], model, tokenizer, "cpu", **case["kwargs"])
        results.append([answer, model.seen[-1] if model.seen else None, model.training])
    return results


# -- section 6.2: the data --------------------------------------------------------------------------------------

def small_frame():
    """20 messages (6 spam) with a shuffled, non-default index: the result must keep pandas' row labels."""
    df = messages().iloc[:20]
    df.index = [(7 * i + 3) % 20 + 100 for i in range(20)]
    return df


@pytest.mark.points(1)
@pytest.mark.runs("create_balanced_dataset")
def test_create_balanced_dataset(submission):
    """create_balanced_dataset: all the spam, as many ham rows drawn with random_state=123, ham first."""
    frames = [messages(), small_frame()]
    got = submission.run(balanced_frames, name="create_balanced_dataset", cases=[frame_rows(df) for df in frames])
    for index, df in enumerate(frames):
        expected = frame_rows(ref.create_balanced_dataset(df))
        rows = got[index]
        what = f"create_balanced_dataset on {len(df)} messages ({int((df['Label'] == 'spam').sum())} spam)"
        expect_true(isinstance(rows, dict), what=what, problem="no data frame came back.", hint=None)

        def diagnose(rows=rows, expected=expected):
            pairs = set(zip(rows["index"], rows["Label"]))
            if pairs == set(zip(expected["index"], expected["Label"])):
                return ("the right rows in the wrong order: put the ham sample first, then the spam "
                        "(pd.concat([ham_subset, spam_rows])), each in the order pandas gives.")
            if len(rows["index"]) == len(expected["index"]):
                return ("draw the ham rows with df[df['Label'] == 'ham'].sample(num_spam, random_state=123): the "
                        "seed makes the sample the same on every run (and the same as the book's).")
            return "keep every spam row and as many ham rows as there are spam rows."

        for column in ("index", "Label", "Text"):
            expect_equal(rows[column], expected[column], what=f"{what}: column {column!r} (the index in row "
                         "order)" if column == "index" else f"{what}: column {column!r}", hint=diagnose)


def labelled(df):
    """The frame with the labels mapped to class indices, as the book does before splitting."""
    df = df.copy()
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    return df


SPLITS = [(0.7, 0.1), (0.7, 0.1), (0.5, 0.3)]


@pytest.mark.points(1)
@pytest.mark.runs("random_split")
def test_random_split(submission):
    """random_split: a seeded shuffle (random_state=123) with a fresh index, cut at int(n * fraction)."""
    balanced = labelled(ref.create_balanced_dataset(messages()))
    odd = labelled(small_frame().iloc[:19])
    frames = [balanced, odd, odd]
    cases = [(frame_rows(df), train, val) for df, (train, val) in zip(frames, SPLITS)]
    got = submission.run(split_frames, name="random_split", cases=cases)
    for index, (df, (train_frac, validation_frac)) in enumerate(zip(frames, SPLITS)):
        expected = [frame_rows(part) for part in ref.random_split(df, train_frac, validation_frac)]
        what = f"random_split of {len(df)} rows with train_frac={train_frac}, validation_frac={validation_frac}"
        parts = got[index]

        def diagnose(parts=parts, expected=expected, df=df, train_frac=train_frac, validation_frac=validation_frac):
            sizes = [len(part["Text"]) for part in parts]
            shuffled = df.sample(frac=1, random_state=123)
            if [len(part["Text"]) for part in expected] != sizes:
                n = len(df)
                train_end = int(n * train_frac)
                if sizes[:2] == [train_end, int(n * (train_frac + validation_frac)) - train_end]:
                    return ("your validation part ends at int(n * (train_frac + validation_frac)): cut it at "
                            "train_end + int(n * validation_frac), as the book does.")
                return "the sizes are int(len(df) * train_frac) and int(len(df) * validation_frac); the rest is test."
            if [t for part in parts for t in part["Text"]] == [str(t) for t in shuffled["Text"]]:
                return "reset the index after shuffling: df.sample(frac=1, random_state=123).reset_index(drop=True)."
            return "shuffle the whole frame first with df.sample(frac=1, random_state=123), then cut it in order."

        for part_name, got_part, expected_part in zip(("train", "validation", "test"), parts, expected):
            for column in ("Text", "Label", "index"):
                expect_equal(got_part[column], expected_part[column], what=f"{what}: {part_name} part, column "
                             f"{column!r}" if column != "index" else f"{what}: {part_name} part, its index",
                             hint=diagnose)


# -- section 6.3: SpamDataset ------------------------------------------------------------------------------------

def dataset_rows():
    """12 messages of the sample, of 5 to 32 GPT-2 tokens, labels 0/1."""
    df = labelled(messages()).iloc[[0, 1, 4, 9, 16, 17, 34, 36, 40, 58, 61, 77]]
    return {"Label": [int(v) for v in df["Label"]], "Text": [str(t) for t in df["Text"]]}


def reference_dataset(rows, tmp_path, **kwargs):
    path = tmp_path / "messages.csv"
    pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}).to_csv(path, index=None)
    dataset = ref.SpamDataset(path, get_gpt2_tokenizer(), **kwargs)
    return {"max_length": dataset.max_length, "length": len(dataset),
            "items": [list(dataset[i]) for i in range(len(rows["Text"]))]}


def padding_mistake(rows, kwargs, got_items) -> str | None:
    """Name the padding or truncation mistake that gives exactly the student's token ids, if one does."""
    tokenizer = get_gpt2_tokenizer()
    encoded = [tokenizer.encode(text) for text in rows["Text"]]
    pad = kwargs.get("pad_token_id", PAD)
    longest = max(len(ids) for ids in encoded)
    length = kwargs.get("max_length") or longest
    candidates = [
        ("padding at the start", "pad at the end: encoded + [pad_token_id] * (max_length - len(encoded)).",
         [[pad] * (length - len(ids[:length])) + ids[:length] for ids in encoded]),
        ("keeping the last tokens of long messages", "truncate with encoded[:max_length], the first tokens.",
         [ids[-length:] + [pad] * (length - len(ids[-length:])) for ids in encoded]),
        ("padding to the longest message whatever max_length says", "with a max_length, truncate longer messages "
         "to it and pad shorter ones to it.", [ids + [pad] * (longest - len(ids)) for ids in encoded]),
        ("padding with 50256 whatever pad_token_id says", "pad with the pad_token_id argument.",
         [ids[:length] + [PAD] * (length - len(ids[:length])) for ids in encoded]),
        ("padding without truncating the longer messages", "with a max_length, keep the first max_length tokens "
         "of every message (encoded[:max_length]) before padding.",
         [ids + [pad] * (length - len(ids)) for ids in encoded]),
    ]
    for description, fix, candidate in candidates:
        if [item[0].tolist() if isinstance(item[0], torch.Tensor) else None for item in got_items] == candidate:
            if candidate != [ids[:length] + [pad] * (length - len(ids[:length])) for ids in encoded]:
                return f"your token ids are exactly what {description} gives: {fix}"
    return None


def expect_dataset(got, expected, rows, kwargs, *, what):
    expect_true(isinstance(got, dict), what=what, problem="no result came back.", hint=None)
    expect_equal(got["length"], expected["length"], what=f"{what}: len(dataset)",
                 hint="__len__ returns the number of messages, len(self.data).")
    items = got["items"]

    def diagnose():
        return padding_mistake(rows, kwargs, items) or (
            "tokenize each message with tokenizer.encode(text); with max_length=None use the longest message's "
            "length, else truncate to max_length; then pad every message at the end with pad_token_id.")

    for index, (got_item, expected_item) in enumerate(zip(items, expected["items"])):
        expect_true(len(got_item) == 2, what=f"{what}: dataset[{index}]", problem="expected a pair (token ids, "
                    "label).", hint="return torch.tensor(encoded, dtype=torch.long), torch.tensor(label, "
                                    "dtype=torch.long).")
        expect_equal(got_item[0], expected_item[0], what=f"{what}: dataset[{index}] token ids", hint=diagnose)
        expect_equal(got_item[1], expected_item[1], what=f"{what}: dataset[{index}] label",
                     hint="the label is the row's \"Label\" value as a 0-d tensor of dtype torch.long.")
    expect_equal(got["max_length"], expected["max_length"], what=f"{what}: the max_length attribute",
                 hint="keep the length every message was brought to in self.max_length (the book passes the "
                      "training set's to the validation and test sets).")


@pytest.mark.points(2)
@pytest.mark.runs("SpamDataset")
def test_spam_dataset(submission, tmp_path):
    """SpamDataset with max_length=None: every message padded with 50256 to the longest one; labels as tensors."""
    rows = dataset_rows()
    got = submission.run(spam_datasets, name="SpamDataset", rows=rows, settings=[{}])
    expect_dataset(got[0], reference_dataset(rows, tmp_path), rows, {},
                   what="SpamDataset(csv_file, tokenizer) on 12 messages")


@pytest.mark.points(1)
@pytest.mark.runs("SpamDataset")
def test_spam_dataset_max_length(submission, tmp_path):
    """SpamDataset with a max_length: longer messages truncated, shorter ones padded, with the given pad_token_id."""
    rows = dataset_rows()
    settings = [{"max_length": 10}, {"max_length": 40, "pad_token_id": 0}]
    got = submission.run(spam_datasets, name="SpamDataset", rows=rows, settings=settings)
    for index, kwargs in enumerate(settings):
        arguments = ", ".join(f"{key}={value}" for key, value in kwargs.items())
        expect_dataset(got[index], reference_dataset(rows, tmp_path, **kwargs), rows, kwargs,
                       what=f"SpamDataset(csv_file, tokenizer, {arguments})")


# -- section 6.5: the classification head and what is trained -------------------------------------------------

HEAD_CASES = [(2, 0), (3, 1)]  # (num_classes, seed of the pretrained weights)


def prepared(submission, num_classes, seed):
    base = reference_module(GPTModel, seed, cfg=SMALL)
    x = randint(40 + seed, SMALL["vocab_size"], 2, 7)
    got = submission.run(prepared_model, name="prepare_model_for_classification", cfg=SMALL,
                         state=base.state_dict(), num_classes=num_classes, x=x)
    torch.manual_seed(123)
    expected_model = ref.prepare_model_for_classification(base, num_classes=num_classes).eval()
    return got, expected_model, x


@pytest.mark.points(1)
@pytest.mark.runs("prepare_model_for_classification")
def test_classification_head(submission):
    """prepare_model_for_classification gives the model a new head, nn.Linear(emb_dim, num_classes) with a bias,
    drawn right after the book's seed; the model's other weights are kept."""
    for num_classes, seed in HEAD_CASES:
        (head, _, logits, _), model, x = prepared(submission, num_classes, seed)
        what = f"the new output head (num_classes={num_classes})"
        expect_true(head["type"] == "Linear", what=what, problem=f"model.out_head is a {head['type']}, not an "
                    "nn.Linear.", hint="model.out_head = nn.Linear(in_features=emb_dim, out_features=num_classes).")
        expect_true(head["bias"] is not None, what=what, problem="has no bias.",
                    hint="keep nn.Linear's default bias=True (GPT's vocabulary head had none; the new head has one).")
        weight_hint = ("create it with nn.Linear(in_features=emb_dim, out_features=num_classes), with emb_dim read "
                       "from the model (e.g. model.out_head.in_features), and make no other random draw before it: "
                       "the grader seeds torch.manual_seed(123) just before calling your function, as the book does.")
        expect_close(head["weight"], model.out_head.weight.detach(), what=f"{what}: weight", hint=weight_hint)
        expect_close(head["bias"], model.out_head.bias.detach(), what=f"{what}: bias", hint=weight_hint)
        with torch.no_grad():
            expected_logits = model(x)
        expect_close(logits, expected_logits, what=f"logits of the prepared model (num_classes={num_classes})",
                     hint="replace only model.out_head: keep the pretrained embeddings, blocks and final norm.")


def trainable_groups(requires_grad: dict) -> str:
    """'trf_blocks.1, final_norm, out_head' for the parameters that require grad (grouped by module)."""
    groups = []
    for name, flag in requires_grad.items():
        if flag:
            parts = name.split(".")
            group = ".".join(parts[:2]) if parts[0] == "trf_blocks" else parts[0]
            if group not in groups:
                groups.append(group)
    return ", ".join(groups) or "none"


@pytest.mark.points(2)
@pytest.mark.depends_on("test_classification_head")
@pytest.mark.runs("prepare_model_for_classification")
def test_freezing(submission):
    """Only the last transformer block, the final LayerNorm and the new head are trainable, and only they get
    gradients."""
    for num_classes, seed in HEAD_CASES:
        (_, requires_grad, _, with_gradient), model, _ = prepared(submission, num_classes, seed)
        expected = {name: bool(p.requires_grad) for name, p in model.named_parameters()}
        what = f"which parameters are trainable after prepare_model_for_classification (num_classes={num_classes})"
        expect_true(isinstance(requires_grad, dict), what=what, problem="nothing could be read.", hint=None)

        def diagnose(requires_grad=requires_grad):
            if all(requires_grad.values()):
                return ("every parameter is still trainable: first freeze them all (param.requires_grad = False for "
                        "model.parameters()), then unfreeze the last block and the final norm.")
            head = [flag for name, flag in requires_grad.items() if name.startswith("out_head.")]
            if head and not any(head):
                return ("the new head is frozen: replace the head AFTER freezing the model (a new nn.Linear is "
                        "trainable), or unfreeze it.")
            return ("freeze every parameter, replace the head, then set requires_grad = True for the parameters of "
                    "model.trf_blocks[-1] (the LAST block) and model.final_norm.")

        expect_true(sorted(requires_grad) == sorted(expected), what=what, problem="the model's parameter names "
                    "differ from the book's GPTModel with a new out_head.", hint="only replace model.out_head.")
        expect_true(requires_grad == expected, what=what, problem=f"the trainable ones are: "
                    f"{trainable_groups(requires_grad)}.", hint=diagnose)
        expected_with_gradient = sorted(name for name, flag in expected.items() if flag)
        expect_equal(with_gradient, expected_with_gradient, what=f"parameters that received a gradient "
                     f"(num_classes={num_classes})", hint="a frozen parameter (requires_grad False) gets no gradient; "
                                                           "the trainable ones must be used by the model's forward.")


# -- section 6.6: loss and accuracy from the last token ----------------------------------------------------------

def loader_cases():
    """10 sequences of 6 tokens; (rows, batch_size, num_batches): all 5 batches, the first 2, more than there are,
    a last partial batch."""
    inputs, labels = token_batches(3, 10, 6)
    return inputs, labels, [(10, 2, None), (10, 2, 2), (10, 2, 9), (7, 3, None)]


def reference_loader_value(function, model, inputs, labels, case):
    rows, batch_size, num_batches = case
    loader = DataLoader(TensorDataset(inputs[:rows], labels[:rows]), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        return function(loader, model.eval(), "cpu", num_batches), loader


def describe_case(case):
    rows, batch_size, num_batches = case
    batches = -(-rows // batch_size)
    return f"{rows} examples in {batches} batches of {batch_size}" + (
        "" if num_batches is None else f", num_batches={num_batches}")


def accuracy_with(model, loader, num_batches, mistake):
    """calc_accuracy_loader with a classic mistake."""
    used = len(loader) if num_batches is None else min(num_batches, len(loader))
    per_batch, correct, total = [], 0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            if i >= (len(loader) if mistake == "all batches" else used):
                break
            logits = model(x)
            logits = logits[:, 0, :] if mistake == "first token" else logits[:, -1, :]
            right = int((logits.argmax(dim=-1) == y).sum())
            per_batch.append(right / len(y))
            correct, total = correct + right, total + len(y)
    if mistake == "mean of batches":
        return sum(per_batch) / len(per_batch)
    if mistake == "count":
        return float(correct)
    return correct / total


ACCURACY_MISTAKES = [
    ("first token", "predicting from the first token", HINT_LAST_TOKEN),
    ("all batches", "using every batch whatever num_batches says",
     "stop after min(num_batches, len(data_loader)) batches."),
    ("mean of batches", "averaging the accuracies of the batches (a smaller last batch counts as much as a full one)",
     "count the correct predictions and the examples over all batches, and divide once at the end."),
    ("count", "the number of correct predictions", "divide by the number of examples seen."),
]


@pytest.mark.points(2)
@pytest.mark.runs("calc_accuracy_loader")
def test_calc_accuracy_loader(submission):
    """calc_accuracy_loader: the fraction of examples whose last-token argmax is the label, over all or the first
    num_batches batches, with dropout off."""
    model = classifier(DROPOUT, seed=5)
    inputs, labels, cases = loader_cases()
    got = submission.run(loader_values, name="calc_accuracy_loader", cfg=DROPOUT, state=model.state_dict(),
                         inputs=inputs, labels=labels, cases=cases, device="cpu")
    for index, case in enumerate(cases):
        expected, loader = reference_loader_value(ref.calc_accuracy_loader, model, inputs, labels, case)
        what = f"calc_accuracy_loader on {describe_case(case)}"
        value = as_number(got[index][0], what=what)
        training_after = got[index][1]

        def diagnose(value=value, loader=loader, num_batches=case[2], training_after=training_after):
            if training_after is True:
                return ("the model was in training mode (dropout on) and your function left it so: call "
                        "model.eval() first.")
            for mistake, description, fix in ACCURACY_MISTAKES:
                candidate = accuracy_with(model, loader, num_batches, mistake)
                if abs(float(value) - candidate) < 1e-6:
                    return f"your accuracy is exactly what {description} gives: {fix}"
            return ("for each batch, predicted = torch.argmax(model(input_batch)[:, -1, :], dim=-1); count how "
                    "many equal the labels; divide by the number of examples.")

        expect_close(value, torch.tensor(expected, dtype=torch.float64), what=what, atol=1e-6, rtol=0,
                     hint=diagnose)


def loss_with(model, inputs, labels, mistake=None):
    """The last-token cross-entropy of `model`, or what a classic mistake computes instead."""
    with torch.no_grad():
        logits = model(inputs)  # (b, n, num_classes)
    if mistake == "first token":
        return F.cross_entropy(logits[:, 0, :], labels)
    if mistake == "every token":
        return F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(logits.shape[1]))
    if mistake == "mean over tokens":
        return F.cross_entropy(logits.mean(dim=1), labels)
    if mistake == "softmax first":
        return F.cross_entropy(torch.softmax(logits[:, -1, :], dim=-1), labels)
    if mistake == "sum":
        return F.cross_entropy(logits[:, -1, :], labels, reduction="sum")
    return F.cross_entropy(logits[:, -1, :], labels)


LOSS_MISTAKES = [
    ("first token", "the logits of the first token", HINT_LAST_TOKEN),
    ("every token", "the loss over every position", HINT_LAST_TOKEN),
    ("mean over tokens", "logits averaged over the positions", HINT_LAST_TOKEN),
    ("softmax first", "a softmax before cross_entropy", "cross_entropy applies log-softmax itself: pass it the raw "
                                                         "logits."),
    ("sum", "summing the losses of the batch", "use cross_entropy's default reduction (the mean over the batch)."),
]


def name_loss_mistake(model, inputs, labels, got):
    for mistake, description, fix in LOSS_MISTAKES:
        candidate = loss_with(model, inputs, labels, mistake).double()
        if torch.allclose(got, candidate, atol=1e-4, rtol=1e-4):
            return f"your loss is exactly what {description} gives: {fix}"
    return None


@pytest.mark.points(2)
@pytest.mark.runs("calc_loss_batch")
def test_calc_loss_batch(submission):
    """calc_loss_batch: the cross-entropy of the last token's logits and the labels, with its gradients."""
    model = classifier(SMALL)
    batches = [token_batches(1, 3, 6), token_batches(2, 4, 9)]
    with explain_errors(error_mentions("Expected target size", "Expected input batch_size", hint=HINT_LAST_TOKEN)):
        got = submission.run(batch_losses, cfg=SMALL, state=model.state_dict(), batches=batches)
    for index, (inputs, labels) in enumerate(batches):
        what = f"loss of a batch of shape {tuple(inputs.shape)}"
        loss, gradient = got[index]
        expect_true(isinstance(loss, torch.Tensor), what=what, problem=f"expected a tensor, got "
                    f"{type(loss).__name__}.", hint="return the loss tensor itself (not loss.item()): training calls "
                                                    "loss.backward() on it.")
        expect_true(loss.numel() == 1, what=what, problem=f"expected a single number (the mean over the batch), got "
                    f"a tensor of shape {tuple(loss.shape)}.", hint=HINT_LAST_TOKEN)
        loss = loss.reshape(())
        loss64 = loss.double()

        def diagnose(got=loss64, inputs=inputs, labels=labels):
            return name_loss_mistake(model, inputs, labels, got) or HINT_LAST_TOKEN

        expect_close(loss, loss_with(model, inputs, labels), what=what, hint=diagnose)
        expect_true(gradient is not None, what=what, problem="the loss has no gradient: it is not connected to the "
                    "model's weights.", hint="return the tensor cross_entropy gives, without .item(), .detach() or "
                                             "torch.no_grad().")
        reference = classifier(SMALL)
        reference.zero_grad()
        ref.calc_loss_batch(inputs, labels, reference, "cpu").backward()
        expect_close(gradient, reference.out_head.weight.grad, what=f"{what}: gradient of out_head.weight",
                     atol=1e-5, rtol=1e-4, hint="compute the loss from model(input_batch) with cross_entropy.")


@pytest.mark.points(1)
@pytest.mark.depends_on("test_calc_loss_batch")
@pytest.mark.runs("calc_loss_loader", "calc_loss_batch")
def test_calc_loss_loader(submission):
    """calc_loss_loader: the average batch loss over all or the first num_batches batches (at most all); NaN for
    an empty loader."""
    model = classifier(SMALL)
    inputs, labels, cases = loader_cases()
    cases = [*cases, (0, 2, None)]
    with explain_errors(error_mentions("ZeroDivisionError", hint="an empty loader has no batches: return "
                                       "float('nan') before dividing, as the book does.")):
        got = submission.run(loader_values, name="calc_loss_loader", cfg=SMALL, state=model.state_dict(),
                             inputs=inputs, labels=labels, cases=cases, device=None)
    for index, case in enumerate(cases):
        expected, loader = reference_loader_value(ref.calc_loss_loader, model, inputs, labels, case)
        what = f"calc_loss_loader on {describe_case(case)}"
        value = as_number(got[index][0], what=what)

        def diagnose(value=value, loader=loader, num_batches=case[2]):
            if len(loader) == 0:
                return "an empty loader has no batches to average: return float('nan'), as the book does."
            losses = [ref.calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
            used = len(losses) if num_batches is None else min(num_batches, len(losses))
            for candidate, description, fix in (
                    (sum(losses[:used]) / (num_batches or len(losses)), "dividing by num_batches when the loader "
                     "has fewer batches", "use min(num_batches, len(data_loader)) batches, and divide by that."),
                    (sum(losses) / len(losses), "averaging over all batches whatever num_batches says",
                     "stop after the first num_batches batches."),
                    (sum(losses) / used, "adding up every batch's loss but dividing by num_batches",
                     "stop after the first num_batches batches."),
                    (sum(losses[:used]), "the sum of the batch losses", "divide the total by the number of batches.")):
                if abs(float(value) - candidate) < 1e-4 * max(1.0, abs(candidate)):
                    return f"your result is exactly what {description} gives: {fix}"
            return "add calc_loss_batch(...).item() over the batches and divide by the number of batches used."

        expect_close(value, torch.tensor(expected, dtype=torch.float64), what=what, atol=1e-5, rtol=1e-5,
                     hint=diagnose)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_calc_loss_loader")
@pytest.mark.runs(*EVALUATE)
def test_evaluate_model(submission):
    """evaluate_model: training and validation loss over eval_iter batches in eval mode; training mode restored."""
    model = classifier(DROPOUT, seed=7)
    train_data, val_data = token_batches(4, 8, 6), token_batches(5, 6, 6)
    batch_size, eval_iter = 2, 3
    first, second, training_after = submission.run(
        evaluate_twice, name="evaluate_model", cfg=DROPOUT, state=model.state_dict(), train_data=train_data,
        val_data=val_data, batch_size=batch_size, eval_iter=eval_iter)
    train_loader = DataLoader(TensorDataset(*train_data), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=batch_size, shuffle=False)
    expected = ref.evaluate_model(model, train_loader, val_loader, "cpu", eval_iter)
    what = f"evaluate_model with eval_iter={eval_iter}"
    expect_true(isinstance(first, list) and len(first) == 2, what=what, problem="expected a pair "
                "(train_loss, val_loss).", hint="return train_loss, val_loss.")
    values = [as_number(v, what=f"{what}: {name}") for v, name in zip(first, ("train_loss", "val_loss"))]
    again = [as_number(v, what=what) for v in second] if isinstance(second, list) and len(second) == 2 else None

    def diagnose():
        if again is not None and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(values, again)):
            return ("two calls gave different losses, so dropout was still on: call model.eval() before computing "
                    "the losses.")
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, reversed(expected))):
            return "your pair is the wrong way round: return train_loss, val_loss."
        with torch.no_grad():
            every_batch = [ref.calc_loss_loader(loader, model.eval(), "cpu") for loader in (train_loader, val_loader)]
        if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, every_batch)):
            return "you averaged over every batch: pass num_batches=eval_iter to calc_loss_loader."
        return "calc_loss_loader(..., num_batches=eval_iter) for each loader, under torch.no_grad(), in eval mode."

    for name, value, expected_value in zip(("training loss", "validation loss"), values, expected):
        expect_close(value, torch.tensor(expected_value, dtype=torch.float64), what=f"{what}: {name}", atol=1e-5,
                     rtol=1e-5, hint=diagnose)
    expect_true(training_after is True, what=what, problem="the model is left in eval mode after the evaluation.",
                hint="call model.train() before returning: training goes on after each evaluation, with dropout.")


# -- section 6.7: finetuning -------------------------------------------------------------------------------------

RUN = {"batch_size": 2, "lr": 1e-2, "seed": 123}
RUN_ARGUMENTS = {"num_epochs": 2, "eval_freq": 2, "eval_iter": 2}


def training_data():
    """3 training batches and 3 validation batches of 2 sequences of 7 tokens, with labels."""
    return token_batches(6, 6, 7), token_batches(7, 6, 7)


def mistaken_loop(mistake):
    """train_classifier_simple with one classic mistake, built from the reference's other functions."""

    def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq,
                                eval_iter):
        train_losses, val_losses, train_accs, val_accs = [], [], [], []
        examples_seen, global_step = 0, -1
        if mistake == "train once":
            model.train()
        for _epoch in range(num_epochs):
            if mistake != "train once":
                model.train()
            for x, y in train_loader:
                if mistake != "no zero_grad":
                    optimizer.zero_grad()
                ref.calc_loss_batch(x, y, model, device).backward()
                optimizer.step()
                examples_seen += x.numel() if mistake == "tokens counted" else x.shape[0]
                global_step += 1
                if (global_step + 1 if mistake == "steps from 1" else global_step) % eval_freq == 0:
                    train_loss, val_loss = ref.evaluate_model(model, train_loader, val_loader, device, eval_iter)
                    train_losses.append(train_loss)
                    val_losses.append(val_loss)
            batches = None if mistake == "accuracy on every batch" else eval_iter
            train_accs.append(ref.calc_accuracy_loader(train_loader, model, device, num_batches=batches))
            val_accs.append(ref.calc_accuracy_loader(val_loader, model, device, num_batches=batches))
        return train_losses, val_losses, train_accs, val_accs, examples_seen

    return train_classifier_simple


def reference_run(loop, state, train_data, val_data):
    """What training_run gives with `loop` as the student's train_classifier_simple (run here, on the CPU)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return training_run(SimpleNamespace(train_classifier_simple=loop), "train_classifier_simple", TRAINING,
                            state, train_data, val_data, RUN, RUN_ARGUMENTS)


TRAINING_MISTAKES = [
    ("no zero_grad", "training without optimizer.zero_grad()",
     "call optimizer.zero_grad() at every step: otherwise the gradients of all earlier steps add up."),
    ("train once", "calling model.train() once before the loop (calc_accuracy_loader leaves the model in eval "
                   "mode, so later epochs train without dropout)",
     "call model.train() at the start of every epoch."),
    ("steps from 1", "counting the steps from 1 (evaluating after steps 1, 3, ...)",
     "global_step starts at -1 and is increased after each step, so the first evaluation is after step 0."),
    ("tokens counted", "counting tokens instead of examples", "examples_seen += input_batch.shape[0]."),
    ("accuracy on every batch", "measuring the accuracies on every batch",
     "after each epoch, calc_accuracy_loader(..., num_batches=eval_iter) for each loader."),
]


def same_run(candidate, got) -> bool:
    """Whether the student's five results are those of `candidate` (a training_run result)."""
    expected = candidate[0]
    try:
        if int(got[4]) != expected[4]:
            return False
        for got_values, expected_values in zip(got[:4], expected[:4]):
            values = [float(v) for v in got_values]
            if len(values) != len(expected_values) or any(
                    abs(a - b) > 1e-4 * max(1.0, abs(b)) for a, b in zip(values, expected_values)):
                return False
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    return True


@pytest.mark.points(3)
@pytest.mark.depends_on("test_calc_loss_batch", "test_evaluate_model", "test_calc_accuracy_loader")
@pytest.mark.runs("train_classifier_simple", "calc_accuracy_loader", *EVALUATE)
def test_train_classifier_simple(submission):
    """train_classifier_simple: a short seeded run gives the reference's losses, accuracies, examples seen and head.

    2 epochs of 3 batches, evaluating every 2 steps on 2 batches, AdamW, dropout on, on the CPU.
    """
    state = classifier(TRAINING, seed=9).state_dict()
    train_data, val_data = training_data()
    got, final_head, _ = submission.run(training_run, name="train_classifier_simple", cfg=TRAINING, state=state,
                                        train_data=train_data, val_data=val_data, settings=RUN,
                                        arguments=RUN_ARGUMENTS)
    expected, expected_head, _ = reference_run(ref.train_classifier_simple, state, train_data, val_data)
    what = "train_classifier_simple (2 epochs of 3 batches, evaluating every 2 steps)"
    expect_true(isinstance(got, list) and len(got) == 5, what=what, problem="expected five results (train_losses, "
                "val_losses, train_accs, val_accs, examples_seen).",
                hint="return train_losses, val_losses, train_accs, val_accs, examples_seen.")

    def diagnose():
        for mistake, description, fix in TRAINING_MISTAKES:
            if same_run(reference_run(mistaken_loop(mistake), state, train_data, val_data), got):
                return f"your run is exactly what {description} gives: {fix}"
        return ("one optimizer step per batch (zero_grad, loss, backward, step) with the model in training mode, an "
                "evaluation after steps 0, eval_freq, 2 * eval_freq, ..., and the accuracies on eval_iter batches "
                "after every epoch.")

    examples_seen = got[4].item() if isinstance(got[4], torch.Tensor) else got[4]
    expect_equal(examples_seen, expected[4], what=f"{what}: examples_seen", hint=diagnose)
    for index, name in enumerate(("train_losses", "val_losses", "train_accs", "val_accs")):
        value = got[index]
        expect_true(isinstance(value, list), what=f"{what}: {name}", problem=f"expected a list, got "
                    f"{type(value).__name__}.", hint=None)
        numbers = torch.stack([as_number(v, what=f"{what}: {name}") for v in value]) if value else \
            torch.zeros(0, dtype=torch.float64)
        expect_close(numbers, torch.tensor(expected[index], dtype=torch.float64), what=f"{what}: {name}",
                     atol=1e-4, rtol=1e-4, hint=diagnose)
    expect_close(final_head, expected_head, what=f"{what}: out_head.weight after training", atol=1e-4, rtol=1e-4,
                 hint=diagnose)


# -- section 6.8: using the classifier ---------------------------------------------------------------------------

# The book's two examples, and messages of the course's sample (spam and ham).
REVIEW_TEXTS = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "URGENT! Your mobile was awarded a 2000 bonus caller prize. Call 09064 555 019 from a landline.",
    "Do you still have my umbrella?",
    "Get a loan of up to 5000 today, no credit checks! Reply YES for an instant decision.",
    "Kettle is on, come over whenever.",
]
REVIEW_SETTINGS = [{"max_length": 24}, {"max_length": 9}, {"max_length": 16, "pad_token_id": 0}]


def review_cases():
    return [{"text": text, "kwargs": kwargs} for kwargs in REVIEW_SETTINGS for text in REVIEW_TEXTS]


def describe_review(case):
    arguments = ", ".join(f"{key}={value}" for key, value in case["kwargs"].items())
    return f"classify_review({case['text'][:30]!r}..., {arguments})"


def review_input(text, max_length, pad_token_id=PAD, mistake=None):
    """The token ids the reference's classify_review gives the model, or what a classic mistake gives."""
    ids = get_gpt2_tokenizer().encode(text)
    if mistake == "no padding":
        return ids[:max_length]
    if mistake == "padding at the start":
        ids = ids[:max_length]
        return [pad_token_id] * (max_length - len(ids)) + ids
    if mistake == "last tokens kept":
        ids = ids[-max_length:]
        return ids + [pad_token_id] * (max_length - len(ids))
    if mistake == "padding with 50256":
        ids = ids[:max_length]
        return ids + [PAD] * (max_length - len(ids))
    ids = ids[:max_length]
    return ids + [pad_token_id] * (max_length - len(ids))


REVIEW_MISTAKES = [
    ("no padding", "no padding", "pad the message with pad_token_id up to max_length, as SpamDataset does: the "
                                 "classifier learned to read its answer after exactly that much padding."),
    ("padding at the start", "padding at the start", "pad at the end: input_ids + [pad_token_id] * (max_length - "
                                                     "len(input_ids))."),
    ("last tokens kept", "keeping the last tokens of a long message", "truncate with input_ids[:max_length]."),
    ("padding with 50256", "padding with 50256 whatever pad_token_id says", "pad with the pad_token_id argument."),
]


@pytest.mark.points(2)
@pytest.mark.runs("classify_review")
def test_classify_review(submission):
    """classify_review: the message truncated and padded to max_length like the training data, the last token's
    argmax, class 1 answered "spam" and class 0 "not spam", in eval mode."""
    torch.manual_seed(17)
    model = GPTModel(GPT2_VOCAB)
    model.out_head = nn.Linear(GPT2_VOCAB["emb_dim"], 2)
    with torch.no_grad():
        model.out_head.weight.mul_(40.0)  # large logits: the answers change with the input ids
    state = model.state_dict()
    model.eval()
    cases = review_cases()
    got = submission.run(classified, name="classify_review", cfg=GPT2_VOCAB, state=state, cases=cases)
    for index, case in enumerate(cases):
        what = describe_review(case)
        answer, seen, training_after = got[index]
        kwargs = case["kwargs"]
        expected_ids = torch.tensor([review_input(case["text"], **kwargs)])

        def diagnose(seen=seen, case=case, kwargs=kwargs):
            if isinstance(seen, torch.Tensor) and seen.dim() == 2:
                for mistake, description, fix in REVIEW_MISTAKES:
                    candidate = review_input(case["text"], **kwargs, mistake=mistake)
                    if seen[0].tolist() == candidate and candidate != review_input(case["text"], **kwargs):
                        return f"the input you gave the model is exactly what {description} gives: {fix}"
            return ("encode the text, keep the first max_length tokens, pad at the end with pad_token_id up to "
                    "max_length, and add a batch dimension: torch.tensor(input_ids).unsqueeze(0).")

        expect_true(seen is not None, what=what, problem="the model was never called.", hint=None)
        expect_equal(seen, expected_ids, what=f"{what}: the token ids given to the model", hint=diagnose)
        expect_true(training_after is False, what=what, problem="the model was in training mode (dropout on) and "
                    "your function left it so.", hint="call model.eval() first: a prediction must not be random.")
        with torch.no_grad():
            expected = "spam" if model(expected_ids)[:, -1, :].argmax(dim=-1).item() == 1 else "not spam"
        expect_equal(answer, expected, what=f"{what}: the answer",
                     hint='the class is the argmax of the last token\'s logits; class 1 is "spam", class 0 '
                          '"not spam".')
