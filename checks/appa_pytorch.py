"""Public checks of appendix A (an introduction to PyTorch, with distributed training), one per hidden grader test.

The worked examples are the notebook's (and the book's): NeuralNetwork(50, 3) with seed 123 and its printed
logits, the toy data set, the book's training run (seed 123, SGD with lr 0.5, three epochs) with its printed
losses and logits, and its accuracies. The distributed checks run in one process (a process group of world size
1), so that they work wherever the notebook runs; the hidden grader runs two processes and compares the
parameters they train with one process trained on the global batches. Where there is no GPU, the book's GPU calls
(nccl, torch.cuda.set_device, moving to device `rank`) are served by gloo and the CPU, as the hidden grader does.
The check of `main` replays the run in this process with the student's own NeuralNetwork and prepare_dataset, so
that it fails for a bug in `main` itself.
"""

import contextlib
import inspect
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
HINT_LAYERS = ("self.layers is an nn.Sequential of five modules: a linear layer num_inputs -> 30, a ReLU, a linear "
               "layer 30 -> 20, a ReLU, and a linear output layer 20 -> num_outputs; forward runs x through them "
               "(section A.5).")
HINT_LOOP = ("for every batch, in this order (section A.7): the model's logits for the features, the mean "
             "cross-entropy of the logits and the labels, clear the old gradients (the optimizer's zero_grad), "
             "backpropagate (backward on the loss), update the parameters (the optimizer's step).")
HINT_BACKEND = ("a `backend` passed to ddp_setup is the one to use: choose by device (nccl with CUDA, gloo without) "
                "only when the caller passes none (backend=None, the default).")


def network(ns, seed, *args):
    torch.manual_seed(seed)
    model = ns["NeuralNetwork"](*args)
    require(isinstance(model, nn.Module), "NeuralNetwork(...) is not a torch.nn.Module.",
            "keep the class statement the notebook gave you, and its call of the parent's __init__.")
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
    gloo thread that ran the all-reduce needs the GIL to free it. The book's main calls destroy_process_group
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


class Served:
    """What gpu_calls_served saw: the .backends that init_process_group was asked for, and the .models wrapped in
    DistributedDataParallel; with .initialise False, a request is recorded and no group is made."""

    def __init__(self):
        self.backends, self.models, self.initialise = [], [], True


def _cpu_device(value):
    """A device argument of .to(): a GPU (an int index, "cuda", torch.device("cuda", 1)) becomes the CPU."""
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cpu")
    if isinstance(value, (str, torch.device)):
        with contextlib.suppress(RuntimeError, TypeError):
            if torch.device(value).type == "cuda":
                return torch.device("cpu")
    return value


def _on_the_cpu(original):
    def to(self, *args, **kwargs):
        args = [_cpu_device(arg) for arg in args]
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return original(self, *args, **kwargs)

    return to


@contextlib.contextmanager
def gpu_calls_served(notebook_globals):
    """Run the notebook's DDP code as the hidden grader does. init_process_group records the backend asked for and
    meets at the MASTER_ADDR/MASTER_PORT set when the block began (the book writes localhost:12345 into them);
    DistributedDataParallel records the model it wraps. Without CUDA, a request for nccl is served by gloo,
    torch.cuda.set_device does nothing, .to(rank) keeps tensors and models on the CPU, and DDP leaves out the
    device_ids of a model on the CPU. Everything is put back afterwards. Gives a Served."""
    from torch.distributed import distributed_c10d

    served = Served()
    gpus = torch.cuda.is_available()
    master = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT")}
    original_init = distributed_c10d.init_process_group
    original_ddp_init = DistributedDataParallel.__init__

    def init_process_group(backend=None, *args, **kwargs):
        served.backends.append(backend)
        if not served.initialise:
            return None
        if not gpus and isinstance(backend, str) and "nccl" in backend.lower():
            backend = "gloo"
        if not gpus:
            kwargs.pop("device_id", None)
        os.environ.update({key: value for key, value in master.items() if value is not None})
        return original_init(backend, *args, **kwargs)

    def ddp_init(self, module, *args, **kwargs):
        if not gpus and all(parameter.device.type == "cpu" for parameter in module.parameters()):
            kwargs.pop("device_ids", None), kwargs.pop("output_device", None)
            args = (None, None, *args[2:]) if args else ()
        original_ddp_init(self, module, *args, **kwargs)
        served.models.append(module)

    saved = []

    def swap(owner, name, value):
        saved.append((owner, name, vars(owner).get(name, _ABSENT)))
        setattr(owner, name, value)

    try:
        swap(dist, "init_process_group", init_process_group)
        swap(distributed_c10d, "init_process_group", init_process_group)
        for name, value in list(notebook_globals.items()):
            if value is original_init:  # `from torch.distributed import init_process_group`
                saved.append((notebook_globals, name, value))
                notebook_globals[name] = init_process_group
        swap(DistributedDataParallel, "__init__", ddp_init)
        if not gpus:
            swap(torch.cuda, "set_device", lambda device: None)
            swap(torch.Tensor, "to", _on_the_cpu(torch.Tensor.to))
            swap(nn.Module, "to", _on_the_cpu(nn.Module.to))
        yield served
    finally:
        for owner, name, value in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = value
            elif value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


_ABSENT = object()


# -- A.5: the network --------------------------------------------------------------------------------------------

@CHECKS.register("test_neural_network_layers", subject="NeuralNetwork",
                 description="NeuralNetwork(50, 3) has the book's 2,213 parameters in self.layers",
                 error_hint=HINT_LAYERS)
def check_neural_network_layers(ns):
    model = network(ns, 123, 50, 3)
    expect_equal(sum(p.numel() for p in model.parameters()), 2213, "the number of parameters of NeuralNetwork(50, 3)",
                 "50*30+30 + 30*20+20 + 20*3+3 = 2,213. " + HINT_LAYERS)
    layers = getattr(model, "layers", None)
    require(isinstance(layers, nn.Sequential) and len(layers) == 5,
            "NeuralNetwork(50, 3).layers is not an nn.Sequential of 5 modules.", HINT_LAYERS)
    expect_shape(layers[0].weight, (30, 50), "NeuralNetwork(50, 3).layers[0].weight", HINT_LAYERS)


def book_network_with(model, x, activation=torch.relu, on_output=None):
    """The student's own network's output with a classic mistake (recomputed from its own layers)."""
    hidden = activation or (lambda t: t)
    logits = model.layers[4](hidden(model.layers[2](hidden(model.layers[0](x)))))
    return on_output(logits) if on_output else logits


NETWORK_MISTAKES = [
    ("a softmax after the output layer", "return the logits: the loss function applies the softmax itself.",
     {"on_output": lambda t: torch.softmax(t, dim=-1)}),
    ("a ReLU after the output layer too", "no activation after the last linear layer: it returns logits.",
     {"on_output": torch.relu}),
    ("sigmoid activations", "the hidden layers are followed by ReLUs.", {"activation": torch.sigmoid}),
    ("a network without activation functions", "put a ReLU after each hidden layer.", {"activation": None}),
]


@CHECKS.register("test_neural_network_output", subject="NeuralNetwork",
                 description="NeuralNetwork(50, 3) with seed 123 gives the book's logits",
                 error_hint="forward takes x of shape (batch_size, num_inputs) and returns the logits. " + HINT_LAYERS)
def check_neural_network_output(ns):
    model = network(ns, 123, 50, 3)
    torch.manual_seed(123)
    x = torch.rand((1, 50))
    with torch.no_grad():
        out = model(x)
    hint = "logits, no activation after the last layer. " + HINT_LAYERS
    if not torch.allclose(out, torch.tensor(BOOK_LOGITS_50_3), atol=1e-4):
        with torch.no_grad(), contextlib.suppress(Exception):  # a network of other layers: no mistake to name
            for name, fix, change in NETWORK_MISTAKES:
                if torch.allclose(out, book_network_with(model, x, **change), atol=1e-6):
                    hint = f"your logits are what {name} gives: {fix}"
                    break
    expect_close(out, BOOK_LOGITS_50_3, "NeuralNetwork(50, 3)(torch.rand((1, 50))) with seed 123, compared with "
                 "the book's printout", hint)


@CHECKS.register("test_neural_network_gradients", subject="NeuralNetwork",
                 description="backward gives every parameter of NeuralNetwork, and the input, a gradient",
                 error_hint="let autograd do the work: forward computes with torch operations on x.")
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
                 description="ToyDataset over the book's five training examples",
                 error_hint="dataset[index] is the pair (features of example index, its label); len(dataset) is "
                            "the number of labels.")
def check_toy_dataset(ns):
    dataset = toy_dataset(ns)
    expect_equal(len(dataset), 5, "len(ToyDataset(X_train, y_train))",
                 "the length is the number of labels (examples), not of features.")
    item = dataset[3]
    require(isinstance(item, (tuple, list)) and len(item) == 2, "ToyDataset(X_train, y_train)[3] is not a "
            "pair (features, label).", "__getitem__ returns two things: the features of the example, and its label.")
    expect_close(item[0], X_TRAIN[3], "the features of example 3", "the row `index` of the features.")
    expect_equal(int(item[1]), 1, "the label of example 3", "the label at `index`.")
    batches = [labels.tolist() for _, labels in DataLoader(dataset, batch_size=2)]
    expect_equal(batches, [[0, 0], [0, 1], [1]], "the labels of DataLoader(dataset, batch_size=2)'s batches",
                 "one example per index, in order.")


# -- A.7: training and accuracy ---------------------------------------------------------------------------------

@CHECKS.register("test_train_model_losses", subject="train_model",
                 description="train_model in the book's run returns the book's six losses as Python floats, and "
                             "trains a model handed over in eval mode in training mode",
                 error_hint="train_model moves each batch to `device`, trains, and returns a list of floats. "
                            + HINT_LOOP)
def check_train_model_losses(ns):
    _, losses = book_run(ns)
    require(isinstance(losses, list) and len(losses) == 6, f"train_model returned {type(losses).__name__} "
            f"{str(losses)[:80]}, not a list of the 6 losses (3 epochs of 2 batches).",
            "after each step, append the loss as a Python float (its .item()) to a list, and return the list.")
    require(all(isinstance(loss, (int, float)) for loss in losses), f"train_model returned the losses as "
            f"{type(losses[0]).__name__}s, not Python floats: a tensor keeps its step's computation graph alive.",
            "turn each loss into a Python float (its .item()) before you keep it.")
    expect_equal([round(float(loss), 2) for loss in losses], BOOK_LOSSES, "the losses, rounded to two decimals",
                 HINT_LOOP)
    # Handed over in evaluation mode (as after compute_accuracy), the model must be trained in training mode.
    recorder = ModeRecorder()
    recorder.eval()
    loader = DataLoader(TensorDataset(torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN)), batch_size=2)
    with contextlib.redirect_stdout(io.StringIO()):
        ns["train_model"](recorder, loader, torch.optim.SGD(recorder.parameters(), lr=0.1), "cpu", 2)
    require(recorder.modes and all(recorder.modes), f"train_model ran {recorder.modes.count(False)} of "
            f"{len(recorder.modes)} forward passes of a model handed over in evaluation mode without switching it "
            "to training mode: dropout would stay off.",
            "switch the model to training mode (its train method) at the start of every epoch.")


class ModeRecorder(nn.Module):
    """A linear classifier that records, at every forward pass, whether it is in training mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.linear(x)


@CHECKS.register("test_train_model_parameters", subject="train_model",
                 description="after the book's run, the network gives the book's logits",
                 error_hint="train_model moves each batch to `device`, trains, and returns a list of floats. "
                            + HINT_LOOP)
def check_train_model_parameters(ns):
    model, _ = book_run(ns)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(X_TRAIN))
    expect_close(logits, BOOK_TRAINED_LOGITS, "the trained network's logits of X_train, compared with the book's",
                 "clear the gradients before each backward pass (the optimizer's zero_grad), and take one optimizer "
                 "step per batch.", atol=1e-3)


class AlwaysZero(nn.Module):
    """A 'model' that predicts class 0 for every example."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1) + self.weight


HINT_ACCURACY = ("count the correct predictions (largest logit at the label) and the examples over all batches, "
                 "then divide once: the last batch may be smaller.")


@CHECKS.register("test_compute_accuracy", subject="compute_accuracy",
                 description="compute_accuracy counts correct predictions over batches of unequal size",
                 error_hint="compute_accuracy takes (model, dataloader, device=None); with no device, use the device "
                            "of the model's parameters. " + HINT_ACCURACY)
def check_compute_accuracy(ns):
    loader = DataLoader(TensorDataset(torch.tensor(X_TRAIN), torch.tensor(Y_TRAIN)), batch_size=2)  # 2, 2 and 1
    value = ns["compute_accuracy"](AlwaysZero(), loader)
    require(isinstance(value, (int, float)), f"compute_accuracy returned {type(value).__name__}, not a number.",
            "return a Python number between 0 and 1 (.item() turns a 0-d tensor into one).")
    hint = HINT_ACCURACY
    if abs(value - 0.5) < 1e-6:
        hint = "your value is the mean of the per-batch accuracies, which weighs the last, smaller batch too much: " \
            + hint
    require(abs(value - 0.6) < 1e-6, f"compute_accuracy of a model that always predicts class 0 on the book's "
            f"training set (three of five examples are class 0) is {value}, expected 0.6.", hint)


@CHECKS.register("test_compute_accuracy_in_eval_mode", subject="compute_accuracy",
                 description="compute_accuracy switches dropout off (eval mode)",
                 error_hint="compute_accuracy takes (model, dataloader, device=None). " + HINT_ACCURACY)
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
            f"run to run: {values}.", "switch the model to evaluation mode first (its eval method): in train mode "
                                      "dropout zeroes random activations.")


# -- A.9.3: distributed training, in one process -----------------------------------------------------------------

def expected_backend():
    return "nccl" if torch.cuda.is_available() else "gloo"


@CHECKS.register("test_ddp_setup", subject="ddp_setup",
                 description="ddp_setup(0, 1) forms a process group of one process (gloo without CUDA), and "
                             "ddp_setup(0, 1, backend='nccl') asks for nccl",
                 error_hint="ddp_setup ends by joining the group: init_process_group with the backend, the rank, the "
                            "world size and the timeout (section A.9.3).")
def check_ddp_setup(ns):
    ddp_setup = ns["ddp_setup"]
    with one_process_group(), gpu_calls_served(getattr(ddp_setup, "__globals__", {})) as served:
        ddp_setup(0, 1)
        require(dist.is_initialized(), "after ddp_setup(0, 1) no process group is initialised.",
                "ddp_setup ends by joining the group with init_process_group (section A.9.3).")
        expect_equal(str(dist.get_backend()), expected_backend(), "the backend in use",
                     "nccl works between NVIDIA GPUs only: with CUDA ask for nccl, else for gloo.")
        expect_equal([dist.get_rank(), dist.get_world_size()], [0, 1], "[rank, world size]",
                     "pass ddp_setup's own rank and world_size on to init_process_group.")
        dist.destroy_process_group()
        if "backend" not in inspect.signature(ddp_setup).parameters:
            return  # the book's ddp_setup(rank, world_size): no backend to honour
        served.backends.clear()
        served.initialise = False
        ddp_setup(0, 1, backend="nccl")
        asked = [str(name).lower() for name in served.backends]
        require(asked == ["nccl"], f"ddp_setup(0, 1, backend='nccl') asked init_process_group for {asked}: your "
                "ddp_setup ignores its backend argument." if asked else "ddp_setup(0, 1, backend='nccl') never "
                "called init_process_group.", HINT_BACKEND)


@CHECKS.register("test_prepare_dataset", subject="prepare_dataset",
                 description="prepare_dataset gives a DistributedSampler and the book's batches (one process)",
                 error_hint="prepare_dataset builds the book's toy data in ToyDatasets and returns (train_loader, "
                            "test_loader); the training loader's sampler is a DistributedSampler (section A.9.3).")
def check_prepare_dataset(ns):
    with one_process_group():
        dist.init_process_group("gloo", rank=0, world_size=1)
        train_loader, test_loader = ns["prepare_dataset"]()
        sampler = getattr(train_loader, "sampler", None)
        require(type(sampler).__name__ == "DistributedSampler", f"the training loader's sampler is a "
                f"{type(sampler).__name__}, not a DistributedSampler.",
                "give the training loader a DistributedSampler over the training set as its sampler (and no "
                "shuffling of its own): it shares the examples out among the ranks.")
        sizes = [len(labels) for _, labels in train_loader]
        expect_equal(sizes, [2, 2], "the batch sizes of the training loader in one process",
                     "batches of 2, the last incomplete batch dropped: five examples give two batches of two.")
        test = [labels.tolist() for _, labels in test_loader]
        expect_equal(test, [Y_TEST], "the labels of the test loader's batches",
                     "the test loader serves the whole test set, in order, in batches of 2.")


def replayed_run(ns, num_epochs, *, set_epoch=True, loss_scale=1.0):
    """The parameters of main's run replayed in this process with the student's own NeuralNetwork and
    prepare_dataset (in a group of one process), SGD with lr 0.5 written out: what main must give. With a classic
    mistake: no set_epoch, a summed loss (twice the mean over batches of 2)."""
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        train_loader, _ = ns["prepare_dataset"]()
    finally:
        dist.destroy_process_group()
    torch.manual_seed(123)
    model = ns["NeuralNetwork"](2, 2)
    for epoch_index in range(num_epochs):
        if set_epoch and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch_index)
        for inputs, targets in train_loader:
            model.zero_grad()
            (F.cross_entropy(model(inputs), targets) * loss_scale).backward()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(parameter.grad, alpha=-0.5)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


MAIN_MISTAKES = [
    ("training without sampler.set_epoch(epoch)", "at the start of every epoch, tell the training loader's sampler "
     "the epoch number (its set_epoch method), so that each epoch is shuffled anew.", {"set_epoch": False}),
    ("a loss summed over the batch", "use the mean over the batch (F.cross_entropy's default): DDP averages the "
     "ranks' gradients.", {"loss_scale": 2.0}),
]


def same_state(got, expected, atol=1e-6):
    return sorted(got) == sorted(expected) and all(
        torch.allclose(got[name].float().cpu(), tensor.float(), atol=atol) for name, tensor in expected.items())


@CHECKS.register("test_ddp_training", subject="main",
                 description="main(0, 1, 3) in one process wraps the model in DDP, trains the parameters of the same "
                             "run replayed with your own NeuralNetwork and prepare_dataset, and leaves the group",
                 error_hint="main joins the group with ddp_setup, trains a DDP-wrapped NeuralNetwork(2, 2) on the "
                            "loaders of prepare_dataset, and leaves the group in a finally: block (section A.9.3).")
def check_ddp_training(ns):
    main = ns["main"]
    with one_process_group(), ddp_groups_released_last(), gpu_calls_served(getattr(main, "__globals__", {})) as \
            served:
        torch.manual_seed(123)  # as the hidden grader (the book seeds before it starts the processes)
        with contextlib.redirect_stdout(io.StringIO()):
            model = main(0, 1, 3)
        left_the_group = not dist.is_initialized()
        if isinstance(model, DistributedDataParallel):
            model = model.module  # as the grader does; the wrapper goes here, before its process group
    if not left_the_group:
        raise CheckFailed("after main, the process group is still initialised.",
                          "leave the process group at the end of main (destroy_process_group), in a finally: "
                          "block.")
    require(served.models, "main did not wrap the model in DistributedDataParallel: with several processes, the "
            "ranks would never average their gradients.", "wrap the model in DDP after building it (device_ids="
            "[rank] on a GPU only), and train the wrapper.")
    if model is None:
        model = served.models[-1]  # the book's main returns nothing; the grader then takes the model it wrapped
    require(isinstance(model, nn.Module), f"main returned {type(model).__name__}, not the trained model.",
            "return the plain model inside the DDP wrapper (its module attribute).")
    got = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    with one_process_group():
        expected = replayed_run(ns, 3)
        hint = ("seed, build NeuralNetwork(2, 2), SGD with lr 0.5; every epoch: set_epoch on the training loader's "
                "sampler, then per batch: forward, F.cross_entropy (the mean), zero_grad, backward, step.")
        if not same_state(got, expected):
            for name, fix, change in MAIN_MISTAKES:
                if same_state(got, replayed_run(ns, 3, **change)):
                    hint = f"your parameters are what {name} gives: {fix}"
                    break
    for name, tensor in expected.items():
        require(name in got, f"the trained model has no parameter {name}.", "train the NeuralNetwork(2, 2) that "
                "main builds, and return it.")
        expect_close(got[name].float(), tensor.tolist(), f"{name} after main(0, 1, 3), against the same run "
                     "replayed with your NeuralNetwork and prepare_dataset", hint, atol=1e-5)
