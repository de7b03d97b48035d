"""Run a student's composite on correct parts: a bug in a part then costs only the part's own tests.

A class or function the student writes in a notebook finds its parts by name, in the notebook's globals, when it
runs: a GPTModel calls `TransformerBlock(cfg)`, a training loop calls `calc_loss_batch(...)`. `replaced` swaps
such names in the student's module for correct stand-ins (written in the probe_kit module of the chapter) while
a probe builds and runs the composite, and puts the student's own back afterwards, whatever happens:

    with replaced(student, TransformerBlock=Block, LayerNorm=LayerNorm):
        model = student.GPTModel(cfg)

A name the notebook does not define is added for the duration and removed afterwards.

`stand_ins_of(student, kit, names)` does the same with the stand-ins of probe_kit/<kit>.py (its STAND_INS table),
and nothing when `names` is empty: the generic probes (course/grading/probes.py) take `stand_ins` and `kit` so.

`load_weights(module, state)` loads the reference's parameters into a student's module (or a stand-in) by name,
keeping the module's own buffers (a mask, RoPE's tables) as its `__init__` built them.
"""

import contextlib
import importlib

_ABSENT = object()


@contextlib.contextmanager
def replaced(student, **parts):
    """The student's module with each name in `parts` bound to the given stand-in while the block runs."""
    namespace = vars(student)
    kept = {name: namespace.get(name, _ABSENT) for name in parts}
    namespace.update(parts)
    try:
        yield student
    finally:
        for name, value in kept.items():
            if value is _ABSENT:
                namespace.pop(name, None)
            else:
                namespace[name] = value


def stand_ins_of(student, kit, names):
    """The student's module with each of `names` bound to its stand-in in probe_kit/<kit>.py (its STAND_INS) while
    the block runs; the module as it is when `names` is empty."""
    if not names:
        return contextlib.nullcontext(student)
    table = importlib.import_module(f"probe_kit.{kit}").STAND_INS
    return replaced(student, **{name: table[name] for name in names})


def load_weights(module, state):
    """`module` with the parameters `state` loaded by name; the module's own buffers (a mask, RoPE's cos and sin,
    persistent or not) stay as its __init__ built them. A parameter missing or unexpected raises torch's error."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    buffers = {name for name, _ in module.named_buffers()}
    if unexpected or any(name not in buffers for name in missing):
        module.load_state_dict(state, strict=True)  # raises the error that names the keys
    return module
