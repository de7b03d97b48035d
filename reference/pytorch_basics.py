"""Appendix A: an introduction to PyTorch.

The pieces of a complete PyTorch training run, small enough to follow every number:

1. :class:`NeuralNetwork`: a multilayer perceptron (two hidden layers of 30 and 20 units with ReLU),
   built from ``nn.Linear`` layers inside an ``nn.Sequential`` called ``layers``.
2. :class:`ToyDataset`: a ``Dataset`` over feature and label tensors, which a ``DataLoader`` turns into
   (shuffled) mini-batches.
3. The book's toy data: five training and two test examples, two features each, two classes
   (:data:`X_train`, :data:`y_train`, :data:`X_test`, :data:`y_test`).
4. :func:`train_model`: the typical training loop (forward pass, cross-entropy loss, ``zero_grad``,
   ``backward``, ``step``), on the CPU or a GPU.
5. :func:`compute_accuracy`: the share of correctly classified examples of a data loader.

With the book's seeds (``torch.manual_seed(123)`` before building the model, SGD with a learning rate of
0.5, batches of 2 with ``drop_last=True``, 3 epochs) the loss falls from 0.75 to 0.00 and both training
and test accuracy are 1.0, as printed in the book.

Shapes: ``b`` is the batch size, ``num_inputs`` the number of features, ``num_outputs`` the number of
classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "NeuralNetwork",
    "ToyDataset",
    "X_train",
    "y_train",
    "X_test",
    "y_test",
    "train_model",
    "compute_accuracy",
]


class NeuralNetwork(nn.Module):
    """A multilayer perceptron: num_inputs -> 30 -> 20 -> num_outputs, with ReLU after each hidden layer.

    The output layer has no activation: the model returns logits, and the loss function
    (``F.cross_entropy``) applies the softmax itself, which is faster and numerically more stable.
    ``NeuralNetwork(50, 3)`` has 50*30+30 + 30*20+20 + 20*3+3 = 2,213 trainable parameters.
    """

    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        # Sequential calls its layers in order; the indices 0, 2 and 4 are the Linear layers
        # (model.layers[0].weight is the first hidden layer's (30, num_inputs) weight matrix).
        self.layers = nn.Sequential(
            # 1st hidden layer
            nn.Linear(num_inputs, 30),
            nn.ReLU(),
            # 2nd hidden layer
            nn.Linear(30, 20),
            nn.ReLU(),
            # output layer
            nn.Linear(20, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.layers(x)  # (b, num_inputs) -> (b, num_outputs)
        return logits


class ToyDataset(Dataset):
    """A map-style dataset: example ``index`` is the pair (features[index], labels[index]).

    A ``DataLoader`` asks for examples by index and stacks them into batches, so a dataset only needs
    ``__getitem__`` and ``__len__``.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.features = X  # (num_examples, num_inputs)
        self.labels = y  # (num_examples,)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        one_x = self.features[index]  # (num_inputs,)
        one_y = self.labels[index]  # () a class label
        return one_x, one_y

    def __len__(self) -> int:
        return self.labels.shape[0]


# The book's toy data: class 0 lies top left (x1 < 0, x2 > 0), class 1 bottom right.
X_train = torch.tensor(
    [
        [-1.2, 3.1],
        [-0.9, 2.9],
        [-0.5, 2.6],
        [2.3, -1.1],
        [2.7, -1.5],
    ]
)  # (5, 2)
y_train = torch.tensor([0, 0, 0, 1, 1])  # (5,)

X_test = torch.tensor(
    [
        [-0.8, 2.8],
        [2.6, -1.6],
    ]
)  # (2, 2)
y_test = torch.tensor([0, 1])  # (2,)


def train_model(
    model: nn.Module,
    train_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    num_epochs: int,
    verbose: bool = False,
) -> list[float]:
    """Train ``model`` for ``num_epochs`` passes over ``train_loader``; return the loss of every step.

    The model must already be on ``device`` (move it before creating the optimizer, as the book does:
    ``model.to(device)``); every batch is moved there as it arrives. With ``verbose=True`` each step prints
    the book's log line (``Epoch: 001/003 | Batch 001/002 | Train/Val Loss: 0.75``).
    """
    losses = []
    for epoch in range(num_epochs):
        # Training mode matters for layers such as dropout; set it at the start of every epoch because an
        # evaluation in between (compute_accuracy) switches the model to eval mode.
        model.train()
        for batch_idx, (features, labels) in enumerate(train_loader):
            features, labels = features.to(device), labels.to(device)  # (b, num_inputs), (b,)
            logits = model(features)  # (b, num_outputs)
            loss = F.cross_entropy(logits, labels)  # () mean over the batch

            # Gradients accumulate in .grad: clear the previous step's before computing this step's.
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            losses.append(loss.item())
            if verbose:
                print(
                    f"Epoch: {epoch + 1:03d}/{num_epochs:03d}"
                    f" | Batch {batch_idx + 1:03d}/{len(train_loader):03d}"
                    f" | Train/Val Loss: {loss:.2f}"
                )
        model.eval()
    return losses


def compute_accuracy(model: nn.Module, dataloader: DataLoader, device: torch.device | str | None = None) -> float:
    """The fraction (0.0 to 1.0) of the examples in ``dataloader`` whose predicted class is the label.

    ``device`` is where the batches go; by default the device of the model's parameters (the book's first
    version has no ``device`` argument and runs on the CPU, its GPU version passes it).
    """
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    correct = 0
    total_examples = 0
    for features, labels in dataloader:
        features, labels = features.to(device), labels.to(device)  # (b, num_inputs), (b,)
        # No gradients are needed to evaluate: no_grad saves the memory and time of recording the graph.
        with torch.no_grad():
            logits = model(features)  # (b, num_outputs)
        # The largest logit is also the largest softmax probability, so the softmax can be skipped.
        predictions = torch.argmax(logits, dim=1)  # (b,)
        compare = labels == predictions  # (b,) True where correct
        correct += int(torch.sum(compare))
        total_examples += len(compare)
    if total_examples == 0:
        raise ValueError("compute_accuracy: the data loader yielded no examples")
    return correct / total_examples
