"""Mutants and variants of appendix A: an introduction to PyTorch, with distributed training."""

from tests.submissions.catalog.base import Variant, mutant, rewrite

APPA = "appa_pytorch"
NETWORK = {"test_neural_network_output", "test_neural_network_gradients"}

SIGMOID_NETWORK = '''class NeuralNetwork(nn.Module):
    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, 30), nn.Sigmoid(),
            nn.Linear(30, 20), nn.Sigmoid(),
            nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)
'''

SWAPPED_SIZES_NETWORK = '''class NeuralNetwork(nn.Module):
    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, 20), nn.ReLU(),
            nn.Linear(20, 30), nn.ReLU(),
            nn.Linear(30, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)
'''

MEAN_OF_BATCHES_ACCURACY = '''def compute_accuracy(model, dataloader, device=None):
    model.eval()
    accuracies = []
    for features, labels in dataloader:
        with torch.no_grad():
            predictions = model(features).argmax(dim=1)
        accuracies.append((predictions == labels).float().mean().item())
    return sum(accuracies) / len(accuracies)
'''

# The book's code typed into the stubs (their def lines kept), with its own edge cases: Sequential spelled
# torch.nn..., section A.7's compute_accuracy, which ignores `device` and returns a float32 value through .item(),
# and a main that returns nothing (the grader takes the model that was wrapped in DDP).
BOOK_STYLE = {
    "neural_network": '''class NeuralNetwork(torch.nn.Module):
    def __init__(self, num_inputs, num_outputs):
        super().__init__()

        self.layers = torch.nn.Sequential(

            # 1st hidden layer
            torch.nn.Linear(num_inputs, 30),
            torch.nn.ReLU(),

            # 2nd hidden layer
            torch.nn.Linear(30, 20),
            torch.nn.ReLU(),

            # output layer
            torch.nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        logits = self.layers(x)
        return logits
''',
    "compute_accuracy": '''def compute_accuracy(model, dataloader, device=None):

    model = model.eval()
    correct = 0.0
    total_examples = 0

    for idx, (features, labels) in enumerate(dataloader):

        with torch.no_grad():
            logits = model(features)

        predictions = torch.argmax(logits, dim=1)
        compare = labels == predictions
        correct += torch.sum(compare)
        total_examples += len(compare)

    return (correct / total_examples).item()
''',
    # The book's DDP script was written for NVIDIA GPUs: it always asks for nccl (except on Windows), overwrites
    # MASTER_ADDR/MASTER_PORT, selects GPU `rank`, moves the model and the batches to device `rank`, pins memory,
    # and leaves the group while its DDP wrapper still exists. On a grader without GPUs the probes serve these
    # calls with gloo and the CPU (probe_kit.ranks.gpu_calls_served).
    "ddp_setup": '''def ddp_setup(rank, world_size, backend=None, timeout=datetime.timedelta(seconds=60)):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = "12345"
    if platform.system() == "Windows":
        os.environ["USE_LIBUV"] = "0"
        init_process_group(backend="gloo", rank=rank, world_size=world_size)
    else:
        init_process_group(backend="nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)
''',
    "prepare_dataset": '''def prepare_dataset():
    X_train = torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]])
    y_train = torch.tensor([0, 0, 0, 1, 1])
    X_test = torch.tensor([[-0.8, 2.8], [2.6, -1.6]])
    y_test = torch.tensor([0, 1])
    train_ds = ToyDataset(X_train, y_train)
    test_ds = ToyDataset(X_test, y_test)
    train_loader = DataLoader(dataset=train_ds, batch_size=2, shuffle=False, pin_memory=True, drop_last=True,
                              sampler=DistributedSampler(train_ds))
    test_loader = DataLoader(dataset=test_ds, batch_size=2, shuffle=False)
    return train_loader, test_loader
''',
    "main": '''def main(rank, world_size, num_epochs):

    ddp_setup(rank, world_size)

    train_loader, test_loader = prepare_dataset()
    model = NeuralNetwork(num_inputs=2, num_outputs=2)
    model.to(rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    model = DDP(model, device_ids=[rank])

    for epoch in range(num_epochs):
        train_loader.sampler.set_epoch(epoch)

        model.train()
        for features, labels in train_loader:

            features, labels = features.to(rank), labels.to(rank)
            logits = model(features)
            loss = F.cross_entropy(logits, labels)

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            log(f"[GPU{rank}] Epoch: {epoch+1:03d}/{num_epochs:03d}"
                f" | Batchsize {labels.shape[0]:03d}"
                f" | Train/Val Loss: {loss:.2f}")

    model.eval()
    train_acc = compute_accuracy(model, train_loader, device=rank)
    log(f"[GPU{rank}] Training accuracy", train_acc)
    test_acc = compute_accuracy(model, test_loader, device=rank)
    log(f"[GPU{rank}] Test accuracy", test_acc)

    destroy_process_group()
''',
}

# Written differently: functional activations, a dataset of pairs, nn.CrossEntropyLoss, a float count of correct
# predictions, a DistributedSampler told its rank and world size, the device from the backend in use.
FUNCTIONAL = {
    "neural_network": '''class NeuralNetwork(nn.Module):
    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_inputs, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(),
                                    nn.Linear(20, num_outputs))

    def forward(self, x):
        hidden = F.relu(self.layers[0](x))
        hidden = F.relu(self.layers[2](hidden))
        return self.layers[4](hidden)
''',
    "toy_dataset": '''class ToyDataset(Dataset):
    def __init__(self, X, y):
        self.features, self.labels = X, y
        self.pairs = list(zip(X, y))

    def __getitem__(self, index):
        return self.pairs[index]

    def __len__(self):
        return len(self.pairs)
''',
    "train_model": '''def train_model(model, train_loader, optimizer, device, num_epochs, verbose=False):
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(num_epochs):
        model.train()
        for step, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = criterion(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            history.append(float(loss))
            if verbose:
                log(f"Epoch: {epoch + 1:03d}/{num_epochs:03d} | Batch {step + 1:03d}/{len(train_loader):03d} "
                    f"| Train/Val Loss: {loss:.2f}")
    return history
''',
    "compute_accuracy": '''def compute_accuracy(model, dataloader, device=None):
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = total = 0.0
    with torch.no_grad():
        for x, y in dataloader:
            hits += (model(x.to(device)).argmax(-1) == y.to(device)).float().sum().item()
            total += y.numel()
    model.train(was_training)
    return hits / total
''',
    "prepare_dataset": '''def prepare_dataset():
    import torch.distributed as dist

    train_ds = ToyDataset(torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]]),
                          torch.tensor([0, 0, 0, 1, 1]))
    test_ds = ToyDataset(torch.tensor([[-0.8, 2.8], [2.6, -1.6]]), torch.tensor([0, 1]))
    sampler = DistributedSampler(train_ds, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=True)
    return (DataLoader(train_ds, batch_size=2, sampler=sampler, drop_last=True),
            DataLoader(test_ds, batch_size=2))
''',
    "main": '''def main(rank, world_size, num_epochs):
    import torch.distributed as dist

    ddp_setup(rank, world_size)
    try:
        device = torch.device(f"cuda:{rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
        train_loader, test_loader = prepare_dataset()
        torch.manual_seed(123)
        net = NeuralNetwork(2, 2).to(device)
        ddp_net = DDP(net, device_ids=[rank] if device.type == "cuda" else None)
        optimizer = torch.optim.SGD(ddp_net.parameters(), lr=0.5)
        for epoch in range(num_epochs):
            train_loader.sampler.set_epoch(epoch)
            ddp_net.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                F.cross_entropy(ddp_net(x.to(device)), y.to(device)).backward()
                optimizer.step()
        log(f"[rank {rank}] test accuracy", compute_accuracy(ddp_net, test_loader, device))
        return net
    finally:
        destroy_process_group()
''',
}

MUTANTS = [
    mutant("network_softmax_output", APPA, "neural_network",
           [("logits = self.layers(x)  # (batch_size, num_outputs)",
             "logits = torch.softmax(self.layers(x), dim=-1)")],
           NETWORK, says="a softmax after the output layer"),
    rewrite("network_sigmoid_activations", APPA, {"neural_network": SIGMOID_NETWORK}, NETWORK,
            says="sigmoid activations"),
    rewrite("network_hidden_sizes_swapped", APPA, {"neural_network": SWAPPED_SIZES_NETWORK},
            {"test_neural_network_layers", *NETWORK}, says="layers.0, layers.2 and layers.4"),
    mutant("dataset_length_is_the_features", APPA, "toy_dataset",
           [("return self.labels.shape[0]", "return self.features.shape[1]")],
           {"test_toy_dataset"}, says="number of labels"),
    mutant("train_without_zero_grad", APPA, "train_model",
           [("            optimizer.zero_grad()  # clear the previous step's gradients\n", "")],
           {"test_train_model_losses", "test_train_model_parameters"}, says="without clearing the gradients"),
    mutant("train_returns_loss_tensors", APPA, "train_model",
           [("losses.append(loss.item())", "losses.append(loss)")],
           {"test_train_model_losses"}, says="not Python floats"),
    mutant("train_never_switches_to_training_mode", APPA, "train_model",
           [("        model.train()\n", "")],
           {"test_train_model_losses", "test_train_model_parameters"}, says="training in evaluation mode"),
    mutant("train_logs_one_loss_per_epoch", APPA, "train_model",
           [("            losses.append(loss.item())\n", ""),
            ("        model.eval()\n", "        losses.append(loss.item())\n        model.eval()\n")],
           {"test_train_model_losses"}, says="number of losses"),
    rewrite("accuracy_mean_of_batches", APPA, {"compute_accuracy": MEAN_OF_BATCHES_ACCURACY},
            {"test_compute_accuracy", "test_compute_accuracy_in_eval_mode"}, says="mean of the per-batch"),
    mutant("accuracy_in_train_mode", APPA, "compute_accuracy",
           [("    model.eval()\n", "")],
           {"test_compute_accuracy_in_eval_mode"}, says="evaluation mode first"),
    mutant("ddp_setup_ignores_backend", APPA, "ddp_setup",
           [("    if backend is None:\n        backend = ", "    backend = ")],
           {"test_ddp_setup"}, says="ignores its backend argument"),
    mutant("prepare_dataset_without_sampler", APPA, "prepare_dataset",
           [("sampler=DistributedSampler(train_ds),  # each rank: its own share, no overlap", "")],
           {"test_prepare_dataset"}, says="give it a DistributedSampler"),
    mutant("main_without_set_epoch", APPA, "main",
           [("            train_loader.sampler.set_epoch(epoch)  # a new (but on every rank the same) shuffle each "
             "epoch\n", "")],
           {"test_ddp_training"}, says="without sampler.set_epoch(epoch)"),
    mutant("main_summed_loss", APPA, "main",
           [("loss = F.cross_entropy(logits, labels)", "loss = F.cross_entropy(logits, labels, reduction=\"sum\")")],
           {"test_ddp_training"}, says="a loss summed over the batch"),
    mutant("main_without_ddp", APPA, "main",
           [("        model = DDP(model, device_ids=[rank] if device.type == \"cuda\" else None)\n", ""),
            ("        return model.module\n", "        return model\n")],
           {"test_ddp_training"}, says="not wrapped in DistributedDataParallel"),
    mutant("main_never_leaves_the_group", APPA, "main",
           [("        destroy_process_group()  # leave the group cleanly, even after an error", "        pass")],
           {"test_ddp_training"}, says="still initialised"),
]

# The book's own def lines: compute_accuracy(model, dataloader) of section A.7 and ddp_setup(rank, world_size)
# (the grader passes `device` only to a function that takes it, and checks a `backend` only where there is one).
BOOK_SIGNATURES = {
    "compute_accuracy": BOOK_STYLE["compute_accuracy"].replace(", device=None):", "):"),
    "ddp_setup": BOOK_STYLE["ddp_setup"].replace(", backend=None, timeout=datetime.timedelta(seconds=60)):", "):"),
}

VARIANTS = [
    Variant("book_style", APPA, BOOK_STYLE),
    Variant("book_signatures", APPA, BOOK_SIGNATURES),
    Variant("functional_and_explicit_sampler", APPA, FUNCTIONAL),
]
