"""Custom GX expectation types that leptonflow evaluates itself (drift and split checks).

GX needs an expectation type registered before it can build, serialize or render a
configuration of that type. Defining the class registers it (GX's metaclass does it).
They are never run by a GX execution engine: leptonflow's distributed engine computes
their observed values from merged partial results; ``_validate`` says so if GX tries.
"""

from __future__ import annotations

from typing import Any, ClassVar

from great_expectations.expectations.expectation import BatchExpectation, ColumnAggregateExpectation


class _EvaluatedByLeptonflow:
    def _validate(self, metrics: Any, runtime_configuration: Any = None, execution_engine: Any = None) -> Any:
        raise RuntimeError(f"{type(self).__name__} is evaluated by tasks.validation.engine, not by a GX engine")


class ExpectColumnPsiToBeBelow(_EvaluatedByLeptonflow, ColumnAggregateExpectation):
    """The population stability index of a numeric column vs the previous interval stays below `threshold`."""

    threshold: float
    metric_dependencies: ClassVar[tuple[str, ...]] = ()
    success_keys: ClassVar[tuple[str, ...]] = ("threshold",)


class ExpectColumnNullRateDeltaToBeBelow(_EvaluatedByLeptonflow, ColumnAggregateExpectation):
    """|null rate now - null rate in the previous interval| stays below `threshold`."""

    threshold: float
    metric_dependencies: ClassVar[tuple[str, ...]] = ()
    success_keys: ClassVar[tuple[str, ...]] = ("threshold",)


class ExpectColumnCategoryShareDeltaToBeBelow(_EvaluatedByLeptonflow, ColumnAggregateExpectation):
    """No category's share of non-null values moves by `threshold` or more vs the previous interval."""

    threshold: float
    metric_dependencies: ClassVar[tuple[str, ...]] = ()
    success_keys: ClassVar[tuple[str, ...]] = ("threshold",)


class ExpectSplitRowsToMatchClean(_EvaluatedByLeptonflow, BatchExpectation):
    """train + val + test rows of the committed split equal the committed clean rows."""

    metric_dependencies: ClassVar[tuple[str, ...]] = ()
    success_keys: ClassVar[tuple[str, ...]] = ()


class ExpectSplitGroupsToBeDisjoint(_EvaluatedByLeptonflow, ColumnAggregateExpectation):
    """No value of the group column appears in more than one split (train/val/test)."""

    metric_dependencies: ClassVar[tuple[str, ...]] = ()
    success_keys: ClassVar[tuple[str, ...]] = ()


DRIFT_TYPES = {
    "expect_column_psi_to_be_below",
    "expect_column_null_rate_delta_to_be_below",
    "expect_column_category_share_delta_to_be_below",
}
SPLIT_TYPES = {"expect_split_rows_to_match_clean", "expect_split_groups_to_be_disjoint"}
