"""Cost follows work: rows and elements of a request, measured before it is forwarded."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.steps.envelope import Measure, cost, measure


def v2(shape: list[int], data: Any, datatype: str = "FP64") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


def test_v2_elements_are_the_product_of_each_shape_and_the_data_must_match() -> None:
    assert measure(v2([2, 4], [0.0] * 8), "v2", max_elements=100, row_elements=4) == Measure(2, 8)
    nested = v2([2, 4], [[0.0] * 4, [0.0] * 4])
    assert measure(nested, "v2", max_elements=100, row_elements=None) == Measure(2, 8)
    with pytest.raises(InvalidRequest, match="declares 4"):
        measure(v2([1, 4], [0.0] * 4000), "v2", max_elements=10_000, row_elements=None)
    strings = v2([3], ["a", "b", "c"], "BYTES")
    assert measure(strings, "v2", max_elements=10, row_elements=1) == Measure(3, 3)


def test_elements_past_the_models_bound_are_413_without_counting_them_all() -> None:
    with pytest.raises(PayloadTooLarge):
        measure(v2([1, 524_288], [0] * 524_288), "v2", max_elements=8192, row_elements=None)
    with pytest.raises(PayloadTooLarge):
        measure(v2([1, 10**12], []), "v2", max_elements=8192, row_elements=None)  # never built
    with pytest.raises(PayloadTooLarge):
        measure({"instances": [[0] * 500_000]}, "v1", max_elements=8192, row_elements=None)


def test_v1_instances_must_have_the_models_row_width() -> None:
    assert measure({"instances": [[1, 2, 3, 4]] * 3}, "v1", max_elements=99, row_elements=4) == (
        Measure(3, 12)
    )
    with pytest.raises(InvalidRequest, match="4 elements"):
        measure({"instances": [[1, 2, 3, 4], [1] * 40]}, "v1", max_elements=999, row_elements=4)


def test_the_rate_limit_cost_is_the_rows_a_requests_elements_fill() -> None:
    """Before: a row 100,000 numbers wide cost 1, as a row of four did."""
    assert cost(Measure(rows=1, elements=100_000), row_elements=4) == 25_000
    assert cost(Measure(rows=3, elements=12), row_elements=4) == 3
    assert cost(Measure(rows=3, elements=13), row_elements=4) == 4
    assert cost(Measure(rows=5, elements=5_000), row_elements=None) == 5  # width not declared


@pytest.mark.parametrize(
    "instances",
    [[[1, [2, [3]], 4]], [[[5.1], 3.5, 1.4, 0.2]], [{"b64": ""}, [1, 2], 3], [[[], [[[]]]]]],
    ids=["nested-inside", "list-first", "dict-list-scalar", "empty-lists"],
)
def test_any_mix_of_lists_and_scalars_is_counted_never_raised(instances: list[Any]) -> None:
    """Found by schemathesis: an instance whose first item is a list and whose later items
    are not put scalars on the walk's stack (a TypeError, a 500)."""
    measured = measure({"instances": instances}, "v1", max_elements=1000, row_elements=None)
    assert measured.rows == len(instances)
