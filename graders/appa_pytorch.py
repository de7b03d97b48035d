"""Grader of appendix A: an introduction to PyTorch, and distributed data-parallel training.

The network is tested with the reference's weights loaded into the student's NeuralNetwork (outputs, gradients);
the training loop and the accuracy function are tested on a plain torch model and a seeded data loader that the
probe builds, so that they are graded on their own (the training loop gets its model in evaluation mode, with
dropout in one case, so that it must switch to training mode itself, and must return Python floats).
prepare_dataset runs on a correct ToyDataset, and `main` on correct stand-ins of every part it calls
(probe_kit/ddp_parts.py, declared with @pytest.mark.stand_ins): a bug costs only its own part's tests.
The DDP functions run for real: `submission.run_ranks` starts two ranks (each a worker with the submission loaded,
in one sandbox with a loopback network). The parameters that `main` trains on two processes must equal those of
one process trained on the global batches (the union of the ranks' batches at each step), which the grader
replays here with DistributedSamplers given their rank explicitly.

Where the book's editions differ, both are accepted: compute_accuracy with or without its `device` argument (the
probe passes it only when the function takes three parameters), its float32 result from `.item()` (tolerance
1e-6), and a `main` that returns nothing (the book's): the grader then takes the model that was wrapped in DDP.
The book's DDP-script.py is written for NVIDIA GPUs (it asks for nccl, calls torch.cuda.set_device, moves the model
and the batches to device `rank`, passes device_ids=[rank], overwrites MASTER_ADDR/MASTER_PORT). On a grader
without GPUs the DDP probes serve those calls with gloo and the CPU (probe_kit.ranks.gpu_calls_served), so the
book's code typed into the stubs gets full marks; test_ddp_setup checks the backend in use against the device and
that a `backend` given to ddp_setup is the one asked for (explicit nccl: a ddp_setup that ignores the argument
asks for gloo here). The book's own signature (a rank and a world size only) is accepted as it is.

On a CUDA grading device, the DDP tests expect nccl and use one rank per GPU (at most two).
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from checks.appa_pytorch import INTERFACE as INTERFACE  # what the tests' @pytest.mark.runs name (public)
from course.grading import DEVICE, ListOf, error_mentions, expect_close, expect_count, expect_equal, expect_true, probe
from course.grading.contracts import Fields
from course.grading.diagnosis import explain_errors
from course.grading.inputs import randn, reference_module
from course.grading.mistakes import Mistake, name_mistake, same_values
from course.grading.probes import count_parameters, run_module, run_module_with_gradients
from course.worker.runtime.records import ErrorKind
from reference import pytorch_basics as ref

NUM_EPOCHS = 3  # of the DDP run, as in the book


def layers_mismatch(record):
    """The reference's weights did not fit the student's NeuralNetwork."""
    if record.kind is not ErrorKind.UNUSABLE or "state_dict" not in record.message:
        return None
    return ("the grader loads weights named layers.0, layers.2 and layers.4 into your network: keep the layers in "
            "an nn.Sequential called self.layers, in the order Linear(num_inputs, 30), ReLU, Linear(30, 20), ReLU, "
            "Linear(20, num_outputs).")


# An error about nccl where no GPU is used.
nccl_without_gpus = error_mentions("nccl", "NCCL", "cuda", "CUDA", hint=(
    "nccl needs NVIDIA GPUs (and a PyTorch built with CUDA): with no backend given, choose it by device, nccl "
    "where CUDA is available and gloo elsewhere."))


# -- probes: run in the worker -----------------------------------------------------------------------------------

@probe(returns=Fields("length", "items", "batches"))
def dataset_items(student, X, y, batch_size):
    """The student's ToyDataset: its .length, every one of its .items, and the .batches of a DataLoader over it (in
    order)."""
    dataset = student.ToyDataset(X, y)
    items = [list(dataset[index]) for index in range(len(X))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return {"length": len(dataset), "items": items, "batches": [list(batch) for batch in loader]}


@probe(returns=Fields("losses", "state", "tensors"))
def train_with_student_loop(student, state, X, y, num_epochs, lr, batch_size, seed, dropout):
    """A small classifier (with dropout `dropout`, None: none) loaded with `state` and handed over in evaluation
    mode, trained by the student's train_model with SGD on a seeded, shuffled loader over (X, y), the global
    generator seeded with `seed` (dropout draws from it): .losses (what train_model returned, 0-d tensors as
    floats), .state (the final state_dict) and .tensors (how many losses were tensors, not Python numbers)."""
    from probe_kit.ranks import PlainSGD, small_classifier

    model = small_classifier(X.shape[1], dropout).to(DEVICE)
    model.load_state_dict(state)
    model.eval()  # train_model must switch to training mode itself
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch_size, shuffle=True,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    losses = student.train_model(model, loader, PlainSGD(model.parameters(), lr=lr), DEVICE, num_epochs)
    tensors = 0
    if isinstance(losses, (list, tuple)):
        tensors = sum(isinstance(loss, torch.Tensor) for loss in losses)
        losses = [float(loss) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else loss for loss in losses]
    return {"losses": losses, "state": {name: tensor.detach() for name, tensor in model.state_dict().items()},
            "tensors": tensors}


@probe(returns=ListOf(length="batch_sizes"))
def student_accuracies(student, state, X, y, batch_sizes, dropout):
    """The student's compute_accuracy of a small classifier loaded with `state` and left in train mode (with dropout
    `dropout`), on loaders over (X, y) with each batch size; device passed only if the function takes one."""
    import inspect

    from probe_kit.ranks import small_classifier

    model = small_classifier(X.shape[1], dropout).to(DEVICE)
    model.load_state_dict(state)
    takes_device = len(inspect.signature(student.compute_accuracy).parameters) >= 3
    results = []
    for batch_size in batch_sizes:
        model.train()  # compute_accuracy must switch to evaluation mode itself
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch_size)
        torch.manual_seed(0)
        if takes_device:
            value = student.compute_accuracy(model, loader, DEVICE)
        else:
            value = student.compute_accuracy(model, loader)
        results.append(float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value)
    return results


@probe(returns=Fields("initialized", "backend", "rank", "world_size", "sum", "asked_for_nccl"))
def ddp_setup_rank(student, rank, world_size, master_port):
    """One rank: the student's ddp_setup with this rank and world size, then what the process group says
    (.initialized; .backend, .rank and .world_size, None where it is not initialised) and .sum, an all-reduce of
    rank + 1. Then, with no group made, the backends that ddp_setup(rank, world_size, backend="nccl") asks for
    (.asked_for_nccl; None where ddp_setup takes no backend, as the book's). Where the grader has no GPUs, a
    request for nccl is served by gloo and the book's GPU calls by the CPU (probe_kit.ranks.gpu_calls_served)."""
    import inspect

    import torch.distributed as dist
    from probe_kit.ranks import gpu_calls_served

    with gpu_calls_served(student, master_port) as asked:
        student.ddp_setup(rank, world_size)
        try:
            info = {"initialized": dist.is_initialized(), "backend": None, "rank": None, "world_size": None,
                    "sum": None}
            if info["initialized"]:
                backend = str(dist.get_backend())
                info.update(backend=backend, rank=dist.get_rank(), world_size=dist.get_world_size())
                total = torch.tensor([rank + 1.0], device=DEVICE if backend == "nccl" else "cpu")
                dist.all_reduce(total)
                info["sum"] = total.item()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        asked.backends, asked.initialise = [], False
        info["asked_for_nccl"] = None  # the book's ddp_setup(rank, world_size) takes no backend
        if "backend" in inspect.signature(student.ddp_setup).parameters:
            student.ddp_setup(rank, world_size, backend="nccl")
            info["asked_for_nccl"] = list(asked.backends)
    return info


@probe(returns=Fields("sampler", "shares", "test"))
def dataset_shares(student, rank, world_size, master_port, epochs):
    """One rank, in a gloo process group of the probe's own: the student's prepare_dataset (on a correct ToyDataset),
    the name of its training loader's .sampler, the batches of that loader in each epoch (after set_epoch; .shares)
    and of its test loader (.test)."""
    import torch.distributed as dist
    from probe_kit.ddp_parts import ToyDataset
    from probe_kit.parts import replaced
    from probe_kit.ranks import use_master

    use_master(master_port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    # Barriers: without a collective, a rank that is done could leave the group (closing its connections) while
    # its peer is still connecting to it.
    dist.barrier()
    try:
        with replaced(student, ToyDataset=ToyDataset):
            train_loader, test_loader = student.prepare_dataset()
        sampler = train_loader.sampler
        shares = []
        for epoch in range(epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            shares.append([[features.tolist(), labels.tolist()] for features, labels in train_loader])
        test = [[features.tolist(), labels.tolist()] for features, labels in test_loader]
        dist.barrier()
        return {"sampler": type(sampler).__name__, "shares": shares, "test": test}
    finally:
        dist.destroy_process_group()


@probe(returns=Fields("state", "wrapped", "still_initialized"))
def ddp_training(student, rank, world_size, master_port, num_epochs):
    """One rank of the student's main, on correct stand-ins of the parts it calls (NeuralNetwork, ToyDataset,
    compute_accuracy, ddp_setup, prepare_dataset): the trained parameters (.state, of the model main returned, else
    of the one it wrapped in DDP), how many models were .wrapped, and whether the process group is
    .still_initialized afterwards. Where the grader has no GPUs, the book's GPU calls are served by the CPU."""
    import torch.distributed as dist
    from probe_kit.ddp_parts import PARTS
    from probe_kit.parts import replaced
    from probe_kit.ranks import gpu_calls_served, use_master
    from torch.nn.parallel import DistributedDataParallel

    use_master(master_port)
    wrapped = []
    # The wrappers main makes, and with them their process groups, stay alive until this rank's worker is killed
    # after the call. Freed when main or this probe returns, a wrapper whose group main has destroyed can hang the
    # worker with PyTorch 2.13 (see ddp_groups_released_last in checks/appa_pytorch.py).
    DistributedDataParallel.kept_by_the_grader = wrapped
    original_init = DistributedDataParallel.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        wrapped.append(self)

    DistributedDataParallel.__init__ = recording_init
    try:
        with replaced(student, **PARTS), gpu_calls_served(student, master_port):
            torch.manual_seed(123)  # the book seeds before it starts the processes
            returned = student.main(rank, world_size, num_epochs)
    finally:
        DistributedDataParallel.__init__ = original_init
    model = returned if isinstance(returned, nn.Module) else (wrapped[-1] if wrapped else None)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    state = None if model is None else {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return {"state": state, "wrapped": len(wrapped), "still_initialized": dist.is_initialized()}


# -- A.5: the network --------------------------------------------------------------------------------------------

NETWORKS = [{"num_inputs": 2, "num_outputs": 2}, {"num_inputs": 50, "num_outputs": 3},
            {"num_inputs": 5, "num_outputs": 4}]


def network_with(model, x, *, activation=torch.relu, on_output=None):
    """The reference network's output, computed with another activation after the hidden layers (None: none) or
    with one applied to the output too: the classic mistakes below."""
    hidden = activation or (lambda t: t)
    logits = model.layers[4](hidden(model.layers[2](hidden(model.layers[0](x)))))
    return on_output(logits) if on_output else logits


NETWORK_MISTAKES = [
    Mistake("a network without activation functions", "put an nn.ReLU() after each hidden layer.", activation=None),
    Mistake("sigmoid activations", "use nn.ReLU() after each hidden layer.", activation=torch.sigmoid),
    Mistake("a ReLU after the output layer too",
            "the output layer returns logits: no activation after the last nn.Linear.", on_output=torch.relu),
    Mistake("a softmax after the output layer",
            "return the logits: the loss function (cross_entropy) applies the softmax itself.",
            on_output=partial(torch.softmax, dim=-1)),
]


@pytest.mark.points(1)
@pytest.mark.runs("NeuralNetwork")
def test_neural_network_layers(submission):
    """NeuralNetwork(50, 3) has the book's layers: 2,213 parameters in layers.0, layers.2 and layers.4."""
    init = {"num_inputs": 50, "num_outputs": 3}
    got = submission.run(count_parameters, class_name="NeuralNetwork", init=init)
    expected = {name: list(tensor.shape) for name, tensor in ref.NeuralNetwork(**init).state_dict().items()}
    expect_equal(got.shapes, expected, what="the parameters of NeuralNetwork(50, 3) (names and shapes)",
                 hint="self.layers holds five modules, in order: a linear layer num_inputs -> 30, a ReLU, a "
                      "linear layer 30 -> 20, a ReLU, and a linear output layer 20 -> num_outputs (section A.5).")
    expect_count(got.count, 2213, what="number of parameters of NeuralNetwork(50, 3)",
                 hint="50*30+30 + 30*20+20 + 20*3+3 = 2,213.")


@pytest.mark.points(2)
@pytest.mark.runs("NeuralNetwork")
def test_neural_network_output(submission):
    """NeuralNetwork's logits with the reference's weights, for several input and output sizes."""
    for index, init in enumerate(NETWORKS):
        model = reference_module(ref.NeuralNetwork, 123 + index, **init)
        x = randn(20 + index, 6, init["num_inputs"])
        with explain_errors(layers_mismatch):
            (got,) = submission.run(run_module, class_name="NeuralNetwork", init=init, state=model.state_dict(),
                                    inputs=[x])
        with torch.no_grad():
            expected = model(x)
        expect_close(got, expected, what=f"NeuralNetwork({init['num_inputs']}, {init['num_outputs']}) logits",
                     hint="forward returns self.layers(x): Linear, ReLU, Linear, ReLU, Linear.",
                     mistakes=NETWORK_MISTAKES, mistaken=partial(network_with, model, x))


@pytest.mark.points(1)
@pytest.mark.depends_on("test_neural_network_output")
@pytest.mark.runs("NeuralNetwork")
def test_neural_network_gradients(submission):
    """Backpropagation through NeuralNetwork: the gradients of every weight and of the input."""
    init = {"num_inputs": 4, "num_outputs": 3}
    model = reference_module(ref.NeuralNetwork, 7, **init)
    x, upstream = randn(30, 5, 4), randn(31, 5, 3)
    with explain_errors(layers_mismatch):
        got = submission.run(run_module_with_gradients, class_name="NeuralNetwork", init=init,
                             state=model.state_dict(), x=x, upstream=upstream)
    x_ref = x.clone().requires_grad_(True)
    (model(x_ref) * upstream).sum().backward()
    hint = "let autograd do the work: no .detach(), .item() or torch.no_grad() inside forward."
    expect_close(got.output, model(x).detach(), what="NeuralNetwork output", hint=hint)
    for name, parameter in model.named_parameters():
        expect_true(isinstance(got.gradients, dict) and name in got.gradients, what=f"gradient of {name}",
                    problem="is missing: the parameter did not receive a gradient.", hint=hint)
        expect_close(got.gradients[name], parameter.grad, what=f"gradient of {name}", hint=hint)
    expect_close(got.input_gradient, x_ref.grad, what="gradient of the input", hint=hint)


# -- A.6: the dataset --------------------------------------------------------------------------------------------

@pytest.mark.points(1)
@pytest.mark.runs("ToyDataset")
def test_toy_dataset(submission):
    """ToyDataset: its length, each (features, label) pair, and a DataLoader's batches over it."""
    X, y = randn(40, 7, 3), torch.randint(0, 2, (7,), generator=torch.Generator().manual_seed(41))
    got = submission.run(dataset_items, X=X, y=y, batch_size=3)
    dataset = ref.ToyDataset(X, y)
    expect_count(got.length, 7, what="len(ToyDataset(X, y)) for 7 examples",
                 hint="the length of the dataset is the number of labels (one per example), not of features.")
    for index in range(7):
        expect_equal(got.items[index], list(dataset[index]), what=f"ToyDataset(X, y)[{index}]",
                     hint="dataset[index] is a pair: the features of example `index` (a row of X) and its label.")
    expected_batches = [list(batch) for batch in DataLoader(dataset, batch_size=3, shuffle=False)]
    expect_equal(got.batches, expected_batches, what="the batches of DataLoader(ToyDataset(X, y), batch_size=3)",
                 hint="each item is one example: features of shape (num_inputs,) and a label of shape ().")


# -- A.7: training and accuracy ---------------------------------------------------------------------------------

def small_model(seed, num_inputs, dropout=None):
    """The probes' small classifier (probe_kit.ranks), built after torch.manual_seed(seed)."""
    from probe_kit.ranks import small_classifier

    torch.manual_seed(seed)
    return small_classifier(num_inputs, dropout)


TRAIN_CASES = [  # (seed, number of examples, features, epochs, learning rate, batch size, dropout)
    (11, 6, 2, 3, 0.5, 2, None),
    (12, 9, 3, 2, 0.1, 4, None),
    (13, 8, 3, 2, 0.3, 4, 0.5),  # dropout: train_model must switch the model to training mode
]


@torch.enable_grad()  # a training run, also where name_mistake computes a mistake's result (under no_grad)
def reference_training(seed, X, y, num_epochs, lr, batch_size, dropout=None, *, zero_grad=True, train_mode=True):
    """What train_with_student_loop gives with the reference's train_model (or with a classic mistake: gradients
    never cleared, the model never switched to training mode): the losses and the final state_dict."""
    from probe_kit.ranks import PlainSGD

    model = small_model(seed, X.shape[1], dropout).eval()
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = PlainSGD(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    if zero_grad and train_mode:
        losses = ref.train_model(model, loader, optimizer, "cpu", num_epochs)
    else:
        losses = []
        for _ in range(num_epochs):
            model.train(train_mode)
            for features, labels in loader:
                loss = F.cross_entropy(model(features), labels)
                if zero_grad:
                    optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    return losses, model.state_dict()


def training_runs(submission):
    """For each case: the inputs, what the student's train_model gave, and what the reference gives."""
    runs = []
    for seed, n, features, epochs, lr, batch_size, dropout in TRAIN_CASES:
        X, y = randn(seed, n, features), torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
        got = submission.run(train_with_student_loop, state=small_model(seed, features, dropout).state_dict(), X=X,
                             y=y, num_epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dropout=dropout)
        case = (seed, X, y, epochs, lr, batch_size, dropout)
        runs.append((case, got, reference_training(*case)))
    return runs


HINT_LOOP = ("for every batch, in this order (section A.7): the model's logits for the features, the mean "
             "cross-entropy of the logits and the labels, clear the old gradients (the optimizer's zero_grad), "
             "backpropagate (backward on the loss), update the parameters (the optimizer's step).")
LOOP_MISTAKES = [Mistake("training without clearing the gradients (the optimizer's zero_grad)",
                         "gradients accumulate in .grad, so clear them before each backward pass.", zero_grad=False),
                 Mistake("training in evaluation mode (the model is never switched to training mode)",
                         "switch the model to training mode (its train method) at the start of every epoch: the "
                         "caller may hand it over in evaluation mode, and dropout is active in training mode only.",
                         train_mode=False)]


def same_losses(got, mistaken) -> bool:
    """The losses train_model returned are a mistaken run's."""
    return isinstance(got, list) and len(got) == len(mistaken) and \
        same_values(torch.tensor(got, dtype=torch.float64), torch.tensor(mistaken))


def training_hint(case, losses):
    """The hint for a wrong training run: the classic mistake that gives the student's losses, else the loop."""
    return name_mistake(losses, LOOP_MISTAKES, lambda **change: reference_training(*case, **change)[0],
                        matches=same_losses, yours="your losses are") or HINT_LOOP


@pytest.mark.points(2)
@pytest.mark.runs("train_model")
def test_train_model_losses(submission):
    """train_model returns the loss of every step, in order, as the reference's training loop computes them."""
    for case, got, (expected, _) in training_runs(submission):
        what = f"the losses returned by train_model ({case[3]} epochs, batches of {case[5]})"
        losses = got.losses
        expect_true(isinstance(losses, list) and all(isinstance(v, (int, float)) for v in losses), what=what,
                    problem=f"should be a list of numbers, one per step, but is {type(losses).__name__} "
                            f"{str(losses)[:60]}.",
                    hint="after each step, append the loss as a Python float (its .item()), and return the list.")
        expect_true(got.tensors == 0, what=what, problem=f"holds {got.tensors} tensors, not Python floats: each "
                    "keeps its step's computation graph alive, so memory grows with every step.",
                    hint="turn each loss into a Python float (its .item()) before you keep it.")
        expect_count(len(losses), len(expected), what=f"{what}: number of losses",
                     hint="one loss per batch of every epoch (the loader drops its last, smaller batch).")
        expect_close(torch.tensor(losses, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                     what=what, hint=partial(training_hint, case, losses))


@pytest.mark.points(1)
@pytest.mark.runs("train_model")
def test_train_model_parameters(submission):
    """After train_model, the model's parameters are those the reference's training loop gives."""
    for case, got, (_, expected) in training_runs(submission):
        for name, tensor in expected.items():
            expect_close(got.state[name], tensor, what=f"parameter {name} after train_model ({case[3]} epochs)",
                         hint=partial(training_hint, case, got.losses))


ACCURACY_X = randn(50, 7, 2)
ACCURACY_Y = torch.tensor([0, 1, 1, 0, 1, 0, 0])


def reference_accuracy(batch_size, dropout=0.0, *, per_batch_mean=False):
    """The reference's compute_accuracy of student_accuracies' model (or the mean of the per-batch accuracies)."""
    model = small_model(51, 2, dropout)
    loader = DataLoader(TensorDataset(ACCURACY_X, ACCURACY_Y), batch_size=batch_size)
    if not per_batch_mean:
        return ref.compute_accuracy(model, loader, "cpu")
    with torch.no_grad():
        means = [(model.eval()(x).argmax(dim=1) == labels).float().mean().item() for x, labels in loader]
    return sum(means) / len(means)


@pytest.mark.points(2)
@pytest.mark.runs("compute_accuracy")
def test_compute_accuracy(submission):
    """compute_accuracy: the fraction of correctly classified examples, over batches of unequal size."""
    batch_sizes = [3, 7, 1]
    got = submission.run(student_accuracies, state=small_model(51, 2, 0.0).state_dict(), X=ACCURACY_X,
                         y=ACCURACY_Y, batch_sizes=batch_sizes, dropout=0.0)
    for value, batch_size in zip(got, batch_sizes):
        what = f"compute_accuracy on 7 examples in batches of {batch_size}"
        expect_true(isinstance(value, (int, float)) and not isinstance(value, bool), what=what,
                    problem=f"returned {type(value).__name__}, not a number.",
                    hint="return the number of correct predictions divided by the number of examples, a Python "
                         "number between 0 and 1.")
        hint = "count the correct predictions and the examples over all batches, then divide once."
        if abs(value - reference_accuracy(batch_size, per_batch_mean=True)) < 1e-6 and batch_size == 3:
            hint = ("your value is the mean of the per-batch accuracies, which weighs the last, smaller batch too "
                    "much: " + hint)
        expect_close(torch.tensor([float(value)]), torch.tensor([reference_accuracy(batch_size)]), atol=1e-6, rtol=0,
                     what=what, hint=hint)


@pytest.mark.points(1)
@pytest.mark.depends_on("test_compute_accuracy")
@pytest.mark.runs("compute_accuracy")
def test_compute_accuracy_in_eval_mode(submission):
    """compute_accuracy switches the model to evaluation mode: dropout off."""
    got = submission.run(student_accuracies, state=small_model(51, 2, 0.9).state_dict(), X=ACCURACY_X,
                         y=ACCURACY_Y, batch_sizes=[7, 2], dropout=0.9)
    for value, batch_size in zip(got, [7, 2]):
        expect_true(isinstance(value, (int, float)), what="compute_accuracy", problem="did not return a number.")
        expect_close(torch.tensor([float(value)]), torch.tensor([reference_accuracy(batch_size, 0.9)]), atol=1e-6,
                     rtol=0, what=f"compute_accuracy of a model with dropout 0.9, left in train mode (batches of "
                                  f"{batch_size})",
                     hint="switch the model to evaluation mode first (its eval method): in train mode dropout "
                          "zeroes random activations, and the "
                          "accuracy changes from run to run.")


# -- A.9.3: distributed data-parallel training ------------------------------------------------------------------

def ddp_world(submission) -> tuple[int, str]:
    """(ranks, expected backend): two CPU processes with gloo; with CUDA, nccl and one rank per GPU (at most 2)."""
    if submission.device.startswith("cuda"):
        return max(1, min(2, torch.cuda.device_count())), "nccl"
    return 2, "gloo"


def replayed_batches(world_size, epoch, batch_size=2):
    """The example indices of each global step: every rank's batch of that step (DistributedSampler with its
    defaults: shuffled with seed 0 and the epoch; the loader drops a last, smaller batch)."""
    dataset = ref.ToyDataset(ref.X_train, ref.y_train)
    per_rank = []
    for rank in range(world_size):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        per_rank.append([indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)])
    return per_rank


@torch.enable_grad()  # a training run, also where name_mistake computes a mistake's result (under no_grad)
def single_process_training(world_size, *, set_epoch=True, whole_dataset=False, loss_scale=1.0):
    """The parameters of one process trained on the global batches of the DDP run (the book's seed, data and
    SGD), or with a classic mistake: no set_epoch, every rank on the whole training set, a summed loss."""
    from probe_kit.ranks import PlainSGD

    torch.manual_seed(123)
    model = ref.NeuralNetwork(num_inputs=2, num_outputs=2)
    optimizer = PlainSGD(model.parameters(), lr=0.5)
    for epoch in range(NUM_EPOCHS):
        if whole_dataset:
            steps = [[0, 1], [2, 3]]  # each rank: the whole set in order, batches of 2, the last one dropped
        else:
            steps = [sum(batches, []) for batches in zip(*replayed_batches(world_size, epoch if set_epoch else 0))]
        for indices in steps:
            loss = F.cross_entropy(model(ref.X_train[indices]), ref.y_train[indices]) * loss_scale
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


DDP_MISTAKES = [
    Mistake("training without sampler.set_epoch(epoch)", "at the start of every epoch, tell the training loader's "
            "sampler the epoch number (its set_epoch method), so that each epoch is shuffled anew.", set_epoch=False),
    Mistake("every rank training on the whole training set", "the training loader needs a DistributedSampler "
            "over the training set as its sampler (and no shuffling of its own), so that each rank gets its own "
            "share.",
            whole_dataset=True),
    Mistake("a loss summed over the batch",
            "use the mean over the batch (F.cross_entropy's default): DDP averages the ranks' gradients.",
            loss_scale=2.0),
]


def same_parameters(got, mistaken) -> bool:
    """The parameters main trained are a mistaken run's (a state_dict each)."""
    return all(same_values(got.get(name), tensor) for name, tensor in mistaken.items())


def ddp_hint(world_size, state):
    """The hint for wrong parameters after DDP training: the classic mistake that gives them, else the recipe."""
    return name_mistake(state, DDP_MISTAKES, partial(single_process_training, world_size), matches=same_parameters,
                        yours="your parameters are") or (
        "build the model right after the seed (the grader seeds with 123 before main); per batch: forward, "
        "F.cross_entropy, zero_grad, "
        "backward, step; SGD with lr=0.5.")


BACKEND_ARGUMENT = ("a `backend` passed to ddp_setup is the one to use: choose by device (nccl with CUDA, gloo "
                    "without) only when the caller passes none (backend=None, the default).")


@pytest.mark.points(1)
@pytest.mark.runs("ddp_setup")
def test_ddp_setup(submission):
    """ddp_setup joins the process group with the right rank and world size, on the backend the caller passes (else
    one that fits the device: on a grader without GPUs, the book's nccl is served by gloo)."""
    world_size, backend = ddp_world(submission)
    with explain_errors(nccl_without_gpus):
        got = submission.run_ranks(ddp_setup_rank, world_size=world_size)
    for rank, info in enumerate(got):
        what = f"rank {rank} of {world_size} after ddp_setup"
        expect_true(info.initialized is True, what=what, problem="the process group is not initialised.",
                    hint="ddp_setup must end by joining the group: init_process_group with the backend, this "
                         "process's rank, the world size and the timeout (section A.9.3, listing A.13).")
        expect_equal(info.backend, backend, what=f"{what}: the backend in use",
                     hint="nccl works between NVIDIA GPUs only: with CUDA ask for nccl, else for gloo.")
        expect_equal([info.rank, info.world_size], [rank, world_size], what=f"{what}: rank and world size",
                     hint="pass ddp_setup's own rank and world_size on to init_process_group.")
        expect_equal(info.sum, float(world_size * (world_size + 1) // 2),
                     what=f"{what}: an all-reduce over the ranks", hint="every rank must join the same group.")
        if info.asked_for_nccl is None:
            continue  # the book's signature, ddp_setup(rank, world_size): no backend to honour
        asked = [str(name).lower() for name in info.asked_for_nccl]
        expect_true(asked == ["nccl"], what=f"rank {rank}: ddp_setup(rank, world_size, backend='nccl')",
                    problem=f"asked init_process_group for {asked} instead of ['nccl']: your ddp_setup ignores its "
                            "backend argument." if asked else "never called init_process_group.",
                    hint=BACKEND_ARGUMENT)


@pytest.mark.points(1)
@pytest.mark.runs("prepare_dataset")
@pytest.mark.stand_ins("ToyDataset")
def test_prepare_dataset(submission):
    """prepare_dataset: each rank's share of the training set in every epoch (DistributedSampler), and the test set."""
    world_size, _ = ddp_world(submission)
    got = submission.run_ranks(dataset_shares, world_size=world_size, epochs=2)
    hint = ("the training loader over the book's five training examples: batches of 2, the last incomplete batch "
            "dropped, no shuffling of its own, and a DistributedSampler over the training set (section A.9.3).")
    for rank, result in enumerate(got):
        for epoch in range(2):
            expected = [[ref.X_train[indices].tolist(), ref.y_train[indices].tolist()]
                        for indices in replayed_batches(world_size, epoch)[rank]]
            sampler_hint = hint if result.sampler == "DistributedSampler" else (
                f"the training loader's sampler is a {result.sampler}: give it a DistributedSampler over the "
                "training set, which shares the examples out among the ranks.")
            expect_equal(result.shares[epoch], expected, what=f"rank {rank}'s training batches in epoch {epoch}",
                         hint=sampler_hint)
        expected_test = [[ref.X_test.tolist(), ref.y_test.tolist()]]
        expect_equal(result.test, expected_test, what=f"rank {rank}'s test batches",
                     hint="the test loader serves the whole test set (both examples), in order, in batches of 2.")


@pytest.mark.points(3)
@pytest.mark.runs("main")
@pytest.mark.stand_ins("NeuralNetwork", "ToyDataset", "compute_accuracy", "ddp_setup", "prepare_dataset")
def test_ddp_training(submission):
    """main on two processes trains the same parameters as one process on the global batches, and leaves the group."""
    world_size, _ = ddp_world(submission)
    with explain_errors(nccl_without_gpus):
        got = submission.run_ranks(ddp_training, world_size=world_size, num_epochs=NUM_EPOCHS)
    expected = single_process_training(world_size)
    for rank, result in enumerate(got):
        what = f"rank {rank} of {world_size}"
        expect_true(result.state is not None, what=f"{what}: the trained model",
                    problem="main neither returned a model nor wrapped one in DistributedDataParallel.",
                    hint="wrap the model in DDP, and at the end of main return the plain model inside the "
                         "wrapper (its module attribute).")
        expect_true(result.wrapped >= 1, what=f"{what}: the model",
                    problem="was not wrapped in DistributedDataParallel, so the ranks never averaged their "
                            "gradients.", hint="wrap the model in DDP after building it (device_ids=[rank] on a "
                                               "GPU only), and train the wrapper.")
        expect_equal(sorted(result.state), sorted(expected), what=f"{what}: the names of the trained model's "
                     "parameters", hint="train the book's NeuralNetwork(num_inputs=2, num_outputs=2).")
        for name, tensor in expected.items():
            expect_close(result.state[name], tensor, what=f"{what}: {name} after {NUM_EPOCHS} epochs of DDP "
                         "training, against one process trained on the global batches",
                         hint=partial(ddp_hint, world_size, result.state))
        expect_true(result.still_initialized is False, what=f"{what}: after main",
                    problem="the process group is still initialised.",
                    hint="leave the process group at the end of main (destroy_process_group, in a finally: block, "
                         "so that it also runs after an error).")
