"""Tests of reference/pytorch_basics.py (appendix A: an introduction to PyTorch).

The book's printed figures come from its notebook code-part1.ipynb (torch.manual_seed(123) throughout).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from reference.pytorch_basics import (
    NeuralNetwork,
    ToyDataset,
    X_test,
    X_train,
    compute_accuracy,
    train_model,
    y_test,
    y_train,
)

BOOK_LOSSES = [0.75, 0.65, 0.44, 0.13, 0.03, 0.00]  # printed with two decimals, one per step
BOOK_TRAIN_LOGITS = torch.tensor(
    [[2.8569, -4.1618], [2.5382, -3.7548], [2.0944, -3.1820], [-1.4814, 1.4816], [-1.7176, 1.7342]]
)


@pytest.fixture(scope="module")
def book_run():
    """The book's training run: seed 123, SGD lr 0.5, batches of 2 (shuffled, drop_last), 3 epochs."""
    torch.manual_seed(123)
    model = NeuralNetwork(num_inputs=2, num_outputs=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    # Shuffling draws its seed from the global generator when each epoch starts, after the model was built.
    train_loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2, shuffle=True, num_workers=0, drop_last=True)
    losses = train_model(model, train_loader, optimizer, device="cpu", num_epochs=3)
    return model, losses


# --- the network -------------------------------------------------------------------------------------------


def test_parameter_count_50_to_3():
    model = NeuralNetwork(50, 3)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2213


def test_layers_are_the_books():
    model = NeuralNetwork(50, 3)
    kinds = [(type(layer).__name__, getattr(layer, "in_features", None), getattr(layer, "out_features", None))
             for layer in model.layers]
    assert kinds == [("Linear", 50, 30), ("ReLU", None, None), ("Linear", 30, 20), ("ReLU", None, None),
                     ("Linear", 20, 3)]


def test_state_dict_names_and_shapes():
    shapes = {name: tuple(tensor.shape) for name, tensor in NeuralNetwork(50, 3).state_dict().items()}
    assert shapes == {
        "layers.0.weight": (30, 50),
        "layers.0.bias": (30,),
        "layers.2.weight": (20, 30),
        "layers.2.bias": (20,),
        "layers.4.weight": (3, 20),
        "layers.4.bias": (3,),
    }


def test_seeded_output_is_the_books():
    torch.manual_seed(123)
    model = NeuralNetwork(50, 3)
    torch.manual_seed(123)
    X = torch.rand((1, 50))
    with torch.no_grad():
        out = model(X)
    assert torch.allclose(out, torch.tensor([[-0.1262, 0.1080, -0.1792]]), atol=5e-5)


def test_seeded_softmax_is_the_books():
    torch.manual_seed(123)
    model = NeuralNetwork(50, 3)
    torch.manual_seed(123)
    X = torch.rand((1, 50))
    with torch.no_grad():
        probas = torch.softmax(model(X), dim=1)
    assert torch.allclose(probas, torch.tensor([[0.3113, 0.3934, 0.2952]]), atol=5e-5)


def test_forward_is_two_relu_hidden_layers():
    torch.manual_seed(0)
    model = NeuralNetwork(4, 3)
    x = torch.randn(5, 4)
    l0, l2, l4 = model.layers[0], model.layers[2], model.layers[4]
    by_hand = torch.relu(torch.relu(x @ l0.weight.T + l0.bias) @ l2.weight.T + l2.bias) @ l4.weight.T + l4.bias
    assert torch.allclose(model(x), by_hand, atol=1e-6)


def test_gradients_match_finite_differences():
    # Autograd's gradient of the loss against central differences, in float64, for a few entries of every
    # weight and bias: (L(p + eps) - L(p - eps)) / (2 eps).
    torch.manual_seed(0)
    model = NeuralNetwork(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), labels)

    loss().backward()
    eps, worst = 1e-6, 0.0
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            flat, grad = param.view(-1), param.grad.view(-1)
            for index in torch.randint(0, flat.numel(), (3,), generator=generator).tolist():
                original = flat[index].item()
                flat[index] = original + eps
                up = loss().item()
                flat[index] = original - eps
                down = loss().item()
                flat[index] = original
                worst = max(worst, abs((up - down) / (2 * eps) - grad[index].item()))
    assert worst < 1e-7


def test_backward_fills_every_gradient():
    torch.manual_seed(0)
    model = NeuralNetwork(3, 2)
    nn.functional.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 1, 0])).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


# --- the dataset -------------------------------------------------------------------------------------------


def test_toy_dataset_length():
    assert len(ToyDataset(X_train, y_train)) == 5


def test_toy_dataset_item():
    features, label = ToyDataset(X_train, y_train)[3]
    assert (features.tolist(), int(label)) == ([2.299999952316284, -1.100000023841858], 1)


@pytest.mark.parametrize(("attribute", "tensor"), [("features", X_test), ("labels", y_test)])
def test_toy_dataset_attributes(attribute, tensor):
    assert getattr(ToyDataset(X_test, y_test), attribute) is tensor


def test_toy_data_shapes():
    assert (X_train.shape, y_train.shape, X_test.shape, y_test.shape) == ((5, 2), (5,), (2, 2), (2,))


def test_drop_last_keeps_full_batches():
    loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2, shuffle=True, drop_last=True)
    assert [len(labels) for _, labels in loader] == [2, 2]


# --- training and accuracy (the book's run) ----------------------------------------------------------------


def test_book_losses(book_run):
    _, losses = book_run
    assert [round(loss, 2) for loss in losses] == BOOK_LOSSES


def test_loss_falls(book_run):
    _, losses = book_run
    assert losses[-1] < losses[0] / 10


def test_book_logits_after_training(book_run):
    model, _ = book_run
    with torch.no_grad():
        logits = model(X_train)
    assert torch.allclose(logits, BOOK_TRAIN_LOGITS, atol=5e-5)


def test_book_predictions(book_run):
    model, _ = book_run
    with torch.no_grad():
        predictions = torch.argmax(model(X_train), dim=1)
    assert predictions.tolist() == [0, 0, 0, 1, 1]


def test_train_accuracy_is_one(book_run):
    model, _ = book_run
    loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2, shuffle=True, drop_last=True)
    assert compute_accuracy(model, loader) == 1.0


def test_test_accuracy_is_one(book_run):
    model, _ = book_run
    loader = DataLoader(ToyDataset(X_test, y_test), batch_size=2, shuffle=False)
    assert compute_accuracy(model, loader, device="cpu") == 1.0


def test_train_model_logs_the_books_lines(capsys):
    torch.manual_seed(123)
    model = NeuralNetwork(2, 2)
    loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2, shuffle=True, drop_last=True)
    train_model(model, loader, torch.optim.SGD(model.parameters(), lr=0.5), "cpu", num_epochs=3, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch: 001/003 | Batch 001/002 | Train/Val Loss: 0.75"


def test_train_model_is_quiet_by_default(capsys):
    model = NeuralNetwork(2, 2)
    loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2)
    train_model(model, loader, torch.optim.SGD(model.parameters(), lr=0.5), "cpu", num_epochs=1)
    assert capsys.readouterr().out == ""


def test_compute_accuracy_counts_a_fraction():
    model = NeuralNetwork(2, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.layers[4].bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2)
    assert compute_accuracy(model, loader) == pytest.approx(3 / 5)


def test_compute_accuracy_leaves_the_model_in_eval_mode(book_run):
    model = NeuralNetwork(2, 2)
    model.train()
    compute_accuracy(model, DataLoader(ToyDataset(X_test, y_test), batch_size=2))
    assert not model.training


def test_compute_accuracy_rejects_an_empty_loader():
    empty = ToyDataset(X_train[:0], y_train[:0])
    with pytest.raises(ValueError, match="no examples"):
        compute_accuracy(NeuralNetwork(2, 2), DataLoader(empty, batch_size=2))
