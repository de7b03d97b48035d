"""Correct stand-ins for the parts that appendix A's DDP `main` calls by name: NeuralNetwork, ToyDataset,
compute_accuracy, ddp_setup and prepare_dataset.

The grader runs the student's `main` with these in place of the student's own (probe_kit.parts.replaced), so a
bug in a part costs only that part's own tests. They keep the stubs' names, signatures and attribute names
(`layers`, `features`, `labels`), so the grader reads the trained parameters under the same names.
"""

import datetime

import torch
from torch import nn

# The book's toy data (section A.6): five training and two test examples, two features each.
X_TRAIN = [[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]]
Y_TRAIN = [0, 0, 0, 1, 1]
X_TEST = [[-0.8, 2.8], [2.6, -1.6]]
Y_TEST = [0, 1]


class NeuralNetwork(nn.Module):
    """num_inputs -> 30 -> ReLU -> 20 -> ReLU -> num_outputs (logits), in an nn.Sequential called layers."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        sizes = [num_inputs, 30, 20]
        hidden = [part for n_in, n_out in zip(sizes, sizes[1:]) for part in (nn.Linear(n_in, n_out), nn.ReLU())]
        self.layers = nn.Sequential(*hidden, nn.Linear(20, num_outputs))

    def forward(self, x):
        return self.layers(x)


class ToyDataset(torch.utils.data.Dataset):
    """Example `index` is the pair (X[index], y[index])."""

    def __init__(self, X, y):
        self.features, self.labels = X, y

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def __len__(self):
        return len(self.labels)


def compute_accuracy(model, dataloader, device=None):
    """The fraction of the loader's examples whose largest logit is at their label."""
    device = device if device is not None else next(model.parameters()).device
    model.eval()
    hits, seen = 0, 0
    with torch.no_grad():
        for features, labels in dataloader:
            predicted = model(features.to(device)).argmax(dim=-1)
            hits += int((predicted == labels.to(device)).sum())
            seen += labels.numel()
    return hits / seen


def ddp_setup(rank, world_size, backend=None, timeout=datetime.timedelta(seconds=60)):
    """Join the group at MASTER_ADDR:MASTER_PORT (set by the probe): nccl with CUDA, else gloo."""
    import torch.distributed as dist

    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(chosen, rank=rank, world_size=world_size, timeout=timeout)


def prepare_dataset():
    """(train_loader, test_loader) over the toy data; each rank draws its share through a DistributedSampler."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    train = ToyDataset(torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN))
    test = ToyDataset(torch.tensor(X_TEST), torch.tensor(Y_TEST))
    train_loader = DataLoader(train, batch_size=2, drop_last=True, sampler=DistributedSampler(train))
    return train_loader, DataLoader(test, batch_size=2)


PARTS = {"NeuralNetwork": NeuralNetwork, "ToyDataset": ToyDataset, "compute_accuracy": compute_accuracy,
         "ddp_setup": ddp_setup, "prepare_dataset": prepare_dataset}
