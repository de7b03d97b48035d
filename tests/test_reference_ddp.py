"""Tests of reference/ddp.py (appendix A: distributed data-parallel training), on CPU processes with gloo.

Each DDP run starts fresh Python processes (torch and DDP's imports take a few seconds), so the real
two-process runs are few: one DDP training shared by several tests, and one torchrun launch.

The teardown order that avoids PyTorch 2.13's deadlock (see "Teardown" in reference/ddp.py) is tested here
for the reference and for the public check that runs a student's main; how often the book's order hangs
under stress, and that these do not, is measured by benchmarks/ddp_teardown.py.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

import reference.ddp
from checks.appa_pytorch import ddp_groups_released_last
from reference.ddp import (
    DDPTimeoutError,
    ddp_setup,
    find_free_port,
    launch,
    main,
    make_toy_data,
    prepare_dataset,
    run_ddp_training,
    run_single_process_training,
)

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"num_epochs": 2, "batch_size": 2, "lr": 0.5, "shuffle": True, "seed": 123}


@pytest.fixture(scope="module")
def ddp_run():
    """The final state_dict of a DDP training on two CPU processes."""
    return run_ddp_training(world_size=2, timeout_s=120, **SETTINGS)


@pytest.fixture
def free_master_port(monkeypatch):
    """MASTER_ADDR/MASTER_PORT for an in-process group, restored afterwards. Port 0: rank 0's store listens on
    a port the operating system picks, so no other program can hold it (no other process has to find it)."""
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "0")


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


# --- DDP on two processes equals one process on the global batch -------------------------------------------


def test_ddp_equals_single_process_on_the_global_batch(ddp_run):
    state_dict = ddp_run
    assert _max_difference(state_dict, run_single_process_training(world_size=2, **SETTINGS)) < 1e-6


def test_ddp_training_moved_the_weights(ddp_run):
    state_dict = ddp_run
    torch.manual_seed(SETTINGS["seed"])
    initial = reference.ddp.NeuralNetwork(2, 2).state_dict()
    assert _max_difference(state_dict, initial) > 1e-2


def test_equivalence_needs_the_same_example_order(ddp_run):
    state_dict = ddp_run
    other_order = run_single_process_training(world_size=2, **{**SETTINGS, "shuffle": False})
    assert _max_difference(state_dict, other_order) > 1e-3


def test_equivalence_needs_the_global_batch(ddp_run):
    # One "rank" of batch 2 takes twice the steps with half the examples each: a different result.
    state_dict = ddp_run
    assert _max_difference(state_dict, run_single_process_training(world_size=1, **SETTINGS)) > 1e-3


def test_single_process_global_batches_are_the_ranks_batches_side_by_side():
    dataset = reference.ddp.ToyDataset(*make_toy_data())
    samplers = [DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=False) for r in range(2)]
    assert reference.ddp._global_batches(samplers, epoch=0, batch_size=2)[:2] == [[0, 2, 1, 3], [4, 6, 5, 7]]


def test_toy_data_size_is_a_multiple_of_the_global_batch():
    X, y = make_toy_data()
    assert (X.shape, y.shape) == ((20, 2), (20,))


# --- ports -------------------------------------------------------------------------------------------------


class _FakeContext:
    """Stands in for torch.multiprocessing's ProcessContext: join() raises ``error`` once, if given."""

    def __init__(self, error):
        self.error = error
        self.processes = []

    def join(self, timeout=None):
        if self.error is not None:
            raise self.error
        return True


def _fake_start_processes(errors, ports):
    def start_processes(fn, args, nprocs, join, start_method):
        ports.append(args[0])  # launch passes the port as the first argument of each process
        return _FakeContext(errors.pop(0))

    return start_processes


def test_launch_retries_with_a_new_port_when_the_port_was_taken(monkeypatch):
    taken = torch.multiprocessing.ProcessRaisedException("DistNetworkError: ... name: EADDRINUSE", 0, 1)
    ports = []
    monkeypatch.setattr(reference.ddp.mp, "start_processes", _fake_start_processes([taken, None], ports))
    launch(main, 2, args=(2, 1))
    assert len(set(ports)) == 2  # two launches, on two different ports


def test_launch_does_not_retry_other_errors(monkeypatch):
    crash = torch.multiprocessing.ProcessRaisedException("ZeroDivisionError: division by zero", 0, 1)
    ports = []
    monkeypatch.setattr(reference.ddp.mp, "start_processes", _fake_start_processes([crash, None], ports))
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="ZeroDivisionError"):
        launch(main, 2, args=(2, 1))


def test_a_taken_port_reports_eaddrinuse(monkeypatch):
    # The launcher recognises a taken port by this word in the error of rank 0's process.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("localhost", 0))
        blocker.listen()
        monkeypatch.setenv("MASTER_ADDR", "localhost")
        monkeypatch.setenv("MASTER_PORT", str(blocker.getsockname()[1]))
        with pytest.raises(dist.DistError) as excinfo:
            ddp_setup(0, 1, backend="gloo", timeout=datetime.timedelta(seconds=5))
    assert reference.ddp._port_was_taken(excinfo.value)


def test_find_free_port_can_be_bound():
    port = find_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", port))  # raises if someone holds it


def test_ddp_setup_takes_the_port_from_the_environment(free_master_port):
    ddp_setup(0, 1, backend="gloo")
    try:
        assert os.environ["MASTER_PORT"] != reference.ddp.DEFAULT_MASTER_PORT
    finally:
        dist.destroy_process_group()


def test_ddp_setup_defaults_to_the_books_port(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # remembers the original value, restored (or removed) after the test
        monkeypatch.delenv(name)
    monkeypatch.setattr(reference.ddp, "init_process_group", lambda **kwargs: None)
    ddp_setup(0, 1, backend="gloo")
    assert os.environ["MASTER_PORT"] == "12345"


# --- a peer that never comes -------------------------------------------------------------------------------


def test_ddp_setup_times_out_when_a_peer_never_joins(free_master_port):
    started = time.monotonic()
    with pytest.raises(DDPTimeoutError, match=r"rank 0 of 2: the process group did not form within 0.5 s"):
        ddp_setup(0, 2, backend="gloo", timeout=datetime.timedelta(seconds=0.5))
    assert time.monotonic() - started < 30


def test_launch_gives_up_after_its_deadline():
    # The processes are still starting (importing torch) after 0.2 s: they are stopped, with a clear error.
    with pytest.raises(DDPTimeoutError, match=r"did not finish within 0.2 s"):
        launch(main, 2, args=(2, 1), timeout_s=0.2)


# --- the book's script -------------------------------------------------------------------------------------


def test_prepare_dataset_shares_the_training_set(free_master_port):
    ddp_setup(0, 1, backend="gloo")
    try:
        train_loader, test_loader = prepare_dataset()
        assert (type(train_loader.sampler), len(train_loader), len(test_loader)) == (DistributedSampler, 2, 1)
    finally:
        dist.destroy_process_group()


def test_main_runs_as_a_single_rank_and_leaves_the_group(free_master_port, capsys):
    main(0, 1, 3)
    out = capsys.readouterr().out
    assert ("[rank 0] Test accuracy 1.0" in out, dist.is_initialized()) == (True, False)


def test_torchrun_entry_point_trains_on_two_processes():
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "reference.ddp", "--num-epochs", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    accuracies = sorted(re.findall(r"\[rank (\d)\] (Training|Test) accuracy ([0-9.]+)", result.stdout))
    assert accuracies == [
        ("0", "Test", "1.0"),
        ("0", "Training", "1.0"),
        ("1", "Test", "1.0"),
        ("1", "Training", "1.0"),
    ], result.stdout[-2000:] + result.stderr[-2000:]


# --- teardown: the DDP wrapper goes before its process group -----------------------------------------------


def recording_ddp(wrappers: list):
    """A DDP class that keeps a weak reference to each wrapper it makes."""

    class RecordingDDP(reference.ddp.DDP):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wrappers.append(weakref.ref(self))

    return RecordingDDP


def test_main_frees_the_ddp_wrapper_before_leaving_the_group(free_master_port, monkeypatch, capsys):
    wrappers, wrapper_gone = [], []

    def destroy_process_group():
        wrapper_gone.append([wrapper() is None for wrapper in wrappers])
        dist.destroy_process_group()

    monkeypatch.setattr(reference.ddp, "DDP", recording_ddp(wrappers))
    monkeypatch.setattr(reference.ddp, "destroy_process_group", destroy_process_group)
    main(0, 1, 1)
    assert wrapper_gone == [[True]]


def test_the_ddp_check_holds_the_group_until_the_books_main_has_freed_its_wrapper(free_master_port):
    # The book's order: the group destroyed, then the wrapper freed as main returns.
    held_when_freed = []

    def books_main():
        ddp_setup(0, 1, backend="gloo")
        model = reference.ddp.DDP(reference.ddp.NeuralNetwork(2, 2))
        weakref.finalize(model, lambda: held_when_freed.append(len(groups)))
        F.cross_entropy(model(torch.ones(2, 2)), torch.tensor([0, 1])).backward()
        dist.destroy_process_group()

    with ddp_groups_released_last() as groups:
        books_main()
    assert (held_when_freed, groups) == ([1], [])
