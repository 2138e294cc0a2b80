"""The cloud providers' address plan and bounded waits."""

from __future__ import annotations

import pytest

from kiln.environments import Environment, EnvironmentSpec, Frontend
from kiln.errors import KilnError, OperationFailed
from kiln.providers import cloud
from kiln.settings import Settings


def make_env(zones: int = 3) -> Environment:
    spec = EnvironmentSpec(
        provider="aws",
        zones=[f"eu-west-1{chr(97 + z)}" for z in range(zones)],
        instances={"web": 3, "db": 1},
        frontend=Frontend(80),
    )
    return Environment("t", spec, "environments/t.yml")


def test_fixed_addresses_sit_in_their_zone_subnet():
    env = make_env()
    assert cloud.fixed_address(env, "db1") == "10.42.16.11"  # zone 1, role db (index 0)
    assert cloud.fixed_address(env, "web3") == "10.42.1.13"  # zone 0, role web (index 1)
    assert cloud.zone_cidr(1) == "10.42.16.0/20"
    with pytest.raises(KilnError, match=r"field 'instances': no role for an instance named 'cache1'"):
        cloud.fixed_address(env, "cache1")
    with pytest.raises(KilnError, match=r"web245 is past the address plan"):
        cloud.fixed_address(env, "web245")


def test_too_many_zones_are_refused():
    with pytest.raises(KilnError, match=r"field 'zones': 17 zones; a cloud environment takes 16 at most"):
        cloud.check_zone_count(make_env(17))


def test_waits_end_with_one_line_naming_the_setting():
    looks = []
    with pytest.raises(
        OperationFailed, match=r"^timed out after 0 s waiting for web1 to run \(KILN_CLOUD_TIMEOUT\)$"
    ):
        cloud.wait_until(
            Settings(cloud_timeout=0, cloud_poll=0.01), "web1 to run", lambda: looks.append(1)
        )
    assert 1 <= len(looks) <= cloud.polls(Settings(cloud_timeout=0, cloud_poll=0.01))
