"""What a grader module uses: probes (run in the worker) and comparisons (run on the trusted side).

A grader test reads like pytest:

    @probe(returns=Tensor())
    def mha_forward(student, state, x, config):          # runs in the worker, against the student's module
        mha = student.MultiHeadAttention(**config).to(DEVICE)
        mha.load_state_dict(state)
        return mha.eval()(x)

    @pytest.mark.points(2)
    def test_mha_output(submission):                     # runs on the trusted side
        \"\"\"MultiHeadAttention's output matches the reference.\"\"\"
        got = submission.run(mha_forward, state=ref.state_dict(), x=x, config=config)
        expect_close(got, ref(x), what="output", hint="...")
"""

from course.grading.compare import (
    GradingFailure,
    expect_close,
    expect_count,
    expect_equal,
    expect_tensor,
    expect_true,
)
from course.grading.contracts import Anything, ListOf, Tensor
from course.grading.probes import probe

__all__ = ["Anything", "GradingFailure", "ListOf", "Tensor", "expect_close", "expect_count", "expect_equal",
           "expect_tensor", "expect_true", "probe"]
