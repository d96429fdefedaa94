from __future__ import annotations

import pytest

from chalicelib.pricing import SPOT_DISCOUNT, estimated_cost, vcpus


def test_on_demand_hour_is_the_list_price():
    assert estimated_cost("c5.large", "on-demand", 3600) == pytest.approx(0.085)


def test_spot_is_discounted():
    assert estimated_cost("c5.large", "spot", 3600) == pytest.approx(0.085 * (1 - SPOT_DISCOUNT))


def test_unknown_type_has_no_estimate():
    assert estimated_cost("x9.huge", "spot", 3600) == 0.0
    assert estimated_cost(None, "spot", 3600) == 0.0


def test_vcpus():
    assert vcpus("c5.2xlarge") == 8
    assert vcpus("x9.huge") is None
