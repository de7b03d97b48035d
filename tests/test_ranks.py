"""The ranks of a distributed training run as extra workers at once, in one sandbox with a loopback network:
they reach each other through torch.distributed (gloo), and a rank that waits for a peer that never comes costs
one timeout. Appendix A's grader relies on this (Submission.run_ranks)."""

from __future__ import annotations

import pytest
import torch

from course.errors import ConfigError
from course.grading.plugin import Submission
from course.grading.probes import probe
from course.worker.client import StudentTimeout, WorkerClient
from course.worker.launchers import TemplateLauncher, WorkerSpec
from course.worker.sandbox import plan_sandbox

CELLS = [{"label": "setup",
          "source": "import torch\n\ndef contribution(rank):\n    return torch.tensor([rank + 1.0])\n"}]


@probe
def all_reduce(student, rank, world_size, master_port, wait_for_peers=True):
    import os

    import torch.distributed as dist

    if not wait_for_peers and rank == world_size - 1:
        return torch.zeros(1)  # this rank never joins: the others wait for it
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(master_port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    total = student.contribution(rank)
    dist.all_reduce(total)
    dist.destroy_process_group()
    return total


@pytest.fixture(params=["bubblewrap", "process"])
def submission(request):
    try:
        plan = plan_sandbox(request.param, memory_mb=4096, cpu_seconds=600, file_mb=64, device="cpu")
    except ConfigError as exc:
        pytest.skip(str(exc))
    launcher = TemplateLauncher(WorkerSpec(sandbox=plan))
    client = WorkerClient(cells=CELLS, launcher=launcher)
    yield Submission(client, timeout=60, device="cpu", load_problem=None)
    client.close()
    launcher.close()


def test_ranks_reach_each_other(submission):
    results = submission.run_ranks(all_reduce, world_size=2)
    assert [r.tolist() for r in results] == [[3.0], [3.0]]


def test_a_rank_waiting_for_a_peer_that_never_comes_is_a_timeout(submission):
    submission._timeout = 5
    with pytest.raises(StudentTimeout, match="a rank that waits for a peer that never answers"):
        submission.run_ranks(all_reduce, world_size=2, wait_for_peers=False)
