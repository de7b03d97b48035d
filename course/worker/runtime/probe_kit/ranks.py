"""Helpers of appendix A's probes: the rendezvous of the ranks of a distributed run, and SGD written out.

The grader replays the students' training runs in one process with the same PlainSGD (it imports this module
under the same name), so that both sides take bit-for-bit the same steps.
"""

import contextlib
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


# -- the book's GPU calls, on a grader without GPUs ---------------------------------------------------------------

def _cpu_device(value):
    """`value` as a device argument of .to(): a GPU (an int index, "cuda", "cuda:1", torch.device("cuda", 1)) becomes
    the CPU; anything else (a dtype, a tensor, the CPU) is left alone."""
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cpu")
    if isinstance(value, (str, torch.device)):
        try:
            if torch.device(value).type == "cuda":
                return torch.device("cpu")
        except (RuntimeError, TypeError):
            pass
    return value


def _on_the_cpu(original):
    """A .to() that serves a request for a GPU with the CPU."""

    def to(self, *args, **kwargs):
        args = [_cpu_device(arg) for arg in args]
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return original(self, *args, **kwargs)

    return to


class BackendsAsked:
    """What ddp_setup asked torch.distributed for, while `gpu_calls_served` is active: .backends (each call's backend
    argument, None where it gave none) and .initialise (False: record the request and make no process group)."""

    def __init__(self):
        self.backends, self.initialise = [], True


@contextlib.contextmanager
def gpu_calls_served(student, master_port):
    """Run the book's DDP code, written for NVIDIA GPUs, where the grader has none (or fewer): while the block runs,

    * init_process_group records the backend asked for and, without CUDA, serves a request for nccl with gloo;
      the ranks meet at the grader's port whatever MASTER_ADDR and MASTER_PORT the code set (the book writes
      localhost:12345 into them);
    * without CUDA, torch.cuda.set_device does nothing, .to(rank) / .to("cuda") keeps a tensor or a model on the
      CPU, and DistributedDataParallel leaves out the device_ids of a model on the CPU.

    With CUDA, only the backend is recorded and the port is the grader's. Gives a BackendsAsked; everything is put
    back afterwards."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    from torch.nn.parallel import DistributedDataParallel

    asked = BackendsAsked()
    original_init = distributed_c10d.init_process_group
    gpus = torch.cuda.is_available()

    def init_process_group(backend=None, *args, **kwargs):
        asked.backends.append(backend)
        if not asked.initialise:
            return None
        if not gpus:
            if isinstance(backend, str) and "nccl" in backend.lower():
                backend = "gloo"
            if kwargs.get("device_id") is not None:
                kwargs["device_id"] = None
        use_master(master_port)
        return original_init(backend, *args, **kwargs)

    def ddp_init(self, module, *args, **kwargs):
        on_cpu = all(parameter.device.type == "cpu" for parameter in module.parameters())
        if on_cpu and not gpus:
            kwargs.pop("device_ids", None), kwargs.pop("output_device", None)
            args = (None, None, *args[2:]) if args else ()  # DDP(module, device_ids, output_device, ...)
        original_ddp_init(self, module, *args, **kwargs)

    saved = []

    def swap(owner, name, value):
        saved.append((owner, name, owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else
                      getattr(owner, name, _ABSENT)))
        setattr(owner, name, value)

    original_ddp_init = DistributedDataParallel.__init__
    try:
        for owner in (dist, distributed_c10d):
            swap(owner, "init_process_group", init_process_group)
        for name, value in list(vars(student).items()):
            if value is original_init:  # `from torch.distributed import init_process_group`
                swap(student, name, init_process_group)
        if not gpus:
            swap(torch.cuda, "set_device", lambda device: None)
            swap(torch.Tensor, "to", _on_the_cpu(torch.Tensor.to))
            swap(nn.Module, "to", _on_the_cpu(nn.Module.to))
            swap(DistributedDataParallel, "__init__", ddp_init)
        yield asked
    finally:
        for owner, name, value in reversed(saved):
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


_ABSENT = object()
