"""Scoped galleries: riders enrolled in zones reach only their zones' buses, through the ordinary deltas."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.faces.match import operating_point
from enrollment.store import RiderRecord, TemplateStore
from tests.helpers import MODEL, Fleet, vectors


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")


def test_each_bus_holds_only_its_zones_riders(tmp_path: Path, store: TemplateStore) -> None:
    v = vectors(5)
    store.add_rider(RiderRecord(rider_id="north1", zones=["north"]), [v[0]], model_sha256=MODEL)
    store.add_rider(RiderRecord(rider_id="south1", zones=["south"]), [v[1]], model_sha256=MODEL)
    store.add_rider(RiderRecord(rider_id="both", zones=["north", "south"]), [v[2]], model_sha256=MODEL)
    store.add_rider(RiderRecord(rider_id="everywhere"), [v[3]], model_sha256=MODEL)  # no zones, no buses
    store.add_rider(RiderRecord(rider_id="mybus", buses=["bus-s"]), [v[4]], model_sha256=MODEL)
    fleet = Fleet(tmp_path, store, ("bus-n", "bus-s", "bus-x"))
    fleet.dist.set_bus_zones("bus-n", ["north"])
    fleet.dist.set_bus_zones("bus-s", ["south"])
    fleet.dist.sync()
    assert all(o == "applied" for o in fleet.deliver())
    assert fleet.buses["bus-n"].riders == ["both", "everywhere", "north1"]
    assert fleet.buses["bus-s"].riders == ["both", "everywhere", "mybus", "south1"]
    assert fleet.buses["bus-x"].riders == ["everywhere"]  # a bus without zones: only the unscoped riders
    assert [fleet.buses[b].rider_count for b in ("bus-n", "bus-s", "bus-x")] == [3, 4, 1]  # the N each bus runs at
    assert store.zones("both") == ["north", "south"] and fleet.dist.bus_zones("bus-n") == ["north"]


def test_moving_a_rider_or_a_bus_between_zones_adds_and_erases(tmp_path: Path, store: TemplateStore) -> None:
    v = vectors(2)
    store.add_rider(RiderRecord(rider_id="r1", zones=["north"]), [v[0]], model_sha256=MODEL)
    fleet = Fleet(tmp_path, store, ("bus-n", "bus-s"))
    fleet.dist.set_bus_zones("bus-n", ["north"])
    fleet.dist.set_bus_zones("bus-s", ["south"])
    fleet.dist.sync()
    fleet.deliver()
    assert fleet.buses["bus-n"].riders == ["r1"] and fleet.buses["bus-s"].riders == []
    store.update_rider(RiderRecord(rider_id="r1", zones=["south"]))  # the rider moved
    fleet.dist.sync()
    fleet.deliver()
    assert fleet.buses["bus-n"].riders == [] and fleet.buses["bus-s"].riders == ["r1"]
    fleet.dist.set_bus_zones("bus-n", ["north", "south"])  # the bus now also serves the south
    fleet.dist.sync()
    fleet.deliver()
    assert fleet.buses["bus-n"].riders == ["r1"]
    with pytest.raises(KeyError):
        fleet.dist.set_bus_zones("bus-unknown", ["north"])


def test_zones_keep_a_city_within_what_the_face_alone_can_serve() -> None:
    """The point of zones: N is the zone's riders, not the city's."""
    assert operating_point(1_000_000).rule.second_factor
    assert operating_point(5_000).rule.second_factor  # at the default 1e-6 a 5,000-rider zone needs codes
    assert not operating_point(40).rule.second_factor  # a zone of "my usual buses" does not
    assert not operating_point(5_000, fpir_target=1e-3).rule.second_factor
