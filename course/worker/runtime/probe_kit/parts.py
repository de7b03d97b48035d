"""Run a student's composite on correct parts: a bug in a part then costs only the part's own tests.

A class or function the student writes in a notebook finds its parts by name, in the notebook's globals, when it
runs: a GPTModel calls `TransformerBlock(cfg)`, a training loop calls `calc_loss_batch(...)`. `replaced` swaps
such names in the student's module for correct stand-ins (written in the probe_kit module of the chapter) while
a probe builds and runs the composite, and puts the student's own back afterwards, whatever happens:

    with replaced(student, TransformerBlock=Block, LayerNorm=LayerNorm):
        model = student.GPTModel(cfg)

A name the notebook does not define is added for the duration and removed afterwards.
"""

import contextlib

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
