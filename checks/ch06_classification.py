"""Public checks of chapter 6 (finetuning for classification), one per hidden grader test.

They use small stand-ins rather than the notebook's data and models: a few messages of their own read from a
string (SpamDataset reads its CSV with pandas, which takes a file object too), a character-level tokenizer, a
tiny GPTModel of chapter 4 (the support code), and a "model" whose class scores depend only on the last token,
so that the answer of each worked example is easy to see. The hidden grader uses the course's messages, GPT-2's
tokenizer, seeded reference models and a seeded training run.
"""

import contextlib
import io

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from checks import Checks, Class, Function, Interface, expect_equal, expect_finite, expect_shape, require
from reference.gpt import GPTModel

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Function("create_balanced_dataset", "(df)"),
    Function("random_split", "(df, train_frac, validation_frac)"),
    Class("SpamDataset", "(csv_file, tokenizer, max_length=None, pad_token_id=50256)",
          methods={"__getitem__": "(index)", "__len__": "()"}),
    Function("prepare_model_for_classification", "(model, num_classes=2)"),
    Function("calc_accuracy_loader", "(data_loader, model, device, num_batches=None)"),
    Function("calc_loss_batch", "(input_batch, target_batch, model, device)"),
    Function("calc_loss_loader", "(data_loader, model, device, num_batches=None)"),
    Function("evaluate_model", "(model, train_loader, val_loader, device, eval_iter)"),
    Function("train_classifier_simple", "(model, train_loader, val_loader, optimizer, device, num_epochs, "
                                        "eval_freq, eval_iter)"),
    Function("classify_review", "(text, model, tokenizer, device, max_length=None, pad_token_id=50256)"),
)

CHECKS = Checks("ch06_classification", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

MESSAGES = ["See you at noon", "WIN a FREE phone now", "Bring milk please", "Call now to claim your prize",
            "Running late", "Lunch tomorrow?", "Cheap loans, reply YES", "Thanks for the card"]
LABELS = ["ham", "spam", "ham", "spam", "ham", "ham", "spam", "ham"]
TINY = {"vocab_size": 50, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
        "qkv_bias": False}


class CharTokenizer:
    """One id per character (its code point modulo 100): "Hi!" -> [72, 5, 33]."""

    def encode(self, text):
        return [ord(character) % 100 for character in text]


class LastTokenParity(nn.Module):
    """A stand-in classifier: the class scores at the last position say "token id is odd" (class 1) or even
    (class 0); every earlier position says the opposite, so reading the wrong position is visible."""

    def __init__(self, context_length=16):
        super().__init__()
        self.pos_emb = nn.Embedding(context_length, 2)  # what classify_review reads the context length from
        self.scale = nn.Parameter(torch.tensor(3.0))  # something for a loss to have a gradient for
        self.seen = []

    def forward(self, in_idx):
        self.seen.append(in_idx.detach().cpu().clone())
        odd = (in_idx % 2).float()  # (b, n)
        logits = torch.stack([1 - odd, odd], dim=-1) * self.scale  # (b, n, 2)
        flipped = logits.flip(-1)
        last = torch.zeros(in_idx.shape[1], 1, dtype=torch.bool)
        last[-1] = True
        return torch.where(last, logits, flipped)


def parity_data():
    """6 sequences of 4 token ids; label 1 when the last id is odd. Batches of 2."""
    inputs = torch.tensor([[2, 4, 6, 1], [1, 3, 5, 8], [7, 7, 7, 3], [9, 2, 4, 6], [1, 1, 2, 5], [3, 8, 8, 2]])
    return inputs, inputs[:, -1] % 2


def frame(labels=None):
    return pd.DataFrame({"Label": labels or LABELS, "Text": MESSAGES})


def csv_file(texts, labels):
    return io.StringIO(pd.DataFrame({"Label": labels, "Text": texts}).to_csv(index=False))


def tiny_gpt():
    torch.manual_seed(123)
    return GPTModel(TINY).eval()


# -- section 6.2: the data ----------------------------------------------------------------------------------------

HINT_BALANCE = ("keep every spam row and draw as many ham rows with .sample and the book's random_state=123; the ham "
                "sample comes first, then the spam rows (section 6.2).")


def balanced_after_seeding(ns, seed):
    """create_balanced_dataset(frame()) with numpy's global generator seeded (the student's state is put back)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return ns["create_balanced_dataset"](frame())
    finally:
        np.random.set_state(state)


@CHECKS.register("test_create_balanced_dataset", subject="create_balanced_dataset", error_hint=HINT_BALANCE,
                 description="create_balanced_dataset keeps the 3 spam of 8 messages and the book's 3 seeded ham "
                             "rows, ham first")
def check_create_balanced_dataset(ns):
    balanced = balanced_after_seeding(ns, 0)
    require(isinstance(balanced, pd.DataFrame), f"create_balanced_dataset returned a "
            f"{type(balanced).__name__}, not a data frame.", "return one data frame: the ham sample and the spam rows, "
                                                             "concatenated.")
    labels = list(balanced["Label"])
    expect_equal(labels, ["ham"] * 3 + ["spam"] * 3, "the labels of the balanced data frame, in order",
                 "as many ham rows as spam rows: the ham sample first, then every spam row.")
    expect_equal(sorted(balanced.index[3:]), [1, 3, 6], "the row labels (index) of its spam rows",
                 "keep every spam row of the input, with its index.")
    again = balanced_after_seeding(ns, 1)
    require(list(balanced.index) == list(again.index), "the ham rows change with numpy's random state: the sample is "
            "drawn without a seed.", "give the ham sample the book's random_state=123, so that it is the same on "
                                     "every run (and the same as the book's).")
    expect_equal(list(balanced.index[:3]), [2, 5, 7], "the row labels of the ham sample (the book's seed draws rows "
                 "2, 5 and 7 of the 5 ham rows)", "draw the ham rows from the ham rows only, with random_state=123.")


HINT_SPLIT = ("shuffle every row with the book's random_state=123, give the result a fresh index 0, 1, 2, ..., then "
              "cut it: int(n * train_frac) training rows, int(n * validation_frac) validation rows, the rest for "
              "testing (section 6.2).")


@CHECKS.register("test_random_split", subject="random_split", error_hint=HINT_SPLIT,
                 description="random_split of 8 rows gives 4, 2 and 2 rows with 0.5 / 0.25 and with 0.6 / 0.3, "
                             "shuffled, with a fresh index")
def check_random_split(ns):
    parts = ns["random_split"](frame(), 0.5, 0.25)
    require(isinstance(parts, tuple) and len(parts) == 3, "random_split did not return three parts.",
            "return the training, validation and test parts, in that order.")
    expect_equal([len(part) for part in parts], [4, 2, 2], "the sizes of the parts with 0.5 / 0.25",
                 "int(len(df) * train_frac) training rows, int(len(df) * validation_frac) validation rows, the rest "
                 "for testing.")
    expect_equal([list(part.index) for part in parts], [[0, 1, 2, 3], [4, 5], [6, 7]], "the index of each part",
                 "give the shuffled frame a fresh index (pandas' reset_index, dropping the old one), then cut it.")
    together = sorted(text for part in parts for text in part["Text"])
    expect_equal(together, sorted(MESSAGES), "the messages of the three parts together",
                 "every row goes to exactly one part.")
    require(list(parts[0]["Text"]) != MESSAGES[:4], "the training part is the first 4 rows in their original "
            "order: the rows were not shuffled.", "shuffle the whole frame first (.sample of every row, with the "
                                                  "book's random_state=123).")
    sizes = [len(part) for part in ns["random_split"](frame(), 0.6, 0.3)]
    if sizes == [4, 3, 1]:
        require(False, "with 0.6 / 0.3 the parts have 4, 3 and 1 rows: your validation part ends at "
                "int(n * (train_frac + validation_frac)) = int(7.2) = 7.", "the validation part is int(n * "
                "validation_frac) = int(2.4) = 2 rows long, counted from where the training part ends.")
    expect_equal(sizes, [4, 2, 2], "the sizes of the parts of 8 rows with 0.6 / 0.3",
                 "int(8 * 0.6) = 4 training rows, int(8 * 0.3) = 2 validation rows, the rest for testing.")


# -- section 6.3: SpamDataset -------------------------------------------------------------------------------------

HINT_DATASET = ("encode every message once in __init__; with max_length=None use the longest one's length, else cut "
                "longer messages to their first max_length tokens; pad at the end with pad_token_id (section 6.3).")


def dataset_items(dataset):
    return [dataset[i] for i in range(len(dataset))]


@CHECKS.register("test_spam_dataset", subject="SpamDataset", error_hint=HINT_DATASET,
                 description="SpamDataset pads 3 messages with 50256 to the longest one; labels are long tensors")
def check_spam_dataset(ns):
    texts = ["Hi", "Hello", "Hey!"]
    dataset = ns["SpamDataset"](csv_file(texts, [0, 1, 0]), CharTokenizer())
    expect_equal(len(dataset), 3, "len(dataset)", "__len__ returns the number of messages.")
    expect_equal(getattr(dataset, "max_length", None), 5, "dataset.max_length (the longest message, 'Hello', "
                 "has 5 tokens)", "with max_length=None, use the longest encoded message's length.")
    items = dataset_items(dataset)
    ids, label = items[0]
    expect_shape(ids, (5,), "dataset[0][0], the token ids of 'Hi'", "pad every message to max_length.")
    expect_equal(ids.tolist(), [72, 5, 50256, 50256, 50256], "the token ids of 'Hi' (the tokenizer gives [72, 5])",
                 "pad at the end with pad_token_id (50256 by default).")
    require(ids.dtype == torch.long and label.dtype == torch.long, f"dataset[0] has dtypes {ids.dtype} and "
            f"{label.dtype}, not torch.long.", "make both tensors of dtype torch.long.")
    expect_equal([int(item[1]) for item in items], [0, 1, 0], "the labels", "the label is the row's 'Label' value.")


@CHECKS.register("test_spam_dataset_max_length", subject="SpamDataset", error_hint=HINT_DATASET,
                 description="SpamDataset with max_length=3 truncates, with max_length=6 pads with pad_token_id")
def check_spam_dataset_max_length(ns):
    texts = ["Hi", "Hello"]
    truncated = ns["SpamDataset"](csv_file(texts, [0, 1]), CharTokenizer(), max_length=3)
    expect_equal([item[0].tolist() for item in dataset_items(truncated)], [[72, 5, 50256], [72, 1, 8]],
                 "the token ids with max_length=3", "keep the first max_length tokens of a longer message, and pad "
                                                    "a shorter one up to max_length.")
    padded = ns["SpamDataset"](csv_file(texts, [0, 1]), CharTokenizer(), max_length=6, pad_token_id=0)
    expect_equal(padded[0][0].tolist(), [72, 5, 0, 0, 0, 0], "the token ids of 'Hi' with max_length=6, "
                 "pad_token_id=0", "pad with the pad_token_id argument.")


# -- section 6.5: the classification head --------------------------------------------------------------------------

HINT_HEAD = ("freeze every parameter, replace the model's out_head by an nn.Linear from emb_dim to num_classes (read "
             "emb_dim from the model), then make the last transformer block and the final norm trainable again "
             "(section 6.5).")


def prepared(ns):
    model = tiny_gpt()
    torch.manual_seed(123)
    returned = ns["prepare_model_for_classification"](model, num_classes=2)
    return returned if isinstance(returned, nn.Module) else model


@CHECKS.register("test_classification_head", subject="prepare_model_for_classification", error_hint=HINT_HEAD,
                 description="the new head of a tiny GPT is nn.Linear(8, 2) with a bias; the output has 2 scores")
def check_classification_head(ns):
    model = prepared(ns)
    head = model.out_head
    require(isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (8, 2),
            f"model.out_head is {head!r}, not nn.Linear(8, 2).",
            "the new head maps the emb_dim=8 features of each token to num_classes=2 scores.")
    require(head.bias is not None, "the new head has no bias.", "keep nn.Linear's default bias=True.")
    with torch.no_grad():
        logits = model.eval()(torch.tensor([[1, 2, 3, 4]]))
    expect_shape(logits, (1, 4, 2), "the model's output for 4 tokens", "one score per class for every token.")
    expect_finite(logits, "the model's output")


@CHECKS.register("test_freezing", subject="prepare_model_for_classification", error_hint=HINT_HEAD,
                 description="only the last block, the final norm and the head of a tiny GPT are trainable")
def check_freezing(ns):
    model = prepared(ns)
    trainable = sorted({name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("trf_blocks") else "")
                        for name, param in model.named_parameters() if param.requires_grad})
    expect_equal(trainable, ["final_norm", "out_head", "trf_blocks.1"], "the trainable parts of the model",
                 "freeze every parameter, replace the head, then make the LAST block of trf_blocks and final_norm "
                 "trainable again.")


# -- section 6.6: loss and accuracy ------------------------------------------------------------------------------

HINT_LAST = ("the prediction is read from the last position only: of the model's output (batch, num_tokens, "
             "num_classes), the scores at index -1 of the token dimension, shape (batch, num_classes) (section 6.6).")
HINT_MOVE = "move each batch to the device argument (its .to method) before the model or the loss uses it."


class _Noted(torch.Tensor):
    """A batch that notes its `role` in `moves` (both set on a subclass) when it is moved to a device."""

    role, moves = "batch", []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ("to", "cuda") or "device" in kwargs:
            for value in list(args) + list(kwargs.values()):
                if isinstance(value, _Noted):
                    type(value).moves.append(type(value).role)
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            return result.as_subclass(torch.Tensor) if isinstance(result, _Noted) else result


def noted(tensor, role, moves):
    """`tensor` as a batch fresh from a loader, on the CPU: moving it notes `role` in the list `moves`."""
    return tensor.as_subclass(type("Noted", (_Noted,), {"role": role, "moves": moves}))


def uneven_data():
    """6 sequences in batches of 4 and 2; the stand-in classifier gets the 4th wrong (its label is flipped)."""
    inputs, labels = parity_data()
    labels = labels.clone()
    labels[3] = 1 - labels[3]
    return inputs, labels


@CHECKS.register("test_calc_accuracy_loader", subject="calc_accuracy_loader", error_hint=HINT_LAST,
                 description="calc_accuracy_loader reads the last token in eval mode, weighs every example "
                             "equally, honours num_batches and moves the inputs to the device")
def check_calc_accuracy_loader(ns):
    inputs, labels = parity_data()
    model = LastTokenParity().train()
    accuracy = ns["calc_accuracy_loader"](DataLoader(TensorDataset(inputs, labels), batch_size=2), model, "cpu")
    require(isinstance(accuracy, (int, float)) and abs(float(accuracy) - 1.0) < 1e-9, f"the accuracy of a "
            f"classifier that is right at the last token is {accuracy!r}, not 1.0.",
            "the predicted class of each message is the argmax of the last position's scores; divide the number "
            "correct by the number of examples. " + HINT_LAST)
    require(not model.training, "the model is still in training mode (dropout on).",
            "switch the model to evaluation mode (its eval method) before the first batch.")
    inputs, labels = uneven_data()
    accuracy = ns["calc_accuracy_loader"](DataLoader(TensorDataset(inputs, labels), batch_size=4), model, "cpu")
    if isinstance(accuracy, (int, float)) and abs(float(accuracy) - 0.875) < 1e-9:
        require(False, "with batches of 4 and 2 examples, 3 of 4 and 2 of 2 right, the accuracy is 0.875, the mean "
                "of the two batches' accuracies: a smaller last batch counts as much as a full one.",
                "count the correct predictions and the examples over all batches, and divide once at the end.")
    require(isinstance(accuracy, (int, float)) and abs(float(accuracy) - 5 / 6) < 1e-9, f"with 5 of 6 examples "
            f"right (batches of 4 and 2), the accuracy is {accuracy!r}, not 5 / 6 = 0.8333.",
            "count the correct predictions and the examples over all batches, and divide once at the end.")
    accuracy = ns["calc_accuracy_loader"](DataLoader(TensorDataset(inputs, labels), batch_size=4), model, "cpu",
                                          num_batches=1)
    require(abs(float(accuracy) - 0.75) < 1e-9, f"with num_batches=1 (3 of the first batch's 4 examples right), the "
            f"accuracy is {accuracy!r}, not 0.75.", "use only the first num_batches batches.")
    moves = []
    ns["calc_accuracy_loader"]([(noted(inputs, "inputs", moves), noted(labels, "labels", moves))], model, "cpu")
    require("inputs" in moves, "the input batch never went through .to(device): on a GPU it would stay on the CPU, "
            "away from the model.", HINT_MOVE)


@CHECKS.register("test_calc_loss_batch", subject="calc_loss_batch", error_hint=HINT_LAST,
                 description="calc_loss_batch is the cross-entropy of the last token's scores, with a gradient, "
                             "on batches moved to the device")
def check_calc_loss_batch(ns):
    inputs, labels = parity_data()
    model = LastTokenParity()
    loss = ns["calc_loss_batch"](inputs, labels, model, "cpu")
    expected = nn.functional.cross_entropy(model(inputs)[:, -1, :], labels)
    require(isinstance(loss, torch.Tensor) and loss.numel() == 1, f"calc_loss_batch returned {loss!r}, not a "
            "one-number tensor.", "return the mean cross-entropy of the batch as the tensor cross_entropy gives.")
    if abs(float(loss) - float(nn.functional.cross_entropy(model(inputs)[:, 0, :], labels))) < 1e-5:
        require(False, f"the loss is {float(loss):.4f}, the cross-entropy of the FIRST token's scores.", HINT_LAST)
    require(abs(float(loss) - float(expected)) < 1e-5, f"the loss is {float(loss):.4f}; the cross-entropy of "
            f"the last token's scores is {float(expected):.4f}.", HINT_LAST + " Then cross_entropy of those scores "
                                                                              "and the labels.")
    require(loss.requires_grad, "the loss has no gradient.", "return the loss tensor itself, not .item().")
    moves = []
    ns["calc_loss_batch"](noted(inputs, "inputs", moves), noted(labels, "labels", moves), model, "cpu")
    left = [role for role in ("inputs", "labels") if role not in moves]
    require(not left, f"the {' and the '.join(left)} never went through .to(device): on a GPU they would stay on the "
            "CPU, away from the model.", HINT_MOVE)


HINT_EMPTY = "an empty loader has no batches to average: return float('nan') before dividing, as the book does."


@CHECKS.register("test_calc_loss_loader", subject="calc_loss_loader", error_hint=HINT_EMPTY,
                 description="calc_loss_loader averages batch losses, with num_batches; an empty loader gives nan")
def check_calc_loss_loader(ns):
    inputs, labels = parity_data()
    model = LastTokenParity()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    with torch.no_grad():
        first = nn.functional.cross_entropy(model(inputs[:2])[:, -1, :], labels[:2]).item()
        value = ns["calc_loss_loader"](loader, model, "cpu", num_batches=1)
    require(isinstance(value, (int, float)) and abs(float(value) - first) < 1e-5, f"calc_loss_loader(..., "
            f"num_batches=1) is {value!r}, not the first batch's loss {first:.4f}.",
            "average calc_loss_batch(...).item() over the first num_batches batches.")
    empty = ns["calc_loss_loader"](DataLoader(TensorDataset(inputs[:0], labels[:0]), batch_size=2), model, "cpu")
    require(isinstance(empty, float) and empty != empty, f"on an empty loader it returns {empty!r}, not nan.",
            HINT_EMPTY)


HINT_EVALUATE = ("in evaluation mode and without gradients, the training and the validation loss over eval_iter "
                 "batches each (calc_loss_loader); then back to training mode; the training loss first.")


@CHECKS.register("test_evaluate_model", subject="evaluate_model", error_hint=HINT_EVALUATE,
                 description="evaluate_model returns (train_loss, val_loss) and leaves the model in training mode")
def check_evaluate_model(ns):
    inputs, labels = parity_data()
    model = LastTokenParity().eval()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    result = ns["evaluate_model"](model, loader, loader, "cpu", 2)
    require(isinstance(result, tuple) and len(result) == 2, f"evaluate_model returned {result!r}, not a pair.",
            "return the two losses, the training loss first.")
    require(all(isinstance(value, (int, float)) for value in result), "the two losses are not numbers.",
            "use calc_loss_loader(..., num_batches=eval_iter), which returns a float.")
    require(model.training, "the model is left in eval mode.", "switch the model back to training mode (its train "
                                                                "method) before returning.")


# -- section 6.7: finetuning --------------------------------------------------------------------------------------

class PlainSGD:
    """An optimizer with what a training loop calls: zero_grad() and step(). It counts the steps taken without
    the gradients being reset (by it or by the model) since the step before."""

    def __init__(self, params, lr):
        self.params, self.lr, self.steps, self.not_reset, self.reset = list(params), lr, 0, 0, True

    def zero_grad(self, set_to_none=True):
        self.reset = True
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self):
        self.steps += 1
        self.not_reset += not self.reset
        self.reset = False
        for param in self.params:
            if param.grad is not None:
                param -= self.lr * param.grad


class RecordingParity(LastTokenParity):
    """LastTokenParity that notes, for every forward pass with gradients (a training step), whether it was in
    training mode, and tells its optimizer when the model's own zero_grad() resets the gradients."""

    def __init__(self):
        super().__init__()
        self.step_modes, self.optimizer = [], None

    def forward(self, in_idx):
        if torch.is_grad_enabled():
            self.step_modes.append(self.training)
        return super().forward(in_idx)

    def zero_grad(self, set_to_none=True):
        if self.optimizer is not None:
            self.optimizer.reset = True
        super().zero_grad(set_to_none=set_to_none)


HINT_TRAIN = ("for every epoch: training mode on, then for every batch: reset the gradients, the loss, backward, "
              "an optimizer step; evaluate when global_step % eval_freq == 0; after the epoch, each accuracy on "
              "eval_iter batches (section 6.7).")


@CHECKS.register("test_train_classifier_simple", subject="train_classifier_simple", error_hint=HINT_TRAIN,
                 description="train_classifier_simple on 3 batches for 2 epochs: 6 steps in training mode with "
                             "reset gradients, 3 evaluations, accuracies on eval_iter batches, Python numbers")
def check_train_classifier_simple(ns):
    inputs, labels = parity_data()
    labels = labels.clone()
    labels[4:] = 1 - labels[4:]  # the classifier gets the last batch wrong: 2 of 3 batches right
    model = RecordingParity().eval()  # handed over in evaluation mode: the loop switches training mode on
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    optimizer = PlainSGD(model.parameters(), lr=0.1)
    model.optimizer = optimizer
    with contextlib.redirect_stdout(io.StringIO()):  # the loop prints its progress; the check cell prints one line
        result = ns["train_classifier_simple"](model, loader, loader, optimizer, "cpu", num_epochs=2, eval_freq=2,
                                               eval_iter=1)
    require(isinstance(result, tuple) and len(result) == 5, "train_classifier_simple did not return five "
            "values.", "return the four lists and examples_seen, in the order the stub's docstring gives.")
    train_losses, val_losses, train_accs, val_accs, examples_seen = result
    expect_equal(optimizer.steps, 6, "the number of optimizer steps", "one optimizer step per batch and epoch.")
    require(optimizer.not_reset == 0, f"{optimizer.not_reset} of the 6 steps came without resetting the gradients "
            "since the step before: backward() adds each batch's gradients to those of the earlier steps.",
            "reset the gradients (the optimizer's zero_grad) at every step, before backward().")
    modes = model.step_modes
    if modes and not modes[0]:
        require(False, "the first training step ran in evaluation mode: the loop never switched the model to "
                "training mode (the check hands it over in evaluation mode).",
                "switch the model to training mode (its train method) at the start of every epoch.")
    if not all(modes[:3]):  # the first epoch's 3 steps: only an evaluation (steps 0 and 2) comes between them
        require(False, "training steps of the first epoch ran in evaluation mode, right after an evaluation: the "
                "model came back from evaluate_model in evaluation mode.", "evaluate_model switches the model back "
                "to training mode before it returns (see its own check).")
    require(all(modes), f"{modes.count(False)} of the {len(modes)} training steps ran in evaluation mode, those "
            "after the first epoch's accuracies (calc_accuracy_loader leaves the model in evaluation mode).",
            "switch the model to training mode at the start of every epoch, not once before the loop.")
    expect_equal((len(train_losses), len(val_losses)), (3, 3), "the number of recorded losses (steps 0, 2 and 4)",
                 "evaluate when global_step % eval_freq == 0, counting the steps from 0.")
    expect_equal((len(train_accs), len(val_accs)), (2, 2), "the number of recorded accuracies",
                 "measure the accuracies once after every epoch.")
    values = [*train_losses, *val_losses, *train_accs, *val_accs]
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    require(not tensors, f"{len(tensors)} of the recorded losses and accuracies are tensors, not Python floats.",
            "append the numbers that evaluate_model and calc_accuracy_loader return as they are; a one-element "
            "tensor gives its number with .item().")
    if [float(a) for a in train_accs] == [2 / 3, 2 / 3]:
        require(False, "the training accuracies are 2/3 after each epoch, measured on all 3 batches: with "
                "eval_iter=1 they are measured on the first batch only (1.0).",
                "pass num_batches=eval_iter to calc_accuracy_loader.")
    expect_equal([float(a) for a in train_accs], [1.0, 1.0], "the training accuracies on eval_iter=1 batch after "
                 "each epoch (a classifier right on the first batch)", "calc_accuracy_loader(..., "
                 "num_batches=eval_iter) after every epoch.")
    require(isinstance(examples_seen, int), f"examples_seen is a {type(examples_seen).__name__}, not a Python int.",
            "count the examples with Python ints (a tensor's shape holds ints).")
    expect_equal(examples_seen, 12, "examples_seen (2 epochs of 6 examples)", "add each batch's number of examples "
                                                                              "(its first dimension) per step.")


# -- section 6.8: using the classifier ----------------------------------------------------------------------------

HINT_CLASSIFY = ("in evaluation mode: encode the text, keep its first max_length tokens, pad at the end with "
                 "pad_token_id up to max_length, make it a batch of one on the device, and answer from the argmax "
                 "of the last position's scores (section 6.8).")


@CHECKS.register("test_classify_review", subject="classify_review", error_hint=HINT_CLASSIFY,
                 description="classify_review pads to max_length (up to the full context; an empty message too), "
                             "answers 'spam' for class 1, in eval mode")
def check_classify_review(ns):
    model = LastTokenParity().train()
    answer = ns["classify_review"]("Hi!", model, CharTokenizer(), "cpu", max_length=6, pad_token_id=1)
    require(bool(model.seen), "the model was never called.", "answer from the model's scores at the last position.")
    require(not model.training, "the model was handed over in training mode (dropout on) and your function left it "
            "so: its answers would be random.", "switch the model to evaluation mode (its eval method) first.")
    expect_equal(model.seen[-1].tolist(), [[72, 5, 33, 1, 1, 1]], "the input given to the model for 'Hi!' "
                 "(the tokenizer gives [72, 5, 33]) with max_length=6, pad_token_id=1",
                 "pad at the end with pad_token_id up to max_length, and add a batch dimension.")
    expect_equal(answer, "spam", "the answer when the last token's class is 1", "class 1 is 'spam', class 0 "
                                                                                 "'not spam'.")
    answer = ns["classify_review"]("Hi!", model, CharTokenizer(), "cpu", max_length=2, pad_token_id=1)
    expect_equal(model.seen[-1].tolist(), [[72, 5]], "the input for 'Hi!' with max_length=2",
                 "keep the first max_length tokens.")
    expect_equal(answer, "spam", "the answer when the last token's class is 1", "class 1 is 'spam'.")
    answer = ns["classify_review"]("Hi!", model, CharTokenizer(), "cpu", max_length=4, pad_token_id=2)
    expect_equal(answer, "not spam", "the answer when the last token's class is 0", "class 0 is 'not spam'.")
    try:
        ns["classify_review"]("Hi!", model, CharTokenizer(), "cpu", max_length=16, pad_token_id=2)
    except (ValueError, AssertionError) as exc:
        require(False, f"with max_length=16, the model's context length, it raised {type(exc).__name__}: {exc}",
                "an input that fills the context exactly fits: only a max_length longer than the context may be "
                "refused.")
    expect_equal(len(model.seen[-1][0]), 16, "the length of the input for max_length=16 (the model's context)",
                 "pad up to max_length.")
    ns["classify_review"]("", model, CharTokenizer(), "cpu", max_length=3, pad_token_id=1)
    expect_equal(model.seen[-1].tolist(), [[1, 1, 1]], "the input for an empty message with max_length=3, "
                 "pad_token_id=1", "an empty message is nothing but padding.")
    require(model.seen[-1].dtype == torch.long, f"the input for an empty message has dtype {model.seen[-1].dtype}, "
            "not torch.long: a model's embedding takes integer token ids.", "a tensor made from an empty list is a "
                                                                         "float tensor: give the ids dtype torch.long.")
