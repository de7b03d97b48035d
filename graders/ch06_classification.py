"""Grader of chapter 6: finetuning for classification (spam or not spam).

The data tests send messages of the course's own sample (data/sms_spam_sample.tsv) to the worker, where a probe
builds the data frame (or writes the CSV file) and calls the student's function, with GPT-2's tokenizer
(tiktoken, offline) for SpamDataset; every row, token id and label is compared with the reference.

The model tests never use the student's chapter 4: the probes build chapter 4's GPTModel from the support code
(a tiny configuration), give it a 2-class head themselves and load the weights of a seeded reference model, so
that each function is graded on its own. Losses run on the grading device; whatever is compared exactly or step
by step (accuracies, the seeded training run with dropout, the classifier's answers) runs on the CPU, where a
fixed seed gives the reference's numbers.

A bug costs the points of its own function: the tests of calc_loss_loader, evaluate_model and
train_classifier_simple run the student's function on correct stand-ins of the parts it calls (calc_loss_batch,
calc_loss_loader, evaluate_model, calc_accuracy_loader: probe_kit.classifier_parts), put in the student's module
under those names while it runs. Besides the values, the graders probe: whether calc_loss_batch and
calc_accuracy_loader move their batches to the device (batches that note a .to(device), so a CPU grader sees what a
GPU would), dropout left on or switched off at the wrong moment (a model handed over in training mode to the
evaluating functions, in eval mode to the training loop), a training loop that returns tensors where the book's
returns Python numbers, an unseeded sample (numpy's global generator is seeded first, so the verdict is the same on
every run), an empty message and an input that fills the model's context exactly.

Edge cases where the book's editions differ, left out of the graded contract (the notebook says so):
classify_review with max_length=None (the book's package fails on it, its notebook refuses it, the course
reads the whole message) or with max_length beyond the model's context (the notebook asserts, the package
builds an input the model cannot take, the course raises ValueError). What prepare_model_for_classification
returns is not graded (the book's code is inline and returns nothing); the model it changes in place is.
"""

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checks.ch06_classification import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, as_number, expect_close, expect_equal, expect_true, explain_errors, probe
from course.grading.contracts import Fields, ListOf
from course.grading.diagnosis import error_mentions
from course.grading.imports import plain_imports
from course.grading.inputs import randint, reference_module
from course.grading.mistakes import Mistake, name_mistake
from course.grading.probes import run_here
from graders.shared.gpt_training import (
    NUM_BATCHES_IGNORED,
    STEPS_FROM_ONE,
    ZERO_GRAD_FORGOTTEN,
    check_calc_loss_batch,
    dividing_by_zero,
    expect_loader_loss,
    expect_returned,
    expect_trained,
    loader_values,
    reference_loader,
)

with plain_imports():
    import pandas as pd

    from reference import classification as ref
    from reference.gpt import GPTModel
    from reference.tiktoken_offline import get_gpt2_tokenizer


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

HINT_LAST_TOKEN = ("read the prediction from the last position only: of the model's output, shape (batch, num_tokens, "
                   "num_classes), keep the scores at index -1 of the token dimension, shape (batch, num_classes); "
                   "because of the causal mask it is the only position that has seen the whole message (section 6.6).")
# What as_number says to a loss or an accuracy of the wrong type.
NUMBER_TYPE_HINT = "return a Python float (e.g. total_loss / num_batches)."
# What the book's parts are called, and the stand-ins a composite's test runs on (probe_kit.classifier_parts).
LOSS_PARTS = ("calc_loss_batch",)
EVALUATION_PARTS = ("calc_loss_loader", "calc_loss_batch")
TRAINING_PARTS = ("calc_loss_batch", "calc_loss_loader", "evaluate_model", "calc_accuracy_loader")


def messages():
    """The course's 300 messages as the book reads its file: columns Label ("ham"/"spam") and Text."""
    return pd.read_csv(DATA, sep="\t", header=None, names=["Label", "Text"])


def frame_rows(df) -> dict:
    """A data frame as plain lists (what crosses to and from the worker)."""
    return {"index": [int(i) for i in df.index], "Label": [v.item() if hasattr(v, "item") else v
                                                          for v in df["Label"]], "Text": [str(t) for t in df["Text"]]}


def classifier(cfg, seed=123, num_classes=2):
    """The reference's classifier: a seeded GPTModel whose output head is a seeded nn.Linear(emb_dim, num_classes),
    with the chapter's freezing, in eval mode."""
    model = reference_module(GPTModel, seed, cfg=cfg)
    torch.manual_seed(seed + 1)
    return ref.prepare_model_for_classification(model, num_classes=num_classes).eval()


def token_batches(seed, rows, num_tokens, vocab_size=SMALL["vocab_size"], num_classes=2):
    """`rows` token id sequences and their class labels."""
    return randint(seed, vocab_size, rows, num_tokens), randint(seed + 1000, num_classes, rows)


# -- probes: run in the worker against the student's module (and those chapter 5 shares: gpt_training.py) ---------

@probe(returns=ListOf(length="cases"))
def balanced_frames(student, name, cases):
    """create_balanced_dataset on each data frame {"index", "Label", "Text"}; the result as plain lists. numpy's
    global generator is seeded before each call, so that a sample drawn without a seed is the same on every run."""
    import numpy as np
    import pandas as pd

    results = []
    for rows in cases:
        df = pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}, index=rows["index"])
        np.random.seed(0)
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


@probe(returns=ListOf(Fields("max_length", "length", "items"), length="settings"))
def spam_datasets(student, name, rows, settings):
    """SpamDataset over a CSV file of `rows`, with GPT-2's tokenizer, for each settings dict (keyword arguments):
    its .max_length attribute, its .length (len(dataset)) and its .items [(token ids, label), ...]."""
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


@probe(returns=Fields("head", "requires_grad", "logits", "with_gradient"))
def prepared_model(student, name, cfg, state, num_classes, x):
    """The student's prepare_model_for_classification on a GPTModel (after torch.manual_seed(123), as the book
    seeds before the new head): its .head ({"type", "weight", "bias"}), .requires_grad ({parameter: flag}), the
    .logits for x in eval mode, and the parameters that received a gradient from the last token's logits
    (.with_gradient)."""
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE)
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
    return {"head": head_info, "requires_grad": requires_grad, "logits": logits_value, "with_gradient": with_gradient}


@probe(returns=ListOf(Fields("answer", "seen", "training_after"), length="cases"))
def classified(student, name, cfg, state, cases):
    """classify_review on the CPU for each case {"text", "kwargs"}, with GPT-2's tokenizer and a classifier (in
    TRAIN mode before each call, dropout on) that records the token ids it is given: the .answer, the input ids
    it .seen last (or None), and the model's mode afterwards (.training_after)."""
    import tiktoken
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    class RecordingClassifier(GPTModel):
        def forward(self, in_idx):
            self.seen.append(in_idx.detach().cpu().clone())
            return super().forward(in_idx)

    model = loaded_gpt(RecordingClassifier, cfg, state)
    tokenizer = tiktoken.get_encoding("gpt2")
    results = []
    for case in cases:
        model.seen = []
        model.train()
        torch.manual_seed(0)
        answer = getattr(student, name)(case["text"], model, tokenizer, "cpu", **case["kwargs"])
        results.append({"answer": answer, "seen": model.seen[-1] if model.seen else None,
                        "training_after": model.training})
    return results


@probe(returns=ListOf(Fields("value", "training"), length="cases"))
def loader_values_on_stand_ins(student, name, parts, cfg, state, inputs, targets, cases, train=False):
    """loader_values (graders/shared/gpt_training.py) with the student's `parts` replaced by correct stand-ins
    (probe_kit.classifier_parts) while the student's `name` runs: .value and .training for each case."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.parts import replaced
    from probe_kit.training import loaded_gpt, loader_results

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE)
    with replaced(student, **stand_ins_for(*parts)):
        return loader_results(getattr(student, name), model, inputs, targets, cases, DEVICE, train)


@probe(returns=Fields("first", "second", "training_after"))
def evaluated_on_stand_ins(student, parts, cfg, state, train_data, val_data, batch_size, eval_iter):
    """The student's evaluate_model, its `parts` replaced by correct stand-ins, on a model in training mode,
    twice, after two different seeds: .first and .second results, and .training_after (the mode after the first)."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.parts import replaced
    from probe_kit.training import evaluated_twice, loaded_gpt, loader

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE)
    with replaced(student, **stand_ins_for(*parts)):
        return evaluated_twice(student.evaluate_model, model, loader(*train_data, batch_size),
                               loader(*val_data, batch_size), DEVICE, eval_iter)


@probe(returns=Fields("result", "weights"))
def classifier_training(student, parts, cfg, state, train_data, val_data, settings, arguments):
    """The student's train_classifier_simple, its `parts` replaced by correct stand-ins, on the CPU: a classifier
    (weights `state`) whose last block, final norm and head alone are trainable, handed over in EVAL mode (a loop
    must switch dropout on itself), AdamW (probe_kit's, weight decay 0.1), after torch.manual_seed(settings["seed"]).
    Returns .result (the loop's, tuples as lists) and .weights (the head's weight after training). The grader runs
    this very probe with the reference's loop (or one with a classic mistake) for the expected values."""
    from probe_kit.classifier_parts import stand_ins_for
    from probe_kit.parts import replaced
    from probe_kit.training import AdamW, loaded_gpt, loader, run_quietly

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state)
    model.requires_grad_(False)
    for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
        module.requires_grad_(True)
    model.eval()
    train_loader, val_loader = (loader(*[t.cpu() for t in data], settings["batch_size"])
                                for data in (train_data, val_data))
    optimizer = AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.1)
    with replaced(student, **stand_ins_for(*parts)):
        result, _ = run_quietly(student.train_classifier_simple, model, train_loader, val_loader, optimizer, "cpu",
                                seed=settings["seed"], **arguments)
    return {"result": result, "weights": model.out_head.weight.detach()}


@probe(returns=ListOf())
def batches_moved(student, name, cfg, state, inputs, labels):
    """Which batches the student's `name` moves to the device (.to(device)): calc_loss_batch given one batch, or
    calc_accuracy_loader given a loader of batches of 2. Returns the roles moved ("inputs", "labels"), sorted."""
    from probe_kit.classifier_parts import NotedLoader, noted
    from probe_kit.training import loaded_gpt

    from reference.gpt import GPTModel

    model = loaded_gpt(GPTModel, cfg, state).to(DEVICE).eval()
    function, moves = getattr(student, name), []
    if name == "calc_loss_batch":
        function(noted(inputs, "inputs", moves), noted(labels, "labels", moves), model, DEVICE)
    else:
        function(NotedLoader(inputs, labels, 2, moves), model, DEVICE)
    return sorted(set(moves))


# -- section 6.2: the data --------------------------------------------------------------------------------------

def small_frame():
    """20 messages (6 spam) with a shuffled, non-default index: the result must keep pandas' row labels."""
    df = messages().iloc[:20]
    df.index = [(7 * i + 3) % 20 + 100 for i in range(20)]
    return df


def unseeded_sample(df):
    """What a ham sample drawn without a seed gives in the probe (which seeds numpy's global generator with 0)."""
    import numpy as np

    spam = df[df["Label"] == "spam"]
    np.random.seed(0)
    return frame_rows(pd.concat([df[df["Label"] == "ham"].sample(len(spam)), spam]))


def balanced_hint(rows, expected, df):
    if set(zip(rows["index"], rows["Label"])) == set(zip(expected["index"], expected["Label"])):
        return ("the right rows in the wrong order: the ham sample comes first, then the spam rows, each in the "
                "order pandas gives (section 6.2).")
    if rows["index"] == unseeded_sample(df)["index"]:
        return ("your ham rows are exactly what a sample drawn without a seed gives: give the ham sample the book's "
                "random_state=123, so that it is the same on every run (and the same as the book's).")
    if len(rows["index"]) == len(expected["index"]):
        return ("the right number of rows, but not the book's ham rows: draw them from the ham rows only, with "
                ".sample and the book's random_state=123.")
    return "keep every spam row and as many ham rows as there are spam rows."


@pytest.mark.points(1)
@pytest.mark.runs("create_balanced_dataset")
def test_create_balanced_dataset(submission):
    """create_balanced_dataset: all the spam, as many ham rows drawn with random_state=123, ham first."""
    frames = [messages(), small_frame()]
    got = submission.run(balanced_frames, name="create_balanced_dataset", cases=[frame_rows(df) for df in frames])
    for rows, df in zip(got, frames):
        expected = frame_rows(ref.create_balanced_dataset(df))
        what = f"create_balanced_dataset on {len(df)} messages ({int((df['Label'] == 'spam').sum())} spam)"
        expect_true(isinstance(rows, dict), what=what, problem="no data frame came back.", hint=None)
        for column in ("index", "Label", "Text"):
            expect_equal(rows[column], expected[column], what=f"{what}: column {column!r} (the index in row "
                         "order)" if column == "index" else f"{what}: column {column!r}",
                         hint=partial(balanced_hint, rows, expected, df))


def labelled(df):
    """The frame with the labels mapped to class indices, as the book does before splitting."""
    df = df.copy()
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    return df


SPLITS = [(0.7, 0.1), (0.7, 0.1), (0.5, 0.3)]


def split_hint(parts, expected, df, train_frac, validation_frac):
    sizes = [len(part["Text"]) for part in parts]
    if [len(part["Text"]) for part in expected] != sizes:
        n = len(df)
        train_end = int(n * train_frac)
        if sizes[:2] == [train_end, int(n * (train_frac + validation_frac)) - train_end]:
            return ("your validation part ends at int(n * (train_frac + validation_frac)), which rounding can make "
                    "one row short or long: make it int(n * validation_frac) rows long, counted from where the "
                    "training part ends, as the book does.")
        return "the sizes are int(len(df) * train_frac) and int(len(df) * validation_frac); the rest is test."
    if [t for part in parts for t in part["Text"]] == [str(t) for t in df.sample(frac=1, random_state=123)["Text"]]:
        return ("the rows are shuffled right, but each part keeps the shuffled frame's old index: give the shuffled "
                "frame a fresh index 0, 1, 2, ... (pandas' reset_index, dropping the old one) before cutting it.")
    return ("shuffle the whole frame first (.sample of every row, frac=1, with the book's random_state=123), then cut "
            "it in order.")


@pytest.mark.points(1)
@pytest.mark.runs("random_split")
def test_random_split(submission):
    """random_split: a seeded shuffle (random_state=123) with a fresh index, cut at int(n * fraction)."""
    balanced = labelled(ref.create_balanced_dataset(messages()))
    odd = labelled(small_frame().iloc[:19])
    frames = [balanced, odd, odd]
    cases = [(frame_rows(df), train, val) for df, (train, val) in zip(frames, SPLITS)]
    got = submission.run(split_frames, name="random_split", cases=cases)
    for parts, df, (train_frac, validation_frac) in zip(got, frames, SPLITS):
        expected = [frame_rows(part) for part in ref.random_split(df, train_frac, validation_frac)]
        what = f"random_split of {len(df)} rows with train_frac={train_frac}, validation_frac={validation_frac}"
        hint = partial(split_hint, parts, expected, df, train_frac, validation_frac)
        for part_name, got_part, expected_part in zip(("train", "validation", "test"), parts, expected):
            for column in ("Text", "Label", "index"):
                expect_equal(got_part[column], expected_part[column], what=f"{what}: {part_name} part, column "
                             f"{column!r}" if column != "index" else f"{what}: {part_name} part, its index",
                             hint=hint)


# -- section 6.3: SpamDataset ------------------------------------------------------------------------------------

def dataset_rows():
    """12 messages of the sample, of 5 to 32 GPT-2 tokens, labels 0/1."""
    df = labelled(messages()).iloc[[0, 1, 4, 9, 16, 17, 34, 36, 40, 58, 61, 77]]
    return {"Label": [int(v) for v in df["Label"]], "Text": [str(t) for t in df["Text"]]}


def reference_dataset(rows, tmp_path, **kwargs):
    """What spam_datasets gives for the reference's SpamDataset (its CSV file written in `tmp_path`)."""
    path = tmp_path / "messages.csv"
    pd.DataFrame({"Label": rows["Label"], "Text": rows["Text"]}).to_csv(path, index=None)
    dataset = ref.SpamDataset(path, get_gpt2_tokenizer(), **kwargs)
    return SimpleNamespace(max_length=dataset.max_length, length=len(dataset),
                           items=[list(dataset[i]) for i in range(len(rows["Text"]))])


def padded(rows, kwargs, mistake=None):
    """The token ids of every message brought to one length as SpamDataset(**kwargs) does, or as a classic
    padding or truncation mistake does."""
    tokenizer = get_gpt2_tokenizer()
    encoded = [tokenizer.encode(text) for text in rows["Text"]]
    pad = kwargs.get("pad_token_id", PAD)
    longest = max(len(ids) for ids in encoded)
    length = kwargs.get("max_length") or longest
    if mistake == "at the start":
        return [[pad] * (length - len(ids[:length])) + ids[:length] for ids in encoded]
    if mistake == "last tokens":
        return [ids[-length:] + [pad] * (length - len(ids[-length:])) for ids in encoded]
    if mistake == "to the longest":
        return [ids + [pad] * (longest - len(ids)) for ids in encoded]
    if mistake == "with 50256":
        return [ids[:length] + [PAD] * (length - len(ids[:length])) for ids in encoded]
    if mistake == "not truncated":
        return [ids + [pad] * (length - len(ids)) for ids in encoded]
    if mistake == "no padding":
        return [ids[:length] for ids in encoded]
    return [ids[:length] + [pad] * (length - len(ids[:length])) for ids in encoded]


PADDING_MISTAKES = [
    Mistake("padding at the start", "pad at the end: the message's own ids first, then pad_token_id repeated up "
            "to max_length.", mistake="at the start"),
    Mistake("keeping the last tokens of long messages", "keep the first max_length tokens, not the last.",
            mistake="last tokens"),
    Mistake("padding to the longest message whatever max_length says", "with a max_length, truncate longer messages "
            "to it and pad shorter ones to it.", mistake="to the longest"),
    Mistake("padding with 50256 whatever pad_token_id says", "pad with the pad_token_id argument.",
            mistake="with 50256"),
    Mistake("padding without truncating the longer messages", "with a max_length, first cut every longer message to "
            "its first max_length tokens, then pad.", mistake="not truncated"),
]


def dataset_hint(rows, kwargs, items):
    correct = padded(rows, kwargs)

    def same_ids(got, mistaken):  # a mistake that changes nothing here is no explanation
        ids = [item[0].tolist() if isinstance(item[0], torch.Tensor) else None for item in got]
        return ids == mistaken and mistaken != correct

    return name_mistake(items, PADDING_MISTAKES, partial(padded, rows, kwargs), matches=same_ids,
                        yours="your token ids are") or (
        "tokenize each message with tokenizer.encode(text); with max_length=None use the longest message's "
        "length, else truncate to max_length; then pad every message at the end with pad_token_id.")


def expect_dataset(got, expected, rows, kwargs, *, what):
    expect_equal(got.length, expected.length, what=f"{what}: len(dataset)",
                 hint="__len__ returns the number of messages (rows of the CSV file).")
    for index, (got_item, expected_item) in enumerate(zip(got.items, expected.items)):
        expect_true(len(got_item) == 2, what=f"{what}: dataset[{index}]", problem="expected a pair (token ids, "
                    "label).", hint="__getitem__ returns two tensors of dtype torch.long: the token ids, "
                                    "shape (max_length,), and the label, shape ().")
        expect_equal(got_item[0], expected_item[0], what=f"{what}: dataset[{index}] token ids",
                     hint=partial(dataset_hint, rows, kwargs, got.items))
        expect_equal(got_item[1], expected_item[1], what=f"{what}: dataset[{index}] label",
                     hint="the label is the row's \"Label\" value as a 0-d tensor of dtype torch.long.")
    expect_equal(got.max_length, expected.max_length, what=f"{what}: the max_length attribute",
                 hint="keep the length every message was brought to in the attribute max_length (the book passes the "
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
    for dataset, kwargs in zip(got, settings):
        arguments = ", ".join(f"{key}={value}" for key, value in kwargs.items())
        expect_dataset(dataset, reference_dataset(rows, tmp_path, **kwargs), rows, kwargs,
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
        got, model, x = prepared(submission, num_classes, seed)
        head = got.head
        what = f"the new output head (num_classes={num_classes})"
        expect_true(head["type"] == "Linear", what=what, problem=f"model.out_head is a {head['type']}, not an "
                    "nn.Linear.", hint="the new head is an nn.Linear from emb_dim inputs to num_classes outputs, "
                                       "assigned to the model's out_head attribute (section 6.5).")
        expect_true(head["bias"] is not None, what=what, problem="has no bias.",
                    hint="keep nn.Linear's default bias=True (GPT's vocabulary head had none; the new head has one).")
        weight_hint = ("create it as an nn.Linear of emb_dim inputs and num_classes outputs, with emb_dim read from "
                       "the model (e.g. the old head's in_features), and make no other random draw before it: "
                       "the grader seeds torch.manual_seed(123) just before calling your function, as the book does.")
        expect_close(head["weight"], model.out_head.weight.detach(), what=f"{what}: weight", hint=weight_hint)
        expect_close(head["bias"], model.out_head.bias.detach(), what=f"{what}: bias", hint=weight_hint)
        with torch.no_grad():
            expected_logits = model(x)
        expect_close(got.logits, expected_logits, what=f"logits of the prepared model (num_classes={num_classes})",
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


def freezing_hint(requires_grad):
    if all(requires_grad.values()):
        return ("every parameter is still trainable: first freeze them all (requires_grad False on every "
                "parameter of the model), then unfreeze the last block and the final norm.")
    head = [flag for name, flag in requires_grad.items() if name.startswith("out_head.")]
    if head and not any(head):
        return ("the new head is frozen: replace the head AFTER freezing the model (a new nn.Linear is "
                "trainable), or unfreeze it.")
    return ("freeze every parameter, replace the head, then make the parameters of the LAST transformer block "
            "(the last entry of trf_blocks) and of final_norm trainable again.")


@pytest.mark.points(2)
@pytest.mark.depends_on("test_classification_head")
@pytest.mark.runs("prepare_model_for_classification")
def test_freezing(submission):
    """Only the last transformer block, the final LayerNorm and the new head are trainable, and only they get
    gradients."""
    for num_classes, seed in HEAD_CASES:
        got, model, _ = prepared(submission, num_classes, seed)
        requires_grad = got.requires_grad
        expected = {name: bool(p.requires_grad) for name, p in model.named_parameters()}
        what = f"which parameters are trainable after prepare_model_for_classification (num_classes={num_classes})"
        expect_true(isinstance(requires_grad, dict), what=what, problem="nothing could be read.", hint=None)
        expect_true(sorted(requires_grad) == sorted(expected), what=what, problem="the model's parameter names "
                    "differ from the book's GPTModel with a new out_head.", hint="only replace model.out_head.")
        expect_true(requires_grad == expected, what=what, problem=f"the trainable ones are: "
                    f"{trainable_groups(requires_grad)}.", hint=partial(freezing_hint, requires_grad))
        expected_with_gradient = sorted(name for name, flag in expected.items() if flag)
        expect_equal(got.with_gradient, expected_with_gradient, what=f"parameters that received a gradient "
                     f"(num_classes={num_classes})", hint="a frozen parameter (requires_grad False) gets no gradient; "
                                                           "the trainable ones must be used by the model's forward.")


# -- section 6.6: loss and accuracy from the last token ----------------------------------------------------------

def loader_cases():
    """10 sequences of 6 tokens; (rows, batch_size, num_batches): all 5 batches, the first 2, more than there are,
    a last partial batch."""
    inputs, labels = token_batches(3, 10, 6)
    return inputs, labels, [(10, 2, None), (10, 2, 2), (10, 2, 9), (7, 3, None)]


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
    Mistake("predicting from the first token", HINT_LAST_TOKEN, mistake="first token"),
    Mistake("using every batch whatever num_batches says", "stop after num_batches batches (or all of them when the "
            "loader has fewer).", mistake="all batches"),
    Mistake("averaging the accuracies of the batches (a smaller last batch counts as much as a full one)",
            "count the correct predictions and the examples over all batches, and divide once at the end.",
            mistake="mean of batches"),
    Mistake("the number of correct predictions", "divide by the number of examples seen.", mistake="count"),
]


def accuracy_hint(value, training_after, model, loader, num_batches):
    if training_after is True:
        return ("the model was in training mode (dropout on) and your function left it so: switch the model to "
                "evaluation mode (its eval method) before the first batch, as evaluate_model does.")
    return name_mistake(value, ACCURACY_MISTAKES, partial(accuracy_with, model, loader, num_batches),
                        matches=lambda got, mistaken: abs(float(got) - mistaken) < 1e-6, yours="your accuracy is") or (
        "for each batch, the predicted class is the argmax of the last position's scores; count how many equal the "
        "labels, over all the batches used, and divide by the number of examples.")


def expect_moved(submission, name, model, needed):
    """The student's `name` moves the `needed` batches ("inputs", "labels") to the device it is given: on a GPU, a
    batch left on the CPU cannot meet the model's weights. Seen on any machine (probe_kit.classifier_parts)."""
    inputs, labels = token_batches(11, 4, 5)
    moved = submission.run(batches_moved, name=name, cfg=SMALL, state=model.state_dict(), inputs=inputs,
                           labels=labels)
    left = [role for role in needed if role not in moved]
    expect_true(not left, what=f"{name}: the batches it moves to the device", problem=f"the {' and the '.join(left)} "
                "never went through .to(device): on a GPU they would stay on the CPU, away from the model.",
                hint="move each batch to the device argument (its .to method) before the model or the loss uses "
                     "it, as the book does in section 6.6.")


@pytest.mark.points(2)
@pytest.mark.runs("calc_accuracy_loader")
def test_calc_accuracy_loader(submission):
    """calc_accuracy_loader: the fraction of examples whose last-token argmax is the label, over all or the first
    num_batches batches, with dropout off."""
    model = classifier(DROPOUT, seed=5)
    inputs, labels, cases = loader_cases()
    got = submission.run(loader_values, name="calc_accuracy_loader", cfg=DROPOUT, state=model.state_dict(),
                         inputs=inputs, targets=labels, cases=cases, device="cpu", train=True)
    for result, (rows, batch_size, num_batches) in zip(got, cases):
        loader = reference_loader((inputs[:rows], labels[:rows]), batch_size)
        with torch.no_grad():
            expected = ref.calc_accuracy_loader(loader, model, "cpu", num_batches)
        what = f"calc_accuracy_loader on {describe_case((rows, batch_size, num_batches))}"
        value = as_number(result.value, what=what, type_hint=NUMBER_TYPE_HINT)
        expect_close(value, torch.tensor(expected, dtype=torch.float64), what=what, atol=1e-6, rtol=0,
                     hint=partial(accuracy_hint, value, result.training, model, loader, num_batches))
    expect_moved(submission, "calc_accuracy_loader", model, ("inputs",))


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
    Mistake("the logits of the first token", HINT_LAST_TOKEN, mistake="first token"),
    Mistake("the loss over every position", HINT_LAST_TOKEN, mistake="every token"),
    Mistake("logits averaged over the positions", HINT_LAST_TOKEN, mistake="mean over tokens"),
    Mistake("a softmax before cross_entropy", "cross_entropy applies log-softmax itself: pass it the raw logits.",
            mistake="softmax first"),
    Mistake("summing the losses of the batch", "use cross_entropy's default reduction (the mean over the batch).",
            mistake="sum"),
]


@pytest.mark.points(2)
@pytest.mark.runs("calc_loss_batch")
def test_calc_loss_batch(submission):
    """calc_loss_batch: the cross-entropy of the last token's logits and the labels, with its gradients."""
    check_calc_loss_batch(submission, ref, partial(classifier, SMALL), SMALL, [token_batches(1, 3, 6),
                                                                            token_batches(2, 4, 9)],
                          gradients_of=("out_head.weight",), loss_with=loss_with, mistakes=LOSS_MISTAKES,
                          hint=HINT_LAST_TOKEN, mean_over="the batch",
                          gradient_hint="compute the loss from the model's output for the input batch with "
                                        "cross_entropy.")
    expect_moved(submission, "calc_loss_batch", classifier(SMALL), ("inputs", "labels"))


LOADER_MISTAKES = [
    Mistake("dividing by num_batches when the loader has fewer batches",
            "use min(num_batches, len(data_loader)) batches, and divide by that.", mistake="not capped"),
    NUM_BATCHES_IGNORED,
    Mistake("adding up every batch's loss but dividing by num_batches", "stop after the first num_batches batches.",
            mistake="all added"),
    Mistake("the sum of the batch losses", "divide the total by the number of batches.", mistake="sum"),
]


@pytest.mark.points(1)
@pytest.mark.runs("calc_loss_loader")
@pytest.mark.stand_ins(*LOSS_PARTS)
def test_calc_loss_loader(submission):
    """calc_loss_loader: the average batch loss over all or the first num_batches batches (at most all); NaN for
    an empty loader. It runs on a correct calc_loss_batch."""
    model = classifier(SMALL)
    inputs, labels, cases = loader_cases()
    cases = [*cases, (0, 2, None)]
    with explain_errors(dividing_by_zero):
        got = submission.run(loader_values_on_stand_ins, name="calc_loss_loader", parts=LOSS_PARTS, cfg=SMALL,
                             state=model.state_dict(), inputs=inputs, targets=labels, cases=cases, train=True)
    for result, (rows, batch_size, num_batches) in zip(got, cases):
        what = f"calc_loss_loader on {describe_case((rows, batch_size, num_batches))}"
        expect_loader_loss(as_number(result.value, what=what, type_hint=NUMBER_TYPE_HINT), ref, model,
                           reference_loader((inputs[:rows], labels[:rows]), batch_size), num_batches, what=what,
                           mistakes=LOADER_MISTAKES)


def evaluation_hint(values, again, expected, model, loaders, eval_iter):
    """Why evaluate_model's losses (`values`, and `again` after another seed) differ from the `expected` ones."""
    if again is not None and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(values, again)):
        return ("two calls gave different losses, so dropout was still on: switch the model to evaluation mode (its "
                "eval method) before computing the losses (section 5.2, as chapter 5's evaluate_model).")
    if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, reversed(expected))):
        return "your pair is the wrong way round: the training loss comes first, then the validation loss."
    with torch.no_grad():
        every_batch = [ref.calc_loss_loader(loader, model.eval(), "cpu") for loader in loaders]
    if all(abs(float(v) - e) < 1e-5 for v, e in zip(values, every_batch)):
        return "you averaged over every batch: give calc_loss_loader num_batches=eval_iter."
    return (f"each loss is calc_loss_loader over the first eval_iter={eval_iter} batches of its loader, computed in "
            "evaluation mode without gradients.")


@pytest.mark.points(1)
@pytest.mark.runs("evaluate_model")
@pytest.mark.stand_ins(*EVALUATION_PARTS)
def test_evaluate_model(submission):
    """evaluate_model: training and validation loss over eval_iter batches in eval mode; training mode restored. It
    runs on a correct calc_loss_loader and calc_loss_batch."""
    model, eval_iter, batch_size = classifier(DROPOUT, seed=7), 3, 2
    data = token_batches(4, 8, 6), token_batches(5, 6, 6)
    got = submission.run(evaluated_on_stand_ins, parts=EVALUATION_PARTS, cfg=DROPOUT, state=model.state_dict(),
                         train_data=data[0], val_data=data[1], batch_size=batch_size, eval_iter=eval_iter)
    loaders = [reference_loader(part, batch_size) for part in data]
    expected = ref.evaluate_model(model, *loaders, "cpu", eval_iter)
    what = f"evaluate_model with eval_iter={eval_iter}"
    expect_true(isinstance(got.first, list) and len(got.first) == 2, what=what, problem="expected a pair "
                "(train_loss, val_loss).", hint="return the two losses, the training loss first.")
    values = [as_number(v, what=f"{what}: {name}", type_hint=NUMBER_TYPE_HINT)
              for v, name in zip(got.first, ("train_loss", "val_loss"))]
    again = [as_number(v, what=what, type_hint=NUMBER_TYPE_HINT) for v in got.second] \
        if isinstance(got.second, list) and len(got.second) == 2 else None
    hint = partial(evaluation_hint, values, again, expected, model, loaders, eval_iter)
    for name, value, expected_value in zip(("training loss", "validation loss"), values, expected):
        expect_close(value, torch.tensor(expected_value, dtype=torch.float64), what=f"{what}: {name}", atol=1e-5,
                     rtol=1e-5, hint=hint)
    expect_true(got.training_after is True, what=what, problem="the model is left in eval mode after the "
                "evaluation.", hint="switch the model back to training mode (its train method) before returning: "
                                    "training goes on after each evaluation, with dropout.")


# -- section 6.7: finetuning -------------------------------------------------------------------------------------

RUN = {"batch_size": 2, "lr": 1e-2, "seed": 123}
RUN_ARGUMENTS = {"num_epochs": 2, "eval_freq": 2, "eval_iter": 2}
RETURNED = ("train_losses", "val_losses", "train_accs", "val_accs", "examples_seen")


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
            if mistake not in ("train once", "never train"):
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


def run_with(loop, state, train_data, val_data, mistake=None):
    """What the probe classifier_training gives with `loop` (or, with a `mistake`, mistaken_loop's) as
    train_classifier_simple, run here on the CPU."""
    loop = loop if mistake is None else mistaken_loop(mistake)
    get_gpt2_tokenizer()  # tiktoken works offline from now on
    return run_here(classifier_training, SimpleNamespace(train_classifier_simple=loop), parts=TRAINING_PARTS,
                    cfg=TRAINING, state=state, train_data=train_data, val_data=val_data, settings=RUN,
                    arguments=RUN_ARGUMENTS)


TRAIN_MODE_EVERY_EPOCH = ("switch the model to training mode (its train method) at the start of every epoch: the "
                          "caller may hand it over in evaluation mode, and calc_accuracy_loader leaves it so after "
                          "each epoch.")
TRAINING_MISTAKES = [
    ZERO_GRAD_FORGOTTEN,
    Mistake("never switching the model to training mode (the grader hands it over in evaluation mode: the first "
            "steps train without dropout)", TRAIN_MODE_EVERY_EPOCH, mistake="never train"),
    Mistake("switching to training mode once, before the loop (calc_accuracy_loader leaves the model in eval mode, "
            "so later epochs train without dropout)", TRAIN_MODE_EVERY_EPOCH, mistake="train once"),
    STEPS_FROM_ONE,
    Mistake("counting tokens instead of examples", "add the batch's number of examples (its first dimension), not "
            "its number of tokens.", mistake="tokens counted"),
    Mistake("measuring the accuracies on every batch", "after each epoch, measure each accuracy on eval_iter batches "
            "only (calc_accuracy_loader's num_batches).", mistake="accuracy on every batch"),
]


def same_run(got, candidate) -> bool:
    """Whether the student's five results are those of `candidate` (a run)."""
    expected = candidate.result
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


def expect_plain_numbers(result, *, what):
    """The four lists hold Python numbers and examples_seen is an int, as the book's loop returns them: a tensor
    there keeps memory (and, with a gradient, the graph) alive, and does not print or save as a number."""
    for name, values in zip(RETURNED, result[:4]):
        tensors = [index for index, value in enumerate(values) if isinstance(value, torch.Tensor)]
        expect_true(not tensors, what=f"{what}: {name}", problem=f"entry {tensors[0] if tensors else 0} is a "
                    "tensor, not a Python float.", hint="append the numbers that evaluate_model and "
                    "calc_accuracy_loader return as they are; a one-element tensor gives its number with .item().")
    expect_true(isinstance(result[4], int) and not isinstance(result[4], bool), what=f"{what}: examples_seen",
                problem=f"is a {type(result[4]).__name__}, not a Python int.",
                hint="count the examples with Python ints (a tensor's shape holds ints).")


@pytest.mark.points(3)
@pytest.mark.runs("train_classifier_simple")
@pytest.mark.stand_ins(*TRAINING_PARTS)
def test_train_classifier_simple(submission):
    """train_classifier_simple: a short seeded run gives the reference's losses, accuracies (Python floats),
    examples seen and head.

    2 epochs of 3 batches, evaluating every 2 steps on 2 batches, AdamW, dropout on, on the CPU, the model handed
    over in eval mode. It runs on correct calc_loss_batch, evaluate_model and calc_accuracy_loader.
    """
    state = classifier(TRAINING, seed=9).state_dict()
    train_data, val_data = training_data()
    got = submission.run(classifier_training, parts=TRAINING_PARTS, cfg=TRAINING, state=state,
                         train_data=train_data, val_data=val_data, settings=RUN, arguments=RUN_ARGUMENTS)
    expected = run_with(ref.train_classifier_simple, state, train_data, val_data)
    what = "train_classifier_simple (2 epochs of 3 batches, evaluating every 2 steps)"
    result = expect_returned(got.result, RETURNED, what=what, kind="results", lists=False)

    def diagnose():
        return name_mistake(result, TRAINING_MISTAKES, partial(run_with, None, state, train_data, val_data),
                            matches=same_run, yours="your run is") or (
            "one optimizer step per batch (gradients reset, loss, backward, step) with the model in training mode, an "
            "evaluation after steps 0, eval_freq, 2 * eval_freq, ..., and the accuracies on eval_iter batches "
            "after every epoch (section 6.7).")

    examples_seen = result[4].item() if isinstance(result[4], torch.Tensor) else result[4]
    expect_equal(examples_seen, expected.result[4], what=f"{what}: examples_seen", hint=diagnose)
    expect_trained(got, expected, RETURNED[:4], what=what, type_hint=NUMBER_TYPE_HINT, hint=diagnose,
                   weights="out_head.weight")
    expect_plain_numbers(result, what=what)


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
# The last one fills the model's context exactly: that is allowed.
REVIEW_SETTINGS = [{"max_length": 24}, {"max_length": 9}, {"max_length": 16, "pad_token_id": 0},
                   {"max_length": GPT2_VOCAB["context_length"]}]


FULL_CONTEXT_REFUSED = error_mentions("ValueError", "AssertionError", hint=(
    f"the grader calls classify_review with max_length from 9 up to the model's context length "
    f"({GPT2_VOCAB['context_length']}, an input that fills the context exactly): only a max_length longer than the "
    "context may be refused."))
EMPTY_MESSAGE = error_mentions("indices", "Long, Int", hint=(
    "an empty message (the grader tries one, after the others) becomes max_length padding tokens; the token ids "
    "given to the model must be integers (torch.long), and a tensor made from an empty list is a float tensor."))


def describe_review(case):
    arguments = ", ".join(f"{key}={value}" for key, value in case["kwargs"].items())
    return f"classify_review({case['text'][:30]!r}..., {arguments})"


def review_input(text, max_length, pad_token_id=PAD, mistake=None):
    """The token ids the reference's classify_review gives the model (as SpamDataset pads them), or what a
    classic mistake gives."""
    return padded({"Text": [text]}, {"max_length": max_length, "pad_token_id": pad_token_id}, mistake)[0]


REVIEW_MISTAKES = [
    Mistake("no padding", "pad the message with pad_token_id up to max_length, as SpamDataset does: the classifier "
            "learned to read its answer after exactly that much padding.", mistake="no padding"),
    Mistake("padding at the start", "pad at the end: the message's own ids first, then pad_token_id up to "
            "max_length.", mistake="at the start"),
    Mistake("keeping the last tokens of a long message", "keep the first max_length tokens, not the last.",
            mistake="last tokens"),
    Mistake("padding with 50256 whatever pad_token_id says", "pad with the pad_token_id argument.",
            mistake="with 50256"),
]


def review_hint(seen, case):
    if isinstance(seen, torch.Tensor) and seen.dim() == 2:
        correct = review_input(case["text"], **case["kwargs"])
        named = name_mistake(seen, REVIEW_MISTAKES, partial(review_input, case["text"], **case["kwargs"]),
                             matches=lambda got, mistaken: got[0].tolist() == mistaken and mistaken != correct,
                             yours="the input you gave the model is")
        if named:
            return named
    return ("encode the text, keep the first max_length tokens, pad at the end with pad_token_id up to max_length, "
            "and make it a batch of one, shape (1, max_length), on the device (section 6.8).")


@pytest.mark.points(2)
@pytest.mark.runs("classify_review")
def test_classify_review(submission):
    """classify_review: the message truncated and padded to max_length like the training data (an empty message,
    and a max_length that fills the context exactly, included), the last token's argmax, class 1 answered "spam" and
    class 0 "not spam", in eval mode."""
    torch.manual_seed(17)
    model = GPTModel(GPT2_VOCAB)
    model.out_head = nn.Linear(GPT2_VOCAB["emb_dim"], 2)
    with torch.no_grad():
        model.out_head.weight.mul_(40.0)  # large logits: the answers change with the input ids
    state = model.state_dict()
    model.eval()
    cases = [{"text": text, "kwargs": kwargs} for kwargs in REVIEW_SETTINGS for text in REVIEW_TEXTS]
    empty = [{"text": "", "kwargs": kwargs} for kwargs in REVIEW_SETTINGS[1:3]]  # nothing but padding, checked last
    for group, diagnosis in ((cases, FULL_CONTEXT_REFUSED), (empty, EMPTY_MESSAGE)):
        with explain_errors(diagnosis):
            got = submission.run(classified, name="classify_review", cfg=GPT2_VOCAB, state=state, cases=group)
        for result, case in zip(got, group):
            expect_review(result, case, model)


def expect_review(result, case, model):
    """One answer of the student's classify_review: the input the model saw, its mode afterwards, the answer."""
    what = describe_review(case)
    expected_ids = torch.tensor([review_input(case["text"], **case["kwargs"])])
    expect_true(result.seen is not None, what=what, problem="the model was never called.", hint=None)
    expect_equal(result.seen, expected_ids, what=f"{what}: the token ids given to the model",
                 hint=partial(review_hint, result.seen, case))
    expect_true(result.training_after is False, what=what, problem="the model was in training mode (dropout on) and "
                "your function left it so.", hint="switch the model to evaluation mode (its eval method) first: a "
                                                  "prediction must not be random.")
    with torch.no_grad():
        expected = "spam" if model(expected_ids)[:, -1, :].argmax(dim=-1).item() == 1 else "not spam"
    expect_equal(result.answer, expected, what=f"{what}: the answer",
                 hint='the class is the argmax of the last token\'s logits; class 1 is "spam", class 0 "not spam".')
