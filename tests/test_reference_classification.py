"""Tests of reference/classification.py (chapter 6: finetuning for classification)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reference.classification import (
    SpamDataset,
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_loader,
    classify_review,
    create_balanced_dataset,
    evaluate_model,
    plot_values,
    prepare_model_for_classification,
    random_split,
    replace_output_head,
    train_classifier_simple,
    write_spam_splits,
)
from reference.gpt import GPTModel
from reference.tiktoken_offline import get_gpt2_tokenizer
from tests.compact_vocab import CompactTokenizer, one_thread, tiny_gpt_config

DATA = Path(__file__).resolve().parents[1] / "data" / "sms_spam_sample.tsv"
PAD = 50256
# The book's two examples for classify_review (section 6.8).
TEXT_1 = "You are a winner you have been specially selected to receive $1000 cash or a $2000 award."
TEXT_2 = "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_on_one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def df():
    return pd.read_csv(DATA, sep="\t", header=None, names=["Label", "Text"])


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_spam_splits(DATA, tmp_path_factory.mktemp("spam"))


@pytest.fixture(scope="module")
def compact(tokenizer, df):
    """GPT-2's tokens of the course's messages (and the book's two examples), renumbered."""
    return CompactTokenizer(tokenizer, list(df["Text"]) + [TEXT_1, TEXT_2])


def _tiny_gpt(vocab_size: int = 60, context_length: int = 48, seed: int = 123) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(tiny_gpt_config(vocab_size, context_length))


def _tiny_classifier(vocab_size: int = 60, context_length: int = 48) -> GPTModel:
    model = _tiny_gpt(vocab_size, context_length)
    torch.manual_seed(123)
    return prepare_model_for_classification(model, num_classes=2)


# --- the course's data ------------------------------------------------------------------------------------


def test_spam_sample_has_300_messages(df):
    assert len(df) == 300


def test_spam_sample_is_one_quarter_spam(df):
    assert df["Label"].value_counts().to_dict() == {"ham": 225, "spam": 75}


# --- balancing and splitting ------------------------------------------------------------------------------


def test_balanced_dataset_has_as_many_ham_as_spam(df):
    assert create_balanced_dataset(df)["Label"].value_counts().to_dict() == {"ham": 75, "spam": 75}


def test_balanced_dataset_keeps_every_spam_message(df):
    balanced = create_balanced_dataset(df)
    assert set(balanced[balanced["Label"] == "spam"].index) == set(df[df["Label"] == "spam"].index)


def test_balanced_dataset_puts_the_ham_sample_first(df):
    balanced = create_balanced_dataset(df)
    assert (balanced["Label"].iloc[:75] == "ham").all()


def test_balanced_dataset_ham_sample_is_seeded(df):
    # pandas' sample(75, random_state=123) on the course's ham rows (numpy's legacy RandomState stream).
    assert create_balanced_dataset(df).index[:5].tolist() == [238, 285, 96, 30, 108]


def test_random_split_sizes(df):
    train, validation, test = random_split(create_balanced_dataset(df), 0.7, 0.1)
    assert (len(train), len(validation), len(test)) == (105, 15, 30)


def test_random_split_book_sizes():
    # The book's 1,494 balanced messages: 1045 / 149 / 300 (130, 19 and 38 batches of 8).
    frame = pd.DataFrame({"Label": [0] * 1494, "Text": ["x"] * 1494})
    train, validation, test = random_split(frame, 0.7, 0.1)
    assert (len(train), len(validation), len(test)) == (1045, 149, 300)


def test_book_batch_counts():
    # The book's loaders over those splits, batch size 8: 130 training (drop_last), 19 validation, 38 test.
    frame = pd.DataFrame({"Label": [0] * 1494, "Text": ["x"] * 1494})
    sizes = [len(part) for part in random_split(frame, 0.7, 0.1)]
    loaders = [DataLoader(range(n), batch_size=8, drop_last=(i == 0)) for i, n in enumerate(sizes)]
    assert [len(loader) for loader in loaders] == [130, 19, 38]


def test_random_split_is_a_seeded_shuffle_of_every_row(df):
    train, validation, test = random_split(df, 0.7, 0.1)
    together = pd.concat([train, validation, test])
    expected = df.sample(frac=1, random_state=123).reset_index(drop=True)
    assert together.equals(expected)


def test_random_split_resets_the_index(df):
    train, validation, _ = random_split(df, 0.7, 0.1)
    assert train.index[0] == 0
    assert validation.index[0] == len(train)


def test_write_spam_splits_files(splits):
    assert [path.name for path in splits] == ["train.csv", "validation.csv", "test.csv"]


def test_write_spam_splits_maps_labels_to_class_indices(splits):
    train = pd.read_csv(splits[0])
    assert list(train.columns) == ["Label", "Text"]
    assert set(train["Label"]) == {0, 1}


def test_write_spam_splits_sizes(splits):
    assert [len(pd.read_csv(path)) for path in splits] == [105, 15, 30]


# --- SpamDataset ------------------------------------------------------------------------------------------


def test_spam_dataset_pads_to_the_longest_message(splits, tokenizer):
    dataset = SpamDataset(splits[0], tokenizer)
    assert dataset.max_length == 32
    assert all(len(encoded) == 32 for encoded in dataset.encoded_texts)


def test_spam_dataset_item_is_padded_tokens_and_label(splits, tokenizer):
    dataset = SpamDataset(splits[0], tokenizer)
    first = pd.read_csv(splits[0]).iloc[0]
    tokens = tokenizer.encode(first["Text"])
    token_ids, label = dataset[0]
    assert token_ids.tolist() == tokens + [PAD] * (32 - len(tokens))
    assert label.item() == first["Label"]


def test_spam_dataset_item_dtypes_and_shapes(splits, tokenizer):
    token_ids, label = SpamDataset(splits[0], tokenizer)[3]
    assert (token_ids.dtype, label.dtype) == (torch.long, torch.long)
    assert (token_ids.shape, label.shape) == ((32,), ())


def test_spam_dataset_length(splits, tokenizer):
    assert len(SpamDataset(splits[1], tokenizer, max_length=32)) == 15


def test_spam_dataset_truncates_to_max_length(splits, tokenizer):
    dataset = SpamDataset(splits[0], tokenizer, max_length=6)
    text = pd.read_csv(splits[0]).iloc[0]["Text"]
    assert dataset.max_length == 6
    assert dataset[0][0].tolist() == tokenizer.encode(text)[:6]


def test_spam_dataset_pads_shorter_sets_to_the_given_length(splits, tokenizer):
    # The book pads the validation and test sets to the training set's length.
    dataset = SpamDataset(splits[1], tokenizer, max_length=40)
    assert {len(encoded) for encoded in dataset.encoded_texts} == {40}


def test_spam_dataset_custom_pad_token(splits, tokenizer):
    dataset = SpamDataset(splits[0], tokenizer, max_length=40, pad_token_id=0)
    assert dataset[0][0][-1].item() == 0


# --- the model ------------------------------------------------------------------------------------------


def test_new_head_maps_emb_dim_to_num_classes():
    model = _tiny_classifier()
    assert isinstance(model.out_head, nn.Linear)
    assert (model.out_head.in_features, model.out_head.out_features) == (32, 2)
    assert model.out_head.bias is not None


def test_new_head_is_the_books_seeded_linear():
    model = _tiny_gpt()
    torch.manual_seed(123)
    prepare_model_for_classification(model, num_classes=2)
    torch.manual_seed(123)
    expected = nn.Linear(in_features=32, out_features=2)
    assert torch.equal(model.out_head.weight, expected.weight)
    assert torch.equal(model.out_head.bias, expected.bias)


def test_only_the_last_block_the_final_norm_and_the_head_are_trainable():
    model = _tiny_classifier()
    trainable = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("trf_blocks") else "")
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"trf_blocks.1", "final_norm", "out_head"}


def test_every_parameter_of_the_last_block_is_trainable():
    model = _tiny_classifier()
    assert all(p.requires_grad for p in model.trf_blocks[-1].parameters())


def test_state_dict_keys_are_the_models_plus_the_head_bias():
    model = _tiny_gpt()
    before = set(model.state_dict())
    prepare_model_for_classification(model)
    assert set(model.state_dict()) == before | {"out_head.bias"}


def test_num_classes():
    model = _tiny_gpt()
    prepare_model_for_classification(model, num_classes=5)
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 5)


def test_frozen_parameters_get_no_gradient():
    model = _tiny_classifier()
    model(torch.randint(0, 60, (2, 7))).sum().backward()
    assert model.tok_emb.weight.grad is None
    assert all(p.grad is None for p in model.trf_blocks[0].parameters())
    assert model.out_head.weight.grad is not None


def test_replace_output_head_returns_the_new_trainable_head():
    model = _tiny_gpt()
    head = replace_output_head(model, num_classes=3)
    assert head is model.out_head
    assert head.weight.shape == (3, 32)
    assert head.weight.requires_grad


# --- loss and accuracy: the last token --------------------------------------------------------------------


class _LastTokenParity(nn.Module):
    """A stand-in classifier: class = last token id mod 2 (earlier positions predict the opposite)."""

    def forward(self, x):
        parity = (x % 2).float()  # (b, n)
        logits = torch.stack([1 - parity, parity], dim=-1)  # (b, n, 2)
        logits[:, :-1] = logits[:, :-1].flip(-1)  # only the last position is right
        return logits


def _parity_loader(batch_size=2):
    inputs = torch.tensor([[5, 2], [9, 3], [4, 4], [1, 8], [7, 7]])  # last tokens: 2, 3, 4, 8, 7
    labels = torch.tensor([0, 1, 1, 0, 0])  # correct, correct, wrong, correct, wrong
    return DataLoader(TensorDataset(inputs, labels), batch_size=batch_size)


def test_accuracy_reads_the_last_token():
    assert calc_accuracy_loader(_parity_loader(), _LastTokenParity(), "cpu") == pytest.approx(3 / 5)


def test_accuracy_on_the_first_num_batches():
    assert calc_accuracy_loader(_parity_loader(), _LastTokenParity(), "cpu", num_batches=1) == 1.0


def test_accuracy_num_batches_beyond_the_loader_uses_all():
    assert calc_accuracy_loader(_parity_loader(), _LastTokenParity(), "cpu", num_batches=9) == pytest.approx(3 / 5)


def test_loss_batch_is_cross_entropy_of_the_last_token():
    model = _tiny_classifier().eval()
    inputs, labels = torch.randint(0, 60, (3, 9)), torch.tensor([0, 1, 1])
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(inputs)[:, -1, :], labels)
        assert torch.allclose(calc_loss_batch(inputs, labels, model, "cpu"), expected, rtol=0, atol=1e-6)


def test_loss_loader_averages_the_first_num_batches():
    model = _tiny_classifier().eval()
    loader = _parity_loader()
    with torch.no_grad():
        per_batch = [calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
        assert calc_loss_loader(loader, model, "cpu", num_batches=2) == pytest.approx(sum(per_batch[:2]) / 2)


def test_loss_loader_num_batches_beyond_the_loader_uses_all():
    model = _tiny_classifier().eval()
    with torch.no_grad():
        assert calc_loss_loader(_parity_loader(), model, "cpu", num_batches=9) == pytest.approx(
            calc_loss_loader(_parity_loader(), model, "cpu")
        )


def test_loss_loader_of_an_empty_loader_is_nan():
    assert math.isnan(calc_loss_loader([], _tiny_classifier(), "cpu"))


def test_evaluate_model_returns_both_losses_and_training_mode():
    model = _tiny_classifier()
    model.eval()
    train_loss, val_loss = evaluate_model(model, _parity_loader(), _parity_loader(3), "cpu", eval_iter=1)
    assert math.isfinite(train_loss)
    assert math.isfinite(val_loss)
    assert model.training


# --- finetuning a tiny classifier on the course's messages ------------------------------------------------


@pytest.fixture(scope="module")
def classifier_run(splits, compact):
    """Seeded classification finetuning of a tiny GPT on the course's messages (CPU), with its output."""
    train_dataset = SpamDataset(splits[0], compact, pad_token_id=compact.eot_token)
    val_dataset = SpamDataset(splits[1], compact, max_length=train_dataset.max_length, pad_token_id=compact.eot_token)
    torch.manual_seed(123)
    train_loader = DataLoader(train_dataset, batch_size=8, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_dataset, batch_size=8, drop_last=False)

    model = _tiny_gpt(vocab_size=len(compact), context_length=48)
    torch.manual_seed(123)
    prepare_model_for_classification(model, num_classes=2)
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train_classifier_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=4, eval_freq=10, eval_iter=2
        )
    return result, model, train_dataset, printed.getvalue().splitlines()


def test_classifier_training_returns_the_books_five_values(classifier_run):
    (train_losses, val_losses, train_accs, val_accs, examples_seen), _, _, _ = classifier_run
    # 4 epochs x 13 batches = 52 steps, losses after steps 0, 10, ..., 50; accuracies once per epoch
    assert (len(train_losses), len(val_losses), len(train_accs), len(val_accs)) == (6, 6, 4, 4)
    assert examples_seen == 4 * 13 * 8


def test_classifier_training_loss_falls(classifier_run):
    (train_losses, _, _, _, _), _, _, _ = classifier_run
    assert train_losses[-1] < train_losses[0] - 0.3


def test_classifier_learns_to_tell_spam_from_ham(classifier_run, splits, compact):
    _, model, train_dataset, _ = classifier_run
    val_dataset = SpamDataset(splits[1], compact, max_length=train_dataset.max_length, pad_token_id=compact.eot_token)
    assert calc_accuracy_loader(DataLoader(val_dataset, batch_size=8), model, "cpu") >= 0.8


def test_classifier_training_prints_losses_and_accuracies(classifier_run):
    _, _, _, lines = classifier_run
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert sum(line.startswith("Training accuracy: ") and "| Validation accuracy: " in line for line in lines) == 4


# --- classify_review ----------------------------------------------------------------------------------------


def _predict_padded(model, token_ids, length, pad):
    padded = torch.tensor(token_ids + [pad] * (length - len(token_ids))).unsqueeze(0)
    with torch.no_grad():
        return "spam" if model(padded)[0, -1].argmax().item() == 1 else "not spam"


@pytest.mark.parametrize("text", [TEXT_1, TEXT_2])
def test_classify_review_pads_like_the_dataset(classifier_run, compact, text):
    _, model, train_dataset, _ = classifier_run
    expected = _predict_padded(model, compact.encode(text), train_dataset.max_length, compact.eot_token)
    result = classify_review(text, model, compact, "cpu", max_length=train_dataset.max_length,
                             pad_token_id=compact.eot_token)
    assert result == expected


def test_classify_review_truncates_to_max_length(compact):
    model = _tiny_classifier(vocab_size=len(compact))
    expected = _predict_padded(model, compact.encode(TEXT_1)[:5], 5, compact.eot_token)
    assert classify_review(TEXT_1, model, compact, "cpu", max_length=5, pad_token_id=compact.eot_token) == expected


def test_classify_review_without_max_length_does_not_pad(compact):
    model = _tiny_classifier(vocab_size=len(compact))
    token_ids = compact.encode(TEXT_2)
    expected = _predict_padded(model, token_ids, len(token_ids), compact.eot_token)
    assert classify_review(TEXT_2, model, compact, "cpu", pad_token_id=compact.eot_token) == expected


def test_classify_review_rejects_max_length_beyond_the_context(compact):
    model = _tiny_classifier(vocab_size=len(compact), context_length=48)
    with pytest.raises(ValueError, match="context length"):
        classify_review(TEXT_1, model, compact, "cpu", max_length=49)


def test_classify_review_answers_spam_for_class_1():
    class AlwaysSpam(nn.Module):
        pos_emb = nn.Embedding(16, 2)

        def forward(self, x):
            return torch.tensor([0.0, 1.0]).expand(*x.shape, 2)

    class Chars:
        def encode(self, text):
            return [ord(ch) % 16 for ch in text]

    assert classify_review("hello", AlwaysSpam(), Chars(), "cpu", max_length=8) == "spam"


# --- plot_values ----------------------------------------------------------------------------------------------


def test_plot_values_returns_a_figure_with_both_axes():
    fig = plot_values([0, 1, 2], [0, 80, 160], [0.9, 0.5, 0.3], [1.0, 0.6, 0.4], label="accuracy")
    assert isinstance(fig, Figure)
    ax1, ax2 = fig.axes
    assert (ax1.get_xlabel(), ax1.get_ylabel(), ax2.get_xlabel()) == ("Epochs", "Accuracy", "Examples seen")
    assert [text.get_text() for text in ax1.get_legend().get_texts()] == ["Training accuracy", "Validation accuracy"]


def test_plot_values_writes_the_file_when_asked(tmp_path):
    plot_values([0, 1], [0, 8], [0.5, 0.2], [0.6, 0.3], save_path=tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
