"""The EC2 Fleet request: instance types across subnets, markets, tags, the launch template."""

from __future__ import annotations

from chalicelib.capacity import fleet_request
from chalicelib.config import Instances
from chalicelib.layout import MISSION_TAG
from chalicelib.settings import Settings


def request(env: dict[str, str], market: str = "spot") -> dict:
    settings = Settings.from_env({"LIGHTHPC_STAGE": "dev", **env})
    instances = Instances(types=["c5.large", "m5.large"], max_instances=4)
    return fleet_request(settings, "m-1", instances, 3, market, "m-1-spot")


def test_without_subnets_the_fleet_picks_among_instance_types():
    (config,) = request({})["LaunchTemplateConfigs"]
    assert config["Overrides"] == [{"InstanceType": "c5.large"}, {"InstanceType": "m5.large"}]
    assert config["LaunchTemplateSpecification"]["LaunchTemplateName"] == "lighthpc-dev-worker"


def test_with_subnets_every_type_in_every_subnet():
    env = {"WORKER_SUBNETS": "subnet-a1,subnet-b2", "WORKER_LAUNCH_TEMPLATE": "lt-0abc"}
    (config,) = request(env)["LaunchTemplateConfigs"]
    assert config["Overrides"] == [
        {"InstanceType": "c5.large", "SubnetId": "subnet-a1"},
        {"InstanceType": "c5.large", "SubnetId": "subnet-b2"},
        {"InstanceType": "m5.large", "SubnetId": "subnet-a1"},
        {"InstanceType": "m5.large", "SubnetId": "subnet-b2"},
    ]
    assert config["LaunchTemplateSpecification"]["LaunchTemplateId"] == "lt-0abc"


def test_spot_and_on_demand_capacity_and_tags():
    spot = request({})
    assert spot["TargetCapacitySpecification"]["SpotTargetCapacity"] == 3
    assert spot["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
    on_demand = request({}, market="on-demand")
    assert on_demand["TargetCapacitySpecification"]["OnDemandTargetCapacity"] == 3
    assert "SpotOptions" not in on_demand
    tags = {t["Key"]: t["Value"] for t in spot["TagSpecifications"][0]["Tags"]}
    assert tags[MISSION_TAG] == "m-1" and tags["lighthpc:stage"] == "dev"
