"""The code that runs inside the worker, copied into the sandbox as this one folder (course/worker/launchers.py).

It imports only the standard library and torch, never the trusted side (a ruff rule, ruff.toml here, says so):

    bootstrap.py  the worker process itself: loads the submission, runs probes; it never computes a verdict
    guard.py      resource limits, the audit hook, die-with-parent, a removal that never follows links
    protocol.py   the channel: length-prefixed messages decoded with torch.load(weights_only=True)
    records.py    error records (ErrorKind): what went wrong in the worker, as fields
    probe_kit/    helpers that probes import (`from probe_kit.text import CompactTokenizer`): written once,
                  loaded by the worker before any student code, and under the same name on the trusted side
                  (course/grading/probes.py), where graders run the same probes with the reference
"""
