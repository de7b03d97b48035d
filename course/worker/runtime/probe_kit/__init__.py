"""Helpers that probes share: a probe imports them inside its body (`from probe_kit.training import AdamW`).

A probe runs in the worker with nothing but torch, nn, F and DEVICE (course/grading/probes.py); what several
probes need (a tokenizer over a compact vocabulary, an optimizer written out, a model evaluated twice) lives
here once, in modules by topic. The worker loads this package and every module of it before it loads the
student's code; the trusted side registers the same files under the same name, so that a grader can run a probe
with the reference's code to get the expected values.

Like everything in course/worker/runtime/, these modules import only the standard library and torch.
"""
