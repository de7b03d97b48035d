"""Appendix A: training on several processes with DistributedDataParallel (DDP).

DDP runs one copy of the model per process (one per GPU, or several on a CPU). Every process reads a
different share of each batch; after ``loss.backward()`` the processes average their gradients (an
all-reduce), so every copy takes the same optimizer step and the copies stay identical.

The book's script, as functions (names and signatures are the book's):

- :func:`ddp_setup` joins the process group: the address and port of rank 0 (``MASTER_ADDR``,
  ``MASTER_PORT``), this process's ``rank`` and the ``world_size``. The backend follows the device:
  ``nccl`` for CUDA GPUs, ``gloo`` on the CPU.
- :func:`prepare_dataset` builds the data loaders; a ``DistributedSampler`` gives each rank its own,
  non-overlapping share of the training set.
- :func:`main` is what each process runs: set up, wrap the model in ``DDP``, train (calling the sampler's
  ``set_epoch`` every epoch), evaluate, and leave the group with ``destroy_process_group``.

Launching, for real, on two CPU processes:

- ``python -m reference.ddp`` starts the processes itself with ``torch.multiprocessing.spawn``;
- ``torchrun --standalone --nproc-per-node=2 -m reference.ddp`` lets torchrun start them.

What this module adds to the book's script, and why:

- **Ports.** The book hard-codes ``MASTER_PORT=12345``; two runs at once (tests in parallel) would then
  collide. :func:`ddp_setup` keeps the book's default but takes ``MASTER_ADDR``/``MASTER_PORT`` from the
  environment when they are set, which is also how torchrun passes them. :func:`launch` asks the operating
  system for a free port (binding to port 0), hands it to the processes it spawns, and retries with a new
  port in the rare case that another program took it in the meantime. We keep the ``env://`` rendezvous
  rather than a ``file://`` one so that the same ``ddp_setup`` serves both launchers, as in the book.
- **Hangs.** A peer that never joins, or stops answering, makes the others wait. ``init_process_group``
  gets a ``timeout``: a rank whose peers do not all join within it raises :class:`DDPTimeoutError` naming
  the rank and the address; a collective (the gradient all-reduce) that waits longer than it raises the
  backend's timeout error (gloo: "Timed out waiting 60000ms for recv operation to complete").
  :func:`launch` joins the spawned processes with a deadline, stops them all as soon as one fails, and
  terminates them when the deadline passes.
- **Teardown.** ``destroy_process_group`` runs in a ``finally`` block, so a failing rank still leaves the
  group cleanly, and only after the DDP wrapper is gone (``model = None``). The wrapper holds the process
  group: in the book's order (the group destroyed, then the wrapper freed when ``main`` returns), the
  wrapper lets go of the group's last reference, and with PyTorch 2.13 this can hang the process for good.
  Every ``backward()`` leaves a Python object in the gradient all-reduce, which the gloo thread that ran it
  needs the GIL to free, while the group's destructor, called from the wrapper, waits for that thread with
  the GIL held. Let go of by ``destroy_process_group`` instead, the group goes from Python, which releases
  the GIL first. (The course's checks and grader accept the book's order: they hold the group themselves.)
- **Equivalence with one process.** :func:`run_ddp_training` trains on two CPU processes and returns the
  final parameters; :func:`run_single_process_training` trains one model on the same global batches. They
  agree to float32 rounding when:

  1. both start from the same weights (DDP copies rank 0's weights to every rank when the model is
     wrapped; the single process builds the model with the same seed);
  2. a global step sees the same examples: step k of the single process uses the union, over the ranks,
     of the k-th batch of each rank. Each rank's ``DistributedSampler`` takes every ``world_size``-th
     index (rank r: r, r + world_size, ...) of the same order, so with ``shuffle=False`` the union is
     simply the next ``world_size * batch_size`` consecutive examples. With ``shuffle=True`` every rank
     shuffles with the same ``seed + epoch``, and the single process must replay that order (here it asks
     the very same samplers);
  3. the global batch is ``world_size * batch_size`` and every rank's batch at a step has the same size:
     DDP averages the ranks' gradients (sum / world_size), and the mean of equal-sized per-rank means is
     the mean over the global batch. We use a training set whose size is a multiple of
     ``world_size * batch_size`` (no padding by the sampler, no short last batch; ``drop_last=True`` on
     the loaders would do as well);
  4. the loss is a mean over the batch (``F.cross_entropy``'s default ``reduction="mean"``);
     with ``reduction="sum"`` the DDP gradient would be 1/world_size of the single-process one;
  5. the forward pass has no randomness and no batch statistics (no dropout, no BatchNorm): this MLP;
  6. the same optimizer and hyperparameters: since the gradients are equal, any optimizer then agrees.

  What differs is only the order of float32 additions (each rank sums its part, then the all-reduce sums
  the ranks), so the parameters agree to about 1e-7, not bit for bit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed import DistError, destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

# train_model is not used here: it is imported so that this module's namespace holds all of appendix A's
# student interface (course.yml grades appA_pytorch against reference.ddp; see graders/appA_pytorch.py).
from reference.pytorch_basics import NeuralNetwork, ToyDataset, compute_accuracy, train_model  # noqa: F401

__all__ = [
    "DEFAULT_MASTER_PORT",
    "DEFAULT_TIMEOUT",
    "DDPTimeoutError",
    "ddp_setup",
    "prepare_dataset",
    "main",
    "find_free_port",
    "launch",
    "make_toy_data",
    "run_ddp_training",
    "run_single_process_training",
]

DEFAULT_MASTER_PORT = "12345"  # the book's port, used when MASTER_PORT is not set
DEFAULT_TIMEOUT = datetime.timedelta(seconds=60)  # how long a rank waits for its peers


class DDPTimeoutError(TimeoutError):
    """A rank waited longer than its timeout for a peer, or the launched processes did not finish in time."""


def _backend_and_device(rank: int, backend: str | None) -> tuple[str, torch.device]:
    """The backend (``nccl`` on CUDA, else ``gloo``) and the device rank ``rank`` computes on."""
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    # nccl only moves CUDA tensors; gloo computes on the CPU (it can also move CUDA tensors, but we use it
    # for the CPU).
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    return backend, device


def ddp_setup(
    rank: int,
    world_size: int,
    backend: str | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Join the process group as process ``rank`` of ``world_size``.

    Args:
        rank: this process's unique id, 0 to world_size - 1 (with one GPU per process, also its GPU).
        world_size: the total number of processes in the group.
        backend: ``"nccl"`` (NVIDIA GPUs) or ``"gloo"`` (CPU); by default nccl when CUDA is available.
        timeout: how long to wait for the other processes: when joining (then :class:`DDPTimeoutError`)
            and in every collective (then the backend's own timeout error).

    Rank 0 listens at ``MASTER_ADDR:MASTER_PORT`` and the others connect to it. Both come from the
    environment when set (torchrun and :func:`launch` set them), else ``localhost`` and the book's 12345.
    """
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)
    if platform.system() == "Windows":
        # PyTorch for Windows is built without libuv, which the TCP rendezvous uses by default.
        os.environ["USE_LIBUV"] = "0"

    backend, device = _backend_and_device(rank, backend)
    if device.type == "cuda":
        # One GPU per process: make cuda:rank this process's default GPU before nccl starts.
        torch.cuda.set_device(device)
    try:
        init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    except DistError as error:
        if "timed out" not in str(error).lower():
            raise  # e.g. the port is taken (EADDRINUSE): not a matter of waiting
        raise DDPTimeoutError(
            f"rank {rank} of {world_size}: the process group did not form within {timeout.total_seconds():g} s "
            f"at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({error}). Did every rank start, "
            "with the same world_size, MASTER_ADDR and MASTER_PORT?"
        ) from error


def prepare_dataset() -> tuple[DataLoader, DataLoader]:
    """The book's toy data as (train_loader, test_loader), the training set shared out among the ranks.

    Needs an initialised process group: ``DistributedSampler`` reads the rank and the world size from it.
    """
    X_train = torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]])  # (5, 2)
    y_train = torch.tensor([0, 0, 0, 1, 1])  # (5,)
    X_test = torch.tensor([[-0.8, 2.8], [2.6, -1.6]])  # (2, 2)
    y_test = torch.tensor([0, 1])  # (2,)

    train_ds = ToyDataset(X_train, y_train)
    test_ds = ToyDataset(X_test, y_test)
    train_loader = DataLoader(
        dataset=train_ds,
        batch_size=2,
        # The sampler decides the order (and shuffles), so the loader itself must not shuffle.
        shuffle=False,
        # Pinned (page-locked) memory speeds up copies to a GPU; without one it only costs memory.
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        # Each rank gets every world_size-th example: no example is seen twice within an epoch.
        sampler=DistributedSampler(train_ds),
    )
    test_loader = DataLoader(dataset=test_ds, batch_size=2, shuffle=False)
    return train_loader, test_loader


def main(rank: int, world_size: int, num_epochs: int) -> None:
    """The book's DDP training run, as process ``rank`` of ``world_size``: train, print accuracies, leave."""
    ddp_setup(rank, world_size)
    try:
        _, device = _backend_and_device(rank, None)
        train_loader, test_loader = prepare_dataset()
        # Every rank builds the model with the same seed; DDP would copy rank 0's weights anyway.
        torch.manual_seed(123)
        model = NeuralNetwork(num_inputs=2, num_outputs=2)
        model.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        # The wrapper all-reduces the gradients during backward(); the plain model is model.module.
        model = DDP(model, device_ids=[rank] if device.type == "cuda" else None)

        for epoch in range(num_epochs):
            # A different (but on every rank the same) shuffling order each epoch.
            train_loader.sampler.set_epoch(epoch)
            model.train()
            for features, labels in train_loader:
                features, labels = features.to(device), labels.to(device)  # (b, 2), (b,)
                logits = model(features)  # (b, 2)
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad()
                loss.backward()  # also averages the gradients over the ranks
                optimizer.step()
                # One string, flushed at once: the ranks share the terminal (or pipe), and lines written
                # in pieces would interleave.
                print(
                    f"[rank {rank}] Epoch: {epoch + 1:03d}/{num_epochs:03d}"
                    f" | Batchsize {labels.shape[0]:03d}"
                    f" | Train/Val Loss: {loss:.2f}",
                    flush=True,
                )

        model.eval()
        # Each rank evaluates on its own share of the training set, and on the whole test set.
        train_acc = compute_accuracy(model, train_loader, device=device)
        print(f"[rank {rank}] Training accuracy {train_acc}", flush=True)
        test_acc = compute_accuracy(model, test_loader, device=device)
        print(f"[rank {rank}] Test accuracy {test_acc}", flush=True)
    finally:
        model = None  # first free the DDP wrapper, which holds the process group (see "Teardown" above)
        destroy_process_group()  # leave distributed mode cleanly, even after an error


# --- launching processes ----------------------------------------------------------------------------------


def find_free_port() -> int:
    """A TCP port on localhost that no one is listening on right now (the operating system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _run_rank(rank: int, master_port: int, fn: Callable[..., None], args: tuple) -> None:
    """The entry point of a spawned process: point it at rank 0's port, then run ``fn(rank, *args)``."""
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = str(master_port)
    fn(rank, *args)


def _port_was_taken(error: BaseException) -> bool:
    message = str(error)
    return "EADDRINUSE" in message or "address already in use" in message.lower()


def launch(
    fn: Callable[..., None],
    world_size: int,
    args: tuple = (),
    timeout_s: float = 120.0,
    max_attempts: int = 3,
) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` new processes (``torch.multiprocessing``'s spawn) and wait.

    Every launch gets a free port of its own. ``fn`` must be importable by name (a module-level function),
    because spawned processes start a fresh interpreter. The processes must finish within ``timeout_s``
    seconds, else they are terminated and :class:`DDPTimeoutError` is raised; if one of them fails, the
    others are stopped and its error is raised (``torch.multiprocessing.ProcessRaisedException``).
    """
    for attempt in range(1, max_attempts + 1):
        context = mp.start_processes(
            _run_rank, args=(find_free_port(), fn, args), nprocs=world_size, join=False, start_method="spawn"
        )
        try:
            _join_with_deadline(context, timeout_s)
            return
        except mp.ProcessRaisedException as error:
            # Another program bound our port between find_free_port() and rank 0's listen(): try another.
            if attempt < max_attempts and _port_was_taken(error):
                continue
            raise


def _join_with_deadline(context: mp.ProcessContext, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        # join() returns False while processes are still running; it raises as soon as one has failed
        # (after terminating the others).
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                running = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
                raise DDPTimeoutError(
                    f"the {len(context.processes)} DDP processes did not finish within {timeout_s:g} s; "
                    f"rank(s) {running} were still running and have been terminated (a rank waiting for a "
                    "peer that never joined or stopped responding?)"
                )
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


# --- DDP and a single process, on the same global batches --------------------------------------------------


def make_toy_data(factor: int = 4, noise: float = 0.1, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's five training examples, ``factor`` times, each copy with a little Gaussian noise.

    This is the enlargement the book's script suggests for more GPUs; with the default, 20 examples, a
    multiple of ``world_size * batch_size`` for 2 x 2, 2 x 5, 4 x 5, ...
    """
    generator = torch.Generator().manual_seed(seed)
    X = torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]])  # (5, 2)
    y = torch.tensor([0, 0, 0, 1, 1])  # (5,)
    X_big = torch.cat([X + torch.randn(X.shape, generator=generator) * noise for _ in range(factor)])  # (5f, 2)
    y_big = y.repeat(factor)  # (5f,)
    return X_big, y_big


def _distributed_samplers(dataset, world_size: int, shuffle: bool, seed: int) -> list[DistributedSampler]:
    # Given num_replicas and rank explicitly, a DistributedSampler needs no process group: the single
    # process can build all of them and replay exactly the order the ranks see.
    return [
        DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        for rank in range(world_size)
    ]


def _ddp_training_worker(rank: int, world_size: int, config: dict, result_path: str) -> None:
    ddp_setup(rank, world_size, backend="gloo", timeout=datetime.timedelta(seconds=config["timeout_s"]))
    try:
        X, y = make_toy_data(config["factor"])
        dataset = ToyDataset(X, y)
        sampler = _distributed_samplers(dataset, world_size, config["shuffle"], config["sampler_seed"])[rank]
        loader = DataLoader(dataset, batch_size=config["batch_size"], sampler=sampler, shuffle=False)

        torch.manual_seed(config["seed"])
        model = DDP(NeuralNetwork(num_inputs=2, num_outputs=2))  # CPU: no device_ids
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        for epoch in range(config["num_epochs"]):
            sampler.set_epoch(epoch)
            model.train()
            for features, labels in loader:
                loss = F.cross_entropy(model(features), labels)  # mean over this rank's batch
                optimizer.zero_grad()
                loss.backward()  # all-reduce: every rank now holds the average of the ranks' gradients
                optimizer.step()
        if rank == 0:
            torch.save(model.module.state_dict(), result_path)
    finally:
        model = None  # the DDP wrapper goes before the process group (see "Teardown" above)
        destroy_process_group()


def _training_config(num_epochs, batch_size, lr, shuffle, seed, sampler_seed, factor, timeout_s) -> dict:
    return {
        "num_epochs": num_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "shuffle": shuffle,
        "seed": seed,
        "sampler_seed": sampler_seed,
        "factor": factor,
        "timeout_s": timeout_s,
    }


def run_ddp_training(
    world_size: int = 2,
    num_epochs: int = 3,
    batch_size: int = 2,
    lr: float = 0.5,
    shuffle: bool = False,
    seed: int = 123,
    sampler_seed: int = 0,
    factor: int = 4,
    timeout_s: float = 60.0,
) -> dict[str, torch.Tensor]:
    """Train :class:`NeuralNetwork` with DDP on ``world_size`` CPU processes (gloo); return its final state_dict.

    Data: :func:`make_toy_data` with ``factor``; each rank takes ``batch_size`` examples per step from its
    ``DistributedSampler`` (``shuffle``, ``sampler_seed``); the model is built after
    ``torch.manual_seed(seed)``; SGD with learning rate ``lr``. The whole run must finish within
    ``timeout_s`` seconds (:class:`DDPTimeoutError` otherwise).
    """
    config = _training_config(num_epochs, batch_size, lr, shuffle, seed, sampler_seed, factor, timeout_s)
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        result_path = str(Path(tmp) / "state_dict.pt")
        launch(_ddp_training_worker, world_size, args=(world_size, config, result_path), timeout_s=timeout_s)
        return torch.load(result_path, weights_only=True)


def run_single_process_training(
    world_size: int = 2,
    num_epochs: int = 3,
    batch_size: int = 2,
    lr: float = 0.5,
    shuffle: bool = False,
    seed: int = 123,
    sampler_seed: int = 0,
    factor: int = 4,
) -> dict[str, torch.Tensor]:
    """What :func:`run_ddp_training` computes, in one process: each step on the union of the ranks' batches.

    Same arguments (``world_size`` only decides how the data is split into global batches of
    ``world_size * batch_size`` examples); returns the final state_dict.
    """
    X, y = make_toy_data(factor)
    dataset = ToyDataset(X, y)
    samplers = _distributed_samplers(dataset, world_size, shuffle, sampler_seed)

    torch.manual_seed(seed)
    model = NeuralNetwork(num_inputs=2, num_outputs=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(num_epochs):
        global_batches = _global_batches(samplers, epoch, batch_size)
        loader = DataLoader(dataset, batch_sampler=global_batches)
        model.train()
        for features, labels in loader:  # (world_size * batch_size, 2), (world_size * batch_size,)
            loss = F.cross_entropy(model(features), labels)  # mean over the global batch
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


def _global_batches(samplers: list[DistributedSampler], epoch: int, batch_size: int) -> list[list[int]]:
    """The indices of each global step: rank 0's k-th batch, then rank 1's k-th batch, and so on."""
    per_rank = []
    for sampler in samplers:
        sampler.set_epoch(epoch)
        indices = list(sampler)
        per_rank.append([indices[i : i + batch_size] for i in range(0, len(indices), batch_size)])
    # Every rank has the same number of indices (the sampler pads), hence the same number of batches.
    return [sum(batches, []) for batches in zip(*per_rank)]


# --- command line: python -m reference.ddp, or torchrun -m reference.ddp -----------------------------------


def _cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The book's DDP training run (appendix A).")
    parser.add_argument("--num-epochs", type=int, default=3)
    parser.add_argument(
        "--world-size", type=int, default=None, help="processes to spawn (default: the number of GPUs, else 2)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the spawned run may take")
    options = parser.parse_args(argv)

    if "LOCAL_RANK" in os.environ:
        # Started by torchrun, which set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for this process.
        main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), options.num_epochs)
        return
    world_size = options.world_size or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    launch(main, world_size, args=(world_size, options.num_epochs), timeout_s=options.timeout)


if __name__ == "__main__":
    _cli()
