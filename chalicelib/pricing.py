"""Instance sizes and prices for estimates: vCPUs (default slots) and an estimated cost.

EC2's Spot price history is a placeholder in moto, and a live price lookup per launch is an API
call per mission we do not need: an estimate from a table is what the email and API show, and
they say so. Prices are On-Demand list prices (USD per hour, us-east-1, Linux); Spot is taken
at a typical 65% discount. Unknown types have no estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

SPOT_DISCOUNT = 0.65


@dataclass(frozen=True)
class InstanceSize:
    vcpus: int
    on_demand_hourly: float

    def hourly(self, market: str) -> float:
        if market == "spot":
            return round(self.on_demand_hourly * (1 - SPOT_DISCOUNT), 6)
        return self.on_demand_hourly


SIZES: dict[str, InstanceSize] = {
    "t3.micro": InstanceSize(2, 0.0104),
    "t3.large": InstanceSize(2, 0.0832),
    "c5.large": InstanceSize(2, 0.085),
    "c5.xlarge": InstanceSize(4, 0.17),
    "c5.2xlarge": InstanceSize(8, 0.34),
    "c5.4xlarge": InstanceSize(16, 0.68),
    "c6i.large": InstanceSize(2, 0.085),
    "c6i.xlarge": InstanceSize(4, 0.17),
    "c6i.2xlarge": InstanceSize(8, 0.34),
    "c6i.4xlarge": InstanceSize(16, 0.68),
    "m5.large": InstanceSize(2, 0.096),
    "m5.xlarge": InstanceSize(4, 0.192),
    "m5.2xlarge": InstanceSize(8, 0.384),
    "m6i.large": InstanceSize(2, 0.096),
    "m6i.xlarge": InstanceSize(4, 0.192),
    "m6i.2xlarge": InstanceSize(8, 0.384),
    "r5.large": InstanceSize(2, 0.126),
    "r5.xlarge": InstanceSize(4, 0.252),
    "r5.2xlarge": InstanceSize(8, 0.504),
    "r6i.large": InstanceSize(2, 0.126),
    "r6i.xlarge": InstanceSize(4, 0.252),
    "r6i.2xlarge": InstanceSize(8, 0.504),
    "r6i.4xlarge": InstanceSize(16, 1.008),
}


def unpriced(types: list[str]) -> list[str]:
    """The types the table has no price for: their cost would be estimated as nothing."""
    return [t for t in types if t not in SIZES]


def vcpus(instance_type: str) -> int | None:
    size = SIZES.get(instance_type)
    return None if size is None else size.vcpus


def estimated_cost(instance_type: str | None, market: str, seconds: float) -> float:
    """USD for `seconds` of one instance; 0 for a type the table does not know."""
    size = SIZES.get(instance_type or "")
    if size is None:
        return 0.0
    return size.hourly(market) * seconds / 3600
