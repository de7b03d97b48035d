"""Mutants and variants of appendix E: parameter-efficient finetuning with LoRA."""

from tests.submissions.catalog.base import Variant, mutant

APPE = "appe_lora"
UPDATE_ALL = {"test_lora_layer_forward"}  # the composites run on a correct LoRALayer

MUTANTS = [
    mutant("b_initialised_randomly", APPE, "lora_layer",
           [("self.B = nn.Parameter(torch.zeros(rank, out_dim))", "self.B = nn.Parameter(torch.randn(rank, out_dim))")],
           {"test_lora_layer_parameters"}, says="start B at zero"),
    mutant("a_initialised_to_zero", APPE, "lora_layer",
           [("        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # random, like an nn.Linear weight\n",
             "        nn.init.zeros_(self.A)\n")],
           {"test_lora_layer_parameters"}, says="neither would ever get a gradient"),
    mutant("update_not_scaled", APPE, "lora_layer",
           [("return (self.alpha / self.rank) * (x @ self.A @ self.B)", "return x @ self.A @ self.B")],
           UPDATE_ALL, says="exactly what no scaling at all gives"),
    mutant("update_scaled_by_rank_over_alpha", APPE, "lora_layer",
           [("return (self.alpha / self.rank) * (x @ self.A @ self.B)",
             "return (self.rank / self.alpha) * (x @ self.A @ self.B)")],
           UPDATE_ALL, says="a scaling by rank / alpha"),
    mutant("wrapper_without_lora", APPE, "linear_with_lora",
           [("return self.linear(x) + self.lora(x)", "return self.linear(x)")],
           {"test_linear_with_lora_update", "test_lora_gradients"}, says="the LoRA update is missing"),
    mutant("wrapper_builds_its_own_linear", APPE, "linear_with_lora",
           [("self.linear = linear  # the pretrained layer itself, weights and all",
             "self.linear = nn.Linear(linear.in_features, linear.out_features)")],
           {"test_linear_with_lora_at_initialisation", "test_lora_gradients"},
           says="keep the very layer you are given"),
    mutant("replace_not_recursive", APPE, "replace_linear_with_lora",
           [("            replace_linear_with_lora(child, rank, alpha)  # attention, feed forward, blocks, ...",
             "            pass")],
           {"test_replace_linear_with_lora", "test_lora_finetuning_gradients"}, says="walk the model recursively"),
    mutant("replace_rank_and_alpha_swapped", APPE, "replace_linear_with_lora",
           [("setattr(model, name, LinearWithLoRA(child, rank, alpha))",
             "setattr(model, name, LinearWithLoRA(child, alpha, rank))")],
           {"test_replace_linear_with_lora", "test_lora_finetuning_gradients"}, says="pass rank and alpha on"),
    mutant("freeze_sets_a_module_attribute", APPE, "freeze_parameters",
           [("    for param in model.parameters():\n        param.requires_grad = False\n",
             "    model.requires_grad = False\n")],
           {"test_freeze_parameters", "test_lora_finetuning_gradients"}, says="does nothing"),
    mutant("count_every_parameter", APPE, "count_trainable_parameters",
           [("for param in model.parameters() if param.requires_grad)", "for param in model.parameters())")],
           {"test_count_trainable_parameters"}, says="you counted every parameter"),
    mutant("count_parameter_tensors", APPE, "count_trainable_parameters",
           [("return sum(param.numel() for param", "return sum(1 for param")],
           {"test_count_trainable_parameters"}, says="p.numel()"),
]


# -- correct variants -----------------------------------------------------------------------------------------

# The print edition's scaling (alpha alone), with A drawn from a normal distribution as in earlier versions of
# the author's LoRA code.
LORA_PRINT_EDITION = '''class LoRALayer(nn.Module):
    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        std_dev = 1 / torch.sqrt(torch.tensor(rank).float())
        self.A = nn.Parameter(torch.randn(in_dim, rank) * std_dev)
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha

    def forward(self, x):
        x = self.alpha * (x @ self.A @ self.B)
        return x
'''

# The update merged into the weight matrix, F.linear, a replacement through named_modules, requires_grad_.
LORA_EINSUM = '''class LoRALayer(nn.Module):
    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(in_dim, rank), a=5 ** 0.5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.scaling = alpha / rank

    def forward(self, x):
        return torch.einsum("...i,ir,ro->...o", x, self.A, self.B) * self.scaling
'''

LINEAR_MERGED = '''class LinearWithLoRA(nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        delta = (self.lora.A @ self.lora.B).T * self.lora.scaling
        return torch.nn.functional.linear(x, self.linear.weight + delta, self.linear.bias)
'''

REPLACE_BY_PARENT = '''def replace_linear_with_lora(model, rank, alpha):
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for dotted in targets:
        parent_name, _, child_name = dotted.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LinearWithLoRA(getattr(parent, child_name), rank=rank, alpha=alpha))
'''

FREEZE_INPLACE = '''def freeze_parameters(model):
    model.requires_grad_(False)
'''

COUNT_FILTER = '''def count_trainable_parameters(model):
    trainable = filter(lambda p: p.requires_grad, model.parameters())
    return int(sum(p.numel() for p in trainable))
'''

VARIANTS = [
    Variant("print_edition_scaling", APPE, {"lora_layer": LORA_PRINT_EDITION}),
    Variant("merged_weight_and_named_modules", APPE,
            {"lora_layer": LORA_EINSUM, "linear_with_lora": LINEAR_MERGED,
             "replace_linear_with_lora": REPLACE_BY_PARENT, "freeze_parameters": FREEZE_INPLACE,
             "count_trainable_parameters": COUNT_FILTER}),
]
