"""Replies from the worker are checked for structure and normalised before any comparison (contracts.py)."""

from __future__ import annotations

import pytest
import torch

from course.grading.contracts import Anything, BadResult, ListOf, Tensor, check_result


def test_list_length_tied_to_an_argument():
    spec = ListOf(length="inputs")
    assert len(check_result(spec, [torch.ones(1), torch.ones(1)], {"inputs": [1, 2]})) == 2
    with pytest.raises(BadResult, match=r"should hold 2 results \(one per item of `inputs`\) but holds 1 item"):
        check_result(spec, [torch.ones(1)], {"inputs": [1, 2]})


def test_nested_lists_and_wrong_container():
    spec = ListOf(ListOf(), length=1)
    with pytest.raises(BadResult, match=r"result\[0\] should be a list but is a value of type int"):
        check_result(spec, [3], {})
    with pytest.raises(BadResult, match="result should be a list but is a dict"):
        check_result(spec, {"a": 1}, {})


@pytest.mark.parametrize(("tensor", "problem"), [
    (torch.ones(2, 2).to_sparse(), "special tensor"),
    (torch.empty(3, device="meta"), "special tensor"),
    (torch.ones(2, dtype=torch.complex64), "dtype torch.complex64"),
])
def test_odd_tensors_are_refused(tensor, problem):
    with pytest.raises(BadResult, match=problem):
        check_result(Anything(), [tensor], {})


def test_tensors_are_normalised_to_plain_contiguous_cpu_tensors():
    parameter = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    out = check_result(Tensor(), parameter.t(), {})
    assert type(out) is torch.Tensor
    assert out.is_contiguous()
    assert not out.requires_grad
    assert torch.equal(out, torch.arange(6.0).reshape(2, 3).t())


def test_unusable_values_and_depth():
    with pytest.raises(BadResult, match="type set"):
        check_result(Anything(), {"a": {1, 2}}, {})
    deep = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(BadResult, match="nested more than"):
        check_result(Anything(), deep, {})
    with pytest.raises(BadResult, match="should be a tensor"):
        check_result(Tensor(), [1.0], {})
