"""What a grader module uses: probes (run in the worker) and checks (run on the trusted side).

A grader test reads like pytest:

    @pytest.mark.points(3)
    @pytest.mark.depends_on("test_causal_attention_output")
    def test_mha_output(submission):                     # runs on the trusted side
        \"\"\"MultiHeadAttention's output matches the reference.\"\"\"
        model = reference_module(ref.MultiHeadAttention, 123, **init)
        got = submission.run(run_module, class_name="MultiHeadAttention", init=init,
                             state=model.state_dict(), inputs=[x])      # runs in the worker
        expect_close(got[0], model(x), what="output", hint="...", mistakes=CLASSIC_MISTAKES,
                     mistaken=lambda **change: attention_with(model, x, **change))  # names a Mistake that fits

Modules:
    probes      the @probe decorator (checked at import), the generic probes every chapter uses, run_here
    inputs      seeded inputs and seeded reference modules
    imports     plain_imports: a grader's heavy imports without pytest's assertion rewriting
    compare     comparisons with teaching failure messages (expect_*), as_number
    mistakes    Mistake: a classic mistake as a value; expect_close(..., mistakes=...) names the one that fits
    properties  checks shared by chapters: outputs and gradients against the reference, causality, dropout in
                training only
    diagnosis   hints for errors, given only when they fit the error (explain_errors)
    contracts   the declared structure of a probe's result (Fields: named values), checked before any comparison
    feedback    the messages for errors, formatted from structured records
    plugin      the pytest plugin: markers (points, depends_on, runs), the submission fixture, classification
    session     one grading session for `course grade` and `course check`: sandbox, Deadline, outcome -> Status
    runner      grading one notebook
"""

from course.grading.compare import (
    GradingFailure,
    as_number,
    expect_close,
    expect_count,
    expect_equal,
    expect_finite,
    expect_tensor,
    expect_true,
)
from course.grading.contracts import Anything, ListOf, Tensor
from course.grading.diagnosis import error_mentions, explain_errors
from course.grading.mistakes import Mistake, name_mistake, which_mistake
from course.grading.probes import DEVICE, probe

__all__ = ["DEVICE", "Anything", "GradingFailure", "ListOf", "Mistake", "Tensor", "as_number", "error_mentions",
           "expect_close", "expect_count", "expect_equal", "expect_finite", "expect_tensor", "expect_true",
           "explain_errors", "name_mistake", "probe", "which_mistake"]
