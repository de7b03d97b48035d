"""Public checks of chapter 6 (finetuning for classification), one per hidden grader test.

They use small stand-ins rather than the notebook's data and models: a few messages of their own read from a
string (SpamDataset reads its CSV with pandas, which takes a file object too), a character-level tokenizer, a
tiny GPTModel of chapter 4 (the support code), and a "model" whose class scores depend only on the last token,
so that the answer of each worked example is easy to see. The hidden grader uses the course's messages, GPT-2's
tokenizer, seeded reference models and a seeded training run.
"""

import contextlib
import io

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

@CHECKS.register("test_create_balanced_dataset", subject="create_balanced_dataset",
                 description="create_balanced_dataset keeps the 3 spam of 8 messages and 3 ham, ham first")
def check_create_balanced_dataset(ns):
    df = frame()
    balanced = ns["create_balanced_dataset"](df)
    require(isinstance(balanced, pd.DataFrame), f"create_balanced_dataset returned a "
                f"{type(balanced).__name__}, not a data frame.", "return pd.concat([ham_subset, spam_rows]).")
    labels = list(balanced["Label"])
    expect_equal(labels, ["ham"] * 3 + ["spam"] * 3, "the labels of the balanced data frame, in order",
                 "as many ham rows as spam rows: the ham sample first, then every spam row.")
    expect_equal(sorted(balanced.index[3:]), [1, 3, 6], "the row labels (index) of its spam rows",
                 "keep every spam row of the input, with its index.")
    require(set(balanced.index[:3]) <= {0, 2, 4, 5, 7}, "its ham rows are not rows of the input.",
                "draw them with df[df['Label'] == 'ham'].sample(num_spam, random_state=123).")


@CHECKS.register("test_random_split", subject="random_split",
                 description="random_split of 8 rows with 0.5 / 0.25 gives 4, 2 and 2 rows with a fresh index")
def check_random_split(ns):
    parts = ns["random_split"](frame(), 0.5, 0.25)
    require(isinstance(parts, tuple) and len(parts) == 3, "random_split did not return three parts.",
                "return train_df, validation_df, test_df.")
    expect_equal([len(part) for part in parts], [4, 2, 2], "the sizes of the parts",
                 "int(len(df) * train_frac) training rows, int(len(df) * validation_frac) validation rows, the rest "
                 "for testing.")
    expect_equal([list(part.index) for part in parts], [[0, 1, 2, 3], [4, 5], [6, 7]], "the index of each part",
                 "shuffle with df.sample(frac=1, random_state=123), then .reset_index(drop=True), then cut.")
    together = sorted(text for part in parts for text in part["Text"])
    expect_equal(together, sorted(MESSAGES), "the messages of the three parts together",
                 "every row goes to exactly one part.")
    require(list(parts[0]["Text"]) != MESSAGES[:4], "the training part is the first 4 rows in their original "
                "order: the rows were not shuffled.", "shuffle with df.sample(frac=1, random_state=123) first.")


# -- section 6.3: SpamDataset -------------------------------------------------------------------------------------

def dataset_items(dataset):
    return [dataset[i] for i in range(len(dataset))]


@CHECKS.register("test_spam_dataset", subject="SpamDataset",
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
                f"{label.dtype}, not torch.long.", "torch.tensor(..., dtype=torch.long) for both.")
    expect_equal([int(item[1]) for item in items], [0, 1, 0], "the labels", "the label is the row's 'Label' value.")


@CHECKS.register("test_spam_dataset_max_length", subject="SpamDataset",
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

def prepared(ns):
    model = tiny_gpt()
    torch.manual_seed(123)
    returned = ns["prepare_model_for_classification"](model, num_classes=2)
    return returned if isinstance(returned, nn.Module) else model


@CHECKS.register("test_classification_head", subject="prepare_model_for_classification",
                 description="the new head of a tiny GPT is nn.Linear(8, 2) with a bias; the output has 2 scores")
def check_classification_head(ns):
    model = prepared(ns)
    head = model.out_head
    require(isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (8, 2),
                f"model.out_head is {head!r}, not nn.Linear(8, 2).",
                "model.out_head = nn.Linear(in_features=emb_dim, out_features=num_classes).")
    require(head.bias is not None, "the new head has no bias.", "keep nn.Linear's default bias=True.")
    with torch.no_grad():
        logits = model.eval()(torch.tensor([[1, 2, 3, 4]]))
    expect_shape(logits, (1, 4, 2), "the model's output for 4 tokens", "one score per class for every token.")
    expect_finite(logits, "the model's output")


@CHECKS.register("test_freezing", subject="prepare_model_for_classification",
                 description="only the last block, the final norm and the head of a tiny GPT are trainable")
def check_freezing(ns):
    model = prepared(ns)
    trainable = sorted({name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("trf_blocks") else "")
                        for name, param in model.named_parameters() if param.requires_grad})
    expect_equal(trainable, ["final_norm", "out_head", "trf_blocks.1"], "the trainable parts of the model",
                 "freeze every parameter, replace the head, then unfreeze model.trf_blocks[-1] and model.final_norm.")


# -- section 6.6: loss and accuracy ------------------------------------------------------------------------------

@CHECKS.register("test_calc_accuracy_loader", subject="calc_accuracy_loader",
                 description="calc_accuracy_loader reads the last token: a stand-in classifier scores 100%")
def check_calc_accuracy_loader(ns):
    inputs, labels = parity_data()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    model = LastTokenParity().train()
    accuracy = ns["calc_accuracy_loader"](loader, model, "cpu")
    require(isinstance(accuracy, (int, float)) and abs(float(accuracy) - 1.0) < 1e-9, f"the accuracy of a "
                f"classifier that is right at the last token is {accuracy!r}, not 1.0.",
                "predicted = torch.argmax(model(input_batch)[:, -1, :], dim=-1); divide the number correct by the "
                "number of examples.")
    require(not model.training, "the model is still in training mode.", "call model.eval() first.")
    wrong = labels.clone()
    wrong[:2] = 1 - wrong[:2]  # the first batch is now wrong
    accuracy = ns["calc_accuracy_loader"](DataLoader(TensorDataset(inputs, wrong), batch_size=2), model, "cpu",
                                          num_batches=1)
    require(abs(float(accuracy)) < 1e-9, f"with num_batches=1 on a first batch it gets wrong, the accuracy is "
                f"{accuracy!r}, not 0.0.", "use only the first num_batches batches.")


@CHECKS.register("test_calc_loss_batch", subject="calc_loss_batch",
                 description="calc_loss_batch is the cross-entropy of the last token's scores, with a gradient")
def check_calc_loss_batch(ns):
    inputs, labels = parity_data()
    model = LastTokenParity()
    loss = ns["calc_loss_batch"](inputs, labels, model, "cpu")
    expected = nn.functional.cross_entropy(model(inputs)[:, -1, :], labels)
    require(isinstance(loss, torch.Tensor) and loss.numel() == 1, f"calc_loss_batch returned {loss!r}, not a "
                "one-number tensor.", "return torch.nn.functional.cross_entropy(logits, target_batch).")
    require(abs(float(loss) - float(expected)) < 1e-5, f"the loss is {float(loss):.4f}; the cross-entropy of "
                f"the last token's scores is {float(expected):.4f}.",
                "logits = model(input_batch)[:, -1, :], then cross_entropy(logits, target_batch).")
    require(loss.requires_grad, "the loss has no gradient.", "return the loss tensor itself, not .item().")


@CHECKS.register("test_calc_loss_loader", subject="calc_loss_loader",
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
                "return float('nan') when len(data_loader) == 0.")


@CHECKS.register("test_evaluate_model", subject="evaluate_model",
                 description="evaluate_model returns (train_loss, val_loss) and leaves the model in training mode")
def check_evaluate_model(ns):
    inputs, labels = parity_data()
    model = LastTokenParity().eval()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    result = ns["evaluate_model"](model, loader, loader, "cpu", 2)
    require(isinstance(result, tuple) and len(result) == 2, f"evaluate_model returned {result!r}, not a pair.",
                "return train_loss, val_loss.")
    require(all(isinstance(value, (int, float)) for value in result), "the two losses are not numbers.",
                "use calc_loss_loader(..., num_batches=eval_iter).")
    require(model.training, "the model is left in eval mode.", "call model.train() before returning.")


# -- section 6.7: finetuning --------------------------------------------------------------------------------------

class PlainSGD:
    """An optimizer with what a training loop calls: zero_grad() and step()."""

    def __init__(self, params, lr):
        self.params, self.lr, self.steps = list(params), lr, 0

    def zero_grad(self, set_to_none=True):
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self):
        self.steps += 1
        for param in self.params:
            if param.grad is not None:
                param -= self.lr * param.grad


@CHECKS.register("test_train_classifier_simple", subject="train_classifier_simple",
                 description="train_classifier_simple on 3 batches for 2 epochs: 6 steps, 3 evaluations, 2 accuracies")
def check_train_classifier_simple(ns):
    inputs, labels = parity_data()
    model = LastTokenParity()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    optimizer = PlainSGD(model.parameters(), lr=0.1)
    with contextlib.redirect_stdout(io.StringIO()):  # the loop prints its progress; the check cell prints one line
        result = ns["train_classifier_simple"](model, loader, loader, optimizer, "cpu", num_epochs=2, eval_freq=2,
                                               eval_iter=1)
    require(isinstance(result, tuple) and len(result) == 5, "train_classifier_simple did not return five "
                "values.", "return train_losses, val_losses, train_accs, val_accs, examples_seen.")
    train_losses, val_losses, train_accs, val_accs, examples_seen = result
    expect_equal(optimizer.steps, 6, "the number of optimizer steps", "one optimizer.step() per batch and epoch.")
    expect_equal((len(train_losses), len(val_losses)), (3, 3), "the number of recorded losses (steps 0, 2 and 4)",
                 "evaluate when global_step % eval_freq == 0, counting the steps from 0.")
    expect_equal((len(train_accs), len(val_accs)), (2, 2), "the number of recorded accuracies",
                 "measure the accuracies once after every epoch.")
    expect_equal(examples_seen, 12, "examples_seen (2 epochs of 6 examples)", "add input_batch.shape[0] per step.")


# -- section 6.8: using the classifier ----------------------------------------------------------------------------

@CHECKS.register("test_classify_review", subject="classify_review",
                 description="classify_review pads to max_length and answers 'spam' for class 1")
def check_classify_review(ns):
    model = LastTokenParity()
    answer = ns["classify_review"]("Hi!", model, CharTokenizer(), "cpu", max_length=6, pad_token_id=1)
    require(bool(model.seen), "the model was never called.", "return the class of model(input)[:, -1, :].")
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
