"""Helpers of appendix A's probes: the rendezvous of the ranks of a distributed run, and SGD written out.

The grader replays the students' training runs in one process with the same PlainSGD (it imports this module
under the same name), so that both sides take bit-for-bit the same steps.
"""

import os

import torch
from torch import nn


def use_master(master_port):
    """Point torch.distributed's env:// rendezvous at rank 0: this sandbox's loopback address and the free port
    that the grader chose for the ranks (submission.run_ranks passes it as master_port)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(master_port)


class PlainSGD:
    """torch.optim.SGD's update (p -= lr * grad, bit for bit), without torch.optim: its first step imports
    torch._dynamo, which takes seconds, and far longer under pytest's import hook."""

    def __init__(self, parameters, lr):
        self.parameters, self.lr = list(parameters), lr

    def zero_grad(self, set_to_none=True):
        for parameter in self.parameters:
            parameter.grad = None

    def step(self, closure=None):
        with torch.no_grad():
            for parameter in self.parameters:
                if parameter.grad is not None:
                    parameter.add_(parameter.grad, alpha=-self.lr)


def small_classifier(num_inputs, dropout=None):
    """The small classifier that the training loop and the accuracy are graded on: Linear(num_inputs, 8), ReLU,
    Dropout(dropout) when `dropout` is given, Linear(8, 2)."""
    layers = [nn.Linear(num_inputs, 8), nn.ReLU()]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(8, 2))
