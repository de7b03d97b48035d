"""Chapter 6: finetuning a pretrained GPT as a text classifier (spam or not spam).

The steps, in the chapter's order:

1. Data: text messages labelled ``ham``/``spam``, balanced by undersampling the majority class
   (:func:`create_balanced_dataset`), labels mapped to 0/1, shuffled and split 70 / 10 / 20
   (:func:`random_split`, seeded), written as CSV files (:func:`write_spam_splits` does all of it).
2. :class:`SpamDataset`: every message tokenized, truncated or padded to one length, with its label.
3. The model: the pretrained GPT's 50,257-way output head is replaced by a ``num_classes``-way one, and
   everything is frozen except the last transformer block, the final LayerNorm and the new head
   (:func:`prepare_model_for_classification`).
4. The prediction is read from the LAST token's output only: because of the causal mask it is the only
   position that has seen the whole message (:func:`calc_loss_batch`, :func:`calc_accuracy_loader`).
5. Training (:func:`train_classifier_simple`), chapter 5's loop that counts examples instead of tokens
   and measures accuracy after every epoch; :func:`plot_values` draws the curves.
6. :func:`classify_review`: one message in, ``"spam"`` or ``"not spam"`` out.

Data frames use the book's column names: ``"Label"`` and ``"Text"``. Shapes: ``b`` is the batch size,
``n`` the dataset's padded length.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:  # matplotlib is imported by plot_values only: it costs about a second to import
    from matplotlib.figure import Figure

__all__ = [
    "create_balanced_dataset",
    "random_split",
    "write_spam_splits",
    "SpamDataset",
    "replace_output_head",
    "prepare_model_for_classification",
    "calc_accuracy_loader",
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate_model",
    "train_classifier_simple",
    "plot_values",
    "classify_review",
]


# --- the data -------------------------------------------------------------------------------------------------


def create_balanced_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """As many ``ham`` rows as there are ``spam`` rows: all the spam, and a seeded sample of the ham.

    The ham rows are drawn with pandas' ``sample(..., random_state=123)``, so the result is the same on
    every run; the ham subset comes first, then all the spam, each in its own order.
    """
    num_spam = df[df["Label"] == "spam"].shape[0]
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced_df = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    return balanced_df


def random_split(
    df: pd.DataFrame, train_frac: float, validation_frac: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle (seeded: ``random_state=123``), then cut into train, validation and test parts.

    The sizes are ``int(len * train_frac)`` and ``int(len * validation_frac)``; the test part is the rest.
    The index is reset by the shuffle, so the parts are numbered 0.. in shuffled order.
    """
    df = df.sample(frac=1, random_state=123).reset_index(drop=True)

    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)

    train_df = df[:train_end]
    validation_df = df[train_end:validation_end]
    test_df = df[validation_end:]
    return train_df, validation_df, test_df


def write_spam_splits(
    data_file_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    train_frac: float = 0.7,
    validation_frac: float = 0.1,
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """The chapter's data preparation in one call: read, balance, label 0/1, split, write CSVs.

    ``data_file_path`` is a ``label<TAB>text`` file without header (the SMS Spam Collection's layout, or
    the course's ``data/sms_spam_sample.tsv``). Writes ``train.csv``, ``validation.csv`` and ``test.csv``
    (columns ``Label``, ``Text``) into ``output_dir`` and returns their paths in that order.
    """
    df = pd.read_csv(data_file_path, sep="\t", header=None, names=["Label", "Text"])
    balanced_df = create_balanced_dataset(df)
    balanced_df["Label"] = balanced_df["Label"].map({"ham": 0, "spam": 1})  # the class indices

    train_df, validation_df, test_df = random_split(balanced_df, train_frac, validation_frac)
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = (output_dir / "train.csv", output_dir / "validation.csv", output_dir / "test.csv")
    for part, path in zip((train_df, validation_df, test_df), paths):
        part.to_csv(path, index=None)
    return paths


class SpamDataset(Dataset):
    """Messages from a CSV file (columns ``Label``, ``Text``), tokenized and brought to one length.

    With ``max_length=None`` the length is the longest message's token count, and shorter messages are
    padded with ``pad_token_id``. With a ``max_length`` (typically the training set's, for the validation
    and test sets), longer messages are truncated to it and shorter ones padded. Items are
    ``(token_ids, label)``: a (max_length,) and a 0-d long tensor.

    Attributes: ``data`` (the data frame), ``encoded_texts`` (the padded token id lists), ``max_length``.
    """

    def __init__(self, csv_file, tokenizer, max_length: int | None = None, pad_token_id: int = 50256):
        self.data = pd.read_csv(csv_file)

        # Tokenize once, here, rather than on every access.
        self.encoded_texts = [tokenizer.encode(text) for text in self.data["Text"]]

        if max_length is None:
            self.max_length = self._longest_encoded_length()
        else:
            self.max_length = max_length
            # A message longer than max_length keeps its first max_length tokens.
            self.encoded_texts = [encoded_text[: self.max_length] for encoded_text in self.encoded_texts]

        # Pad at the end, so that every item has max_length tokens and a batch is one tensor.
        self.encoded_texts = [
            encoded_text + [pad_token_id] * (self.max_length - len(encoded_text))
            for encoded_text in self.encoded_texts
        ]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoded_texts[index]
        label = self.data.iloc[index]["Label"]
        return torch.tensor(encoded, dtype=torch.long), torch.tensor(label, dtype=torch.long)  # (n,), ()

    def __len__(self) -> int:
        return len(self.data)

    def _longest_encoded_length(self) -> int:
        return max((len(encoded_text) for encoded_text in self.encoded_texts), default=0)


# --- the model ------------------------------------------------------------------------------------------------


def replace_output_head(model: nn.Module, num_classes: int = 2) -> nn.Linear:
    """Give ``model`` a new output head ``model.out_head``: a (trainable) Linear from emb_dim to num_classes.

    The new layer has a bias (``nn.Linear``'s default), unlike GPT's vocabulary head; its weights are drawn
    from the global random generator, so seed it first (the book calls ``torch.manual_seed(123)`` just
    before) to get the book's head. Returns the new head.
    """
    emb_dim = model.out_head.in_features
    model.out_head = nn.Linear(in_features=emb_dim, out_features=num_classes)
    return model.out_head


def prepare_model_for_classification(model: nn.Module, num_classes: int = 2) -> nn.Module:
    """The book's section 6.5 on a GPTModel, in place: freeze, new head, unfreeze the top of the model.

    1. Every parameter is frozen (``requires_grad = False``).
    2. ``model.out_head`` becomes a new ``nn.Linear(emb_dim, num_classes)`` (trainable, see
       :func:`replace_output_head`; seed the global generator first for reproducible weights).
    3. The last transformer block (``model.trf_blocks[-1]``) and the final LayerNorm (``model.final_norm``)
       are made trainable again: training a little more than the head alone classifies noticeably better.

    Module names and the state_dict keys are unchanged, except ``out_head.weight`` which is now
    (num_classes, emb_dim), and the new ``out_head.bias``. Returns ``model``.
    """
    for param in model.parameters():
        param.requires_grad = False

    replace_output_head(model, num_classes)

    for param in model.trf_blocks[-1].parameters():
        param.requires_grad = True
    for param in model.final_norm.parameters():
        param.requires_grad = True
    return model


# --- loss and accuracy ----------------------------------------------------------------------------------------


def calc_accuracy_loader(data_loader, model: nn.Module, device, num_batches: int | None = None) -> float:
    """The fraction of correctly classified examples in the first ``num_batches`` batches (default: all).

    Puts the model in eval mode (and leaves it there). The predicted class is the argmax of the last
    token's logits.
    """
    model.eval()
    correct_predictions, num_examples = 0, 0

    if num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))

    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            input_batch, target_batch = input_batch.to(device), target_batch.to(device)  # (b, n), (b,)
            with torch.no_grad():
                # Only the last position has attended to every token of the message.
                logits = model(input_batch)[:, -1, :]  # (b, num_classes)
            predicted_labels = torch.argmax(logits, dim=-1)  # (b,)

            num_examples += predicted_labels.shape[0]
            correct_predictions += (predicted_labels == target_batch).sum().item()
        else:
            break
    return correct_predictions / num_examples


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module, device) -> torch.Tensor:
    """Cross-entropy between the last token's logits and the class labels, averaged over the batch."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)  # (b, n), (b,)
    logits = model(input_batch)[:, -1, :]  # (b, num_classes): the last token's output only
    loss = torch.nn.functional.cross_entropy(logits, target_batch)
    return loss


def calc_loss_loader(data_loader, model: nn.Module, device, num_batches: int | None = None) -> float:
    """The mean of :func:`calc_loss_batch` over the first ``num_batches`` batches (default: all).

    An empty loader gives nan. Same as chapter 5's, with this chapter's :func:`calc_loss_batch`.
    """
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        # Never more batches than the loader has.
        num_batches = min(num_batches, len(data_loader))

    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            total_loss += loss.item()
        else:
            break
    return total_loss / num_batches


def evaluate_model(model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    """Training and validation loss on ``eval_iter`` batches each, in eval mode without gradients.

    The model is put back in training mode afterwards.
    """
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


# --- training -------------------------------------------------------------------------------------------------


def train_classifier_simple(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Chapter 5's training loop for classification.

    One optimizer step per batch. Every ``eval_freq`` steps (counted from 0 over all epochs) the training
    and validation losses are measured on ``eval_iter`` batches each, recorded and printed; after every
    epoch, the training and validation accuracies on ``eval_iter`` batches each.

    Returns:
        (train_losses, val_losses, train_accs, val_accs, examples_seen): the losses once per evaluation,
        the accuracies once per epoch, and the number of training examples seen (not tokens: one label
        per example).
    """
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1

    for epoch in range(num_epochs):
        model.train()  # dropout on (calc_accuracy_loader below leaves the model in eval mode)

        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients accumulate otherwise
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]  # examples, not tokens
            global_step += 1

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        train_accuracy = calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)
        val_accuracy = calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)
        print(f"Training accuracy: {train_accuracy * 100:.2f}% | ", end="")
        print(f"Validation accuracy: {val_accuracy * 100:.2f}%")
        train_accs.append(train_accuracy)
        val_accs.append(val_accuracy)

    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(
    epochs_seen, examples_seen, train_values, val_values, label: str = "loss",
    save_path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Training and validation values (loss or accuracy) against epochs (bottom) and examples seen (top).

    ``label`` names the values in the legend and on the y-axis. Returns the matplotlib figure, drawn with
    the Agg backend without pyplot (no window, no global state; a notebook displays the returned figure);
    ``save_path`` also writes it. The book's version always writes ``f"{label}-plot.pdf"`` into the
    working directory and shows the figure instead.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    FigureCanvasAgg(fig)  # the canvas that renders the figure (savefig, notebook display)
    ax1 = fig.add_subplot()

    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()

    # A second x-axis on top sharing the y-axis; an invisible line aligns its ticks with the examples seen.
    ax2 = ax1.twiny()
    ax2.plot(examples_seen, train_values, alpha=0)
    ax2.set_xlabel("Examples seen")

    fig.tight_layout()
    if save_path is not None:
        fig.savefig(save_path)
    return fig


# --- using the classifier -------------------------------------------------------------------------------------


def classify_review(
    text: str, model: nn.Module, tokenizer, device, max_length: int | None = None, pad_token_id: int = 50256
) -> str:
    """Classify one message: ``"spam"`` (class 1) or ``"not spam"`` (class 0).

    The message is prepared as :class:`SpamDataset` prepares the training data: truncated to
    ``max_length`` tokens (and never beyond the model's context length), then padded with ``pad_token_id``
    to ``max_length``. Pass the training set's ``max_length``: the classifier learned to read its answer
    after exactly that much padding.

    ``max_length=None`` is not in the book's use (its package fails on it): here the message is then
    only cut to the context length, without padding.

    Raises:
        ValueError: ``max_length`` is longer than the model's context length (the padded input would not
            fit; the book's notebook asserts the same).
    """
    model.eval()

    input_ids = tokenizer.encode(text)
    supported_context_length = model.pos_emb.weight.shape[0]  # rows of the position embedding
    if max_length is not None and max_length > supported_context_length:
        raise ValueError(f"max_length ({max_length}) exceeds the model's context length ({supported_context_length})")

    if max_length is None:
        input_ids = input_ids[:supported_context_length]
    else:
        input_ids = input_ids[: min(max_length, supported_context_length)]
        input_ids += [pad_token_id] * (max_length - len(input_ids))
    input_tensor = torch.tensor(input_ids, device=device).unsqueeze(0)  # (1, max_length): a batch of one

    with torch.no_grad():
        logits = model(input_tensor)[:, -1, :]  # (1, num_classes): the last token's output
    predicted_label = torch.argmax(logits, dim=-1).item()

    return "spam" if predicted_label == 1 else "not spam"
