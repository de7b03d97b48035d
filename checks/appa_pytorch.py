"""Public checks of appendix A (an introduction to PyTorch, with distributed training), one per hidden grader test.

The worked examples are the notebook's (and the book's): NeuralNetwork(50, 3) with seed 123 and its printed
logits, the toy data set, the book's training run (seed 123, SGD with lr 0.5, three epochs) with its printed
losses and logits, and its accuracies. The distributed checks run in one process (a process group of world size
1), so that they work wherever the notebook runs; the hidden grader runs two processes and compares the
parameters they train with one process trained on the global batches.
"""

import contextlib
import io
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from checks import (
    CheckFailed,
    Checks,
    Class,
    Function,
    Interface,
    expect_close,
    expect_equal,
    expect_shape,
    require,
)

# What the students write, with the book's signatures: the public checks look definitions up with these,
# and the hidden grader imports this very INTERFACE.
INTERFACE = Interface(
    Class("NeuralNetwork", "(num_inputs, num_outputs)", methods={"forward": "(x)"}),
    Class("ToyDataset", "(X, y)", methods={"__getitem__": "(index)", "__len__": "()"}),
    Function("train_model", "(model, train_loader, optimizer, device, num_epochs, verbose=False)"),
    Function("compute_accuracy", "(model, dataloader, device=None)"),
    Function("ddp_setup", "(rank, world_size, backend=None, timeout=datetime.timedelta(seconds=60))"),
    Function("prepare_dataset", "()"),
    Function("main", "(rank, world_size, num_epochs)"),
)

CHECKS = Checks("appa_pytorch", INTERFACE)
check = CHECKS.check  # the notebook's check cells call check("test_...")

X_TRAIN = [[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]]
Y_TRAIN = [0, 0, 0, 1, 1]
X_TEST = [[-0.8, 2.8], [2.6, -1.6]]
Y_TEST = [0, 1]
BOOK_LOGITS_50_3 = [[-0.1262, 0.1080, -0.1792]]  # NeuralNetwork(50, 3) with seed 123 on torch.rand((1, 50))
BOOK_LOSSES = [0.75, 0.65, 0.44, 0.13, 0.03, 0.00]
BOOK_TRAINED_LOGITS = [[2.8569, -4.1618], [2.5382, -3.7548], [2.0944, -3.1820], [-1.4814, 1.4816],
                       [-1.7176, 1.7342]]
HINT_LAYERS = ("self.layers = nn.Sequential(nn.Linear(num_inputs, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), "
               "nn.Linear(20, num_outputs)), and forward returns self.layers(x).")


def network(ns, seed, *args):
    torch.manual_seed(seed)
    model = ns["NeuralNetwork"](*args)
    require(isinstance(model, nn.Module), "NeuralNetwork(...) is not a torch.nn.Module.",
                "keep `class NeuralNetwork(nn.Module)` and the super().__init__() call.")
    return model


def toy_dataset(ns):
    return ns["ToyDataset"](torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN))


def book_run(ns):
    """The book's training run with the student's network, dataset and train_model: (model, losses)."""
    torch.manual_seed(123)
    model = ns["NeuralNetwork"](2, 2)
    loader = DataLoader(toy_dataset(ns), batch_size=2, shuffle=True, drop_last=True)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    with contextlib.redirect_stdout(io.StringIO()):
        losses = ns["train_model"](model, loader, sgd, "cpu", 3)
    return model, losses


@contextlib.contextmanager
def one_process_group():
    """MASTER_ADDR and MASTER_PORT for a process group of one process, restored afterwards; a group left behind
    is destroyed. Port 0: rank 0's store listens on a free port that the operating system picks, which no other
    program can hold (a group of one has no other rank that would need to know it)."""
    saved = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT")}
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", "0"
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Process groups held by ddp_groups_released_last when the code it ran raised: let go of at its next use.
_GROUPS_TO_RELEASE: list = []


@contextlib.contextmanager
def ddp_groups_released_last():
    """Hold the process group of every DDP wrapper made inside, and let go of it only after the wrapper is gone.

    Why: with PyTorch 2.13, every backward() leaves a Python object in the all-reduce that DDP starts, and the
    gloo thread that ran the all-reduce needs the GIL to free it. The book's main calls destroy_process_group()
    while its DDP wrapper still exists, so when main returns, the wrapper lets go of the last reference to the
    group, and the group's destructor waits for gloo's threads while holding the GIL: if one of them is still
    freeing that all-reduce, each waits for the other forever. The last reference let go of from Python (a
    ProcessGroup object) releases the GIL first, so the check holds the groups until main has returned.
    After an error, the wrapper may live on in the traceback: the groups then wait for the next check.
    Gives the list of groups held.
    """
    del _GROUPS_TO_RELEASE[:]
    groups = []
    original_init = DistributedDataParallel.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        groups.append(self.process_group)

    DistributedDataParallel.__init__ = recording_init
    try:
        yield groups
    except BaseException:
        _GROUPS_TO_RELEASE.extend(groups)
        raise
    finally:
        DistributedDataParallel.__init__ = original_init
        groups.clear()


# -- A.5: the network --------------------------------------------------------------------------------------------

@CHECKS.register("test_neural_network_layers", subject="NeuralNetwork",
                 description="NeuralNetwork(50, 3) has the book's 2,213 parameters in self.layers")
def check_neural_network_layers(ns):
    model = network(ns, 123, 50, 3)
    expect_equal(sum(p.numel() for p in model.parameters()), 2213, "the number of parameters of NeuralNetwork(50, 3)",
                 HINT_LAYERS)
    layers = getattr(model, "layers", None)
    require(isinstance(layers, nn.Sequential) and len(layers) == 5,
                "NeuralNetwork(50, 3).layers is not an nn.Sequential of 5 layers.", HINT_LAYERS)
    expect_shape(layers[0].weight, (30, 50), "NeuralNetwork(50, 3).layers[0].weight", HINT_LAYERS)


@CHECKS.register("test_neural_network_output", subject="NeuralNetwork",
                 description="NeuralNetwork(50, 3) with seed 123 gives the book's logits")
def check_neural_network_output(ns):
    model = network(ns, 123, 50, 3)
    torch.manual_seed(123)
    x = torch.rand((1, 50))
    with torch.no_grad():
        out = model(x)
    expect_close(out, BOOK_LOGITS_50_3, "NeuralNetwork(50, 3)(torch.rand((1, 50))) with seed 123, compared with "
                 "the book's printout", "logits, no activation after the last layer. " + HINT_LAYERS)


@CHECKS.register("test_neural_network_gradients", subject="NeuralNetwork",
                 description="backward gives every parameter of NeuralNetwork a gradient")
def check_neural_network_gradients(ns):
    model = network(ns, 123, 2, 2)
    x = torch.tensor(X_TRAIN, requires_grad=True)
    F.cross_entropy(model(x), torch.tensor(Y_TRAIN)).backward()
    for name, parameter in model.named_parameters():
        require(parameter.grad is not None and tuple(parameter.grad.shape) == tuple(parameter.shape),
                    f"after backward(), the parameter {name} has no gradient of its shape.",
                    "no .detach(), .item() or torch.no_grad() inside forward.")
    require(x.grad is not None and bool(x.grad.abs().sum() > 0), "no gradient reached the input.",
                "forward must compute its output from x with torch operations.")


# -- A.6: the dataset ---------------------------------------------------------------------------------------------

@CHECKS.register("test_toy_dataset", subject="ToyDataset",
                 description="ToyDataset over the book's five training examples")
def check_toy_dataset(ns):
    dataset = toy_dataset(ns)
    expect_equal(len(dataset), 5, "len(ToyDataset(X_train, y_train))", "__len__ returns self.labels.shape[0].")
    item = dataset[3]
    require(isinstance(item, (tuple, list)) and len(item) == 2, "ToyDataset(X_train, y_train)[3] is not a "
                "pair (features, label).", "__getitem__ returns (self.features[index], self.labels[index]).")
    expect_close(item[0], X_TRAIN[3], "the features of example 3", "self.features[index].")
    expect_equal(int(item[1]), 1, "the label of example 3", "self.labels[index].")
    batches = [labels.tolist() for _, labels in DataLoader(dataset, batch_size=2)]
    expect_equal(batches, [[0, 0], [0, 1], [1]], "the labels of DataLoader(dataset, batch_size=2)'s batches",
                 "one example per index, in order.")


# -- A.7: training and accuracy ---------------------------------------------------------------------------------

@CHECKS.register("test_train_model_losses", subject="train_model",
                 description="train_model in the book's run returns the book's six losses")
def check_train_model_losses(ns):
    _, losses = book_run(ns)
    require(isinstance(losses, list) and len(losses) == 6, f"train_model returned {type(losses).__name__} "
                f"{str(losses)[:80]}, not a list of the 6 losses (3 epochs of 2 batches).",
                "append loss.item() after each step and return the list.")
    expect_equal([round(float(loss), 2) for loss in losses], BOOK_LOSSES, "the losses, rounded to two decimals",
                 "per batch: logits = model(features), loss = F.cross_entropy(logits, labels), "
                 "optimizer.zero_grad(), loss.backward(), optimizer.step().")


@CHECKS.register("test_train_model_parameters", subject="train_model",
                 description="after the book's run, the network gives the book's logits")
def check_train_model_parameters(ns):
    model, _ = book_run(ns)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(X_TRAIN))
    expect_close(logits, BOOK_TRAINED_LOGITS, "the trained network's logits of X_train, compared with the book's",
                 "clear the gradients before each backward() (optimizer.zero_grad()), and step once per batch.",
                 atol=1e-3)


class AlwaysZero(nn.Module):
    """A 'model' that predicts class 0 for every example."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1) + self.weight


@CHECKS.register("test_compute_accuracy", subject="compute_accuracy",
                 description="compute_accuracy counts correct predictions over batches of unequal size")
def check_compute_accuracy(ns):
    loader = DataLoader(TensorDataset(torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN)), batch_size=2)  # 2, 2 and 1
    value = ns["compute_accuracy"](AlwaysZero(), loader)
    require(isinstance(value, (int, float)), f"compute_accuracy returned {type(value).__name__}, not a number.",
                "return correct / total_examples as a Python float.")
    require(abs(value - 0.6) < 1e-6, f"compute_accuracy of a model that always predicts class 0 on the book's "
                f"training set (three of five examples are class 0) is {value}, expected 0.6.",
                "count correct predictions and examples over all batches, then divide once (the last batch has "
                "one example).")


@CHECKS.register("test_compute_accuracy_in_eval_mode", subject="compute_accuracy",
                 description="compute_accuracy switches dropout off (eval mode)")
def check_compute_accuracy_in_eval_mode(ns):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, 2))
    loader = DataLoader(TensorDataset(torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN)), batch_size=5)
    values = []
    for seed in (1, 2, 3):
        model.train()
        torch.manual_seed(seed)
        values.append(ns["compute_accuracy"](model, loader))
    require(len(set(values)) == 1, f"compute_accuracy of a model with dropout, left in train mode, changes from "
                f"run to run: {values}.", "call model.eval() first.")


# -- A.9.3: distributed training, in one process -----------------------------------------------------------------

def expected_backend():
    return "nccl" if torch.cuda.is_available() else "gloo"


@CHECKS.register("test_ddp_setup", subject="ddp_setup",
                 description="ddp_setup(0, 1) forms a process group of one process (gloo on the CPU)")
def check_ddp_setup(ns):
    with one_process_group():
        ns["ddp_setup"](0, 1)
        require(dist.is_initialized(), "after ddp_setup(0, 1) no process group is initialised.",
                    "call init_process_group(backend=..., rank=rank, world_size=world_size, timeout=timeout).")
        expect_equal(str(dist.get_backend()), expected_backend(), "the backend",
                     "nccl when torch.cuda.is_available(), else gloo.")
        expect_equal([dist.get_rank(), dist.get_world_size()], [0, 1], "[rank, world size]",
                     "pass rank and world_size on to init_process_group.")


@CHECKS.register("test_prepare_dataset", subject="prepare_dataset",
                 description="prepare_dataset gives a DistributedSampler and the book's batches (one process)")
def check_prepare_dataset(ns):
    with one_process_group():
        dist.init_process_group("gloo", rank=0, world_size=1)
        train_loader, test_loader = ns["prepare_dataset"]()
        sampler = getattr(train_loader, "sampler", None)
        require(type(sampler).__name__ == "DistributedSampler", f"the training loader's sampler is a "
                    f"{type(sampler).__name__}, not a DistributedSampler.",
                    "DataLoader(train_ds, ..., shuffle=False, sampler=DistributedSampler(train_ds)).")
        sizes = [len(labels) for _, labels in train_loader]
        expect_equal(sizes, [2, 2], "the batch sizes of the training loader in one process",
                     "batch_size=2 and drop_last=True: five examples give two batches of two.")
        test = [labels.tolist() for _, labels in test_loader]
        expect_equal(test, [Y_TEST], "the labels of the test loader's batches", "DataLoader(test_ds, batch_size=2, "
                                                                                  "shuffle=False).")


@CHECKS.register("test_ddp_training", subject="main",
                 description="main(0, 1, 3) trains in one process and leaves the process group")
def check_ddp_training(ns):
    with one_process_group(), ddp_groups_released_last():
        with contextlib.redirect_stdout(io.StringIO()):
            model = ns["main"](0, 1, 3)
        left_the_group = not dist.is_initialized()
        if isinstance(model, DistributedDataParallel):
            model = model.module  # as the grader does; the wrapper goes here, before its process group
    if not left_the_group:
        raise CheckFailed("after main, the process group is still initialised.",
                          "end main with destroy_process_group(), in a finally: block.")
    if model is None:
        return  # the book's main returns nothing; the grader then takes the model main wrapped in DDP
    require(isinstance(model, nn.Module), f"main returned {type(model).__name__}, not the trained model.",
                "return model.module, the plain model inside the DDP wrapper.")
    with torch.no_grad():
        predictions = model.cpu()(torch.tensor(X_TRAIN)).argmax(dim=1).tolist()
    expect_equal(predictions, Y_TRAIN, "the trained model's predictions on the training set",
                 "train with SGD (lr=0.5) for num_epochs epochs, calling train_loader.sampler.set_epoch(epoch).")
