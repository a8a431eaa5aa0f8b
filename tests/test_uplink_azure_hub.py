"""vwos as an Azure IoT Hub device against the fake hub (tests/iothub_fake.py, proven by Microsoft's SDK in
tests/test_iothub_fake.py): credentials, telemetry, SAS renewal, X.509, DPS; and the azure config table.

These talk to real sockets and the fake hub's threads, so they run on trio's real clock, each bounded by
``trio.fail_after``. The renewal's timing is also tested on its own (`renewal_delay`).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import iothub_fake
import mqtt_broker
import pytest
import trio
from conftest import skip_or_fail

from bus import Topic
from services.uplink import Campaign, Uplink, UplinkConfig, decode_batch, status_topic
from services.uplink._azure import decode_property_bag
from services.uplink._azure_config import AzureConfig, DpsConfig
from services.uplink._azure_transport import AzureTransport, renewal_delay
from services.uplink._dps import CACHE_NAME, load_assignment
from services.uplink._transport import TransportError
from vwos import ServiceSpec
from vwos._structure import StructureError, structure
from vwos.testing import open_harness

KEY = bytes(range(32))
GROUP_KEY = bytes(range(100, 132))
COUNTER = Topic("Test.Counter", int)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[iothub_fake.FakeIotHub]:
    reason = mqtt_broker.mosquitto_unavailable_reason()
    if reason is not None:
        skip_or_fail(f"the fake IoT Hub needs mosquitto and openssl; {reason}")
    from services.uplink._azure import derive_device_key

    enrolments = {
        "car-dps": (KEY, "car-dps-device"),
        "car-group": (derive_device_key(GROUP_KEY, "car-group"), "car-group-device"),
    }
    with iothub_fake.FakeIotHub(
        tmp_path / "hub", {"car-1": KEY, "car-x509": None}, dps=True, enrolments=enrolments
    ) as fake:
        # the group enrolment's device holds the derived key, as DPS would register it
        fake.devices["car-group-device"].key = derive_device_key(GROUP_KEY, "car-group")
        fake.devices["car-dps-device"].key = KEY
        yield fake


def key_file(tmp_path: Path, key: bytes = KEY, name: str = "device.key") -> Path:
    path = tmp_path / name
    path.write_text(base64.b64encode(key).decode() + "\n")
    return path


def azure(hub: iothub_fake.FakeIotHub, tmp_path: Path, **changes: Any) -> AzureConfig:
    settings: dict[str, Any] = {
        "hub": hub.hub,
        "device_id": "car-1",
        "key_file": key_file(tmp_path),
        "gateway_host": hub.address,
        "ca_file": hub.certificates.ca_file,
        "rate_limit": 0,
    }
    return AzureConfig(**(settings | changes))


# -- the transport ------------------------------------------------------------------------------------------


async def test_connects_as_iothub_requires_and_sends_batches_with_their_property_bag(
    hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    from services.uplink import BatchBuilder

    builder = BatchBuilder("car-1", "00112233aabbccdd", compress=False)
    payloads = [builder.build(seq, [("Test.Counter", 0, seq)]) for seq in (1, 2, 3)]
    with trio.fail_after(30):
        async with AzureTransport(azure(hub, tmp_path), "car-1") as transport:
            await transport.connect()
            for seq, payload in enumerate(payloads, 1):
                await transport.publish(seq, payload)
    accepted = [c for c in hub.connects if c.code == 0]
    assert [(c.client_id, c.username, c.auth) for c in accepted] == [
        ("car-1", "fakehub.azure-devices.net/car-1/?api-version=2021-04-12", "sas")
    ]
    assert 3500 < accepted[0].expiry - accepted[0].at <= 3601  # sas_ttl's default
    telemetry = hub.telemetry_after(len(payloads))
    assert [t.payload for t in telemetry] == payloads
    first = telemetry[0]
    assert first.properties == {
        "$.ct": "application/cbor",
        "$.ce": "identity",
        "$.mid": "00112233aabbccdd-1",
        "vwos-seq": "1",
        "vwos-stream": "00112233aabbccdd",
        "vwos-body": "cbor",
    }
    assert decode_property_bag(first.topic.split("/", 4)[4]) == first.properties  # vwos's reading agrees


async def test_a_wrong_key_or_an_unknown_device_is_refused_clearly(
    hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    wrong = key_file(tmp_path, bytes(32), "wrong.key")
    with trio.fail_after(30):
        async with AzureTransport(azure(hub, tmp_path, key_file=wrong), "car-1") as transport:
            with pytest.raises(TransportError, match="refused by the broker: not authorized"):
                await transport.connect()
        async with AzureTransport(azure(hub, tmp_path, device_id="nobody"), "car-1") as transport:
            with pytest.raises(TransportError, match="client identifier not valid"):
                await transport.connect()
        bad = tmp_path / "bad.key"
        bad.write_text("not a key")
        async with AzureTransport(azure(hub, tmp_path, key_file=bad), "car-1") as transport:
            with pytest.raises(TransportError, match=r"key_file .*bad.key is not base64"):
                await transport.connect()
    assert [(c.code, c.why) for c in hub.connects] == [(5, "bad signature"), (2, "no such device")]


async def test_an_x509_device(hub: iothub_fake.FakeIotHub, tmp_path: Path) -> None:
    cert, key = hub.certificates.device_certificate("car-x509")
    config = azure(hub, tmp_path, device_id="car-x509", key_file=None, cert_file=cert, cert_key_file=key)
    with trio.fail_after(30):
        async with AzureTransport(config, "car-1") as transport:
            await transport.connect()
            await transport.publish(1, b"x")
            assert transport.expiry is None  # nothing to renew
    assert [(c.client_id, c.code, c.auth) for c in hub.connects] == [("car-x509", 0, "x509")]
    assert hub.telemetry_after(1)[0].device_id == "car-x509"


def test_renewal_comes_a_margin_before_the_expiry() -> None:
    assert renewal_delay(1000.0, 0.0, 60.0) == 940.0
    assert renewal_delay(1000.0, 990.0, 60.0) == 0.0  # overdue: at once
    config = AzureConfig(hub="h.azure-devices.net", key_file=Path("k"), sas_ttl=3600)
    assert config.renew_margin == 300.0  # 5 min before an hour's token ends
    assert AzureConfig(hub="h.azure-devices.net", key_file=Path("k"), sas_ttl=10).renew_margin == 2.0


@pytest.mark.slow
async def test_sas_renewal_mid_stream_loses_nothing(hub: iothub_fake.FakeIotHub, tmp_path: Path) -> None:
    """A real 10 s token (renewed 2 s before it ends) while batches flow for 20 s: every batch is
    acknowledged, on at least three connections, and none was cut off by an expired token."""
    config = azure(hub, tmp_path, sas_ttl=10)
    sent = 0
    with trio.fail_after(60):
        async with AzureTransport(config, "car-1") as transport:
            await transport.connect()
            start = trio.current_time()
            while trio.current_time() - start < 20:
                sent += 1
                await transport.publish(sent, f"batch {sent}".encode())  # raises if a renewal lost one
                await trio.sleep(0.05)
            renewals = transport.renewals
    assert renewals >= 2
    accepted = [c for c in hub.connects if c.code == 0]
    assert len(accepted) == renewals + 1
    # each connection ended by the uplink before its token did
    for earlier, later in itertools.pairwise(accepted):
        assert later.at < earlier.expiry
    telemetry = hub.telemetry_after(sent)
    assert [t.payload for t in telemetry] == [f"batch {i}".encode() for i in range(1, sent + 1)]


# -- through the service ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("vwos_bus_client")
async def test_the_service_ships_to_iothub_across_a_renewal(
    hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    config = UplinkConfig(
        vehicle_id="car-1",
        campaigns=(Campaign("all", ("Test.**",)),),
        transport="azure",
        azure=azure(hub, tmp_path, sas_ttl=10),
        flush_interval=0.01,
        batch_delay=0.05,
        status_period=0.1,
    )
    with trio.fail_after(60):
        async with open_harness(ServiceSpec("uplink", Uplink, config), state_dir=tmp_path / "state") as car:
            for i in range(1, 2001):
                car.publish(COUNTER, i)
                if i % 20 == 0:
                    await trio.sleep(0.1)  # 10 s of data: across at least one renewal
            done = await car.expect(status_topic("uplink"), lambda s: s.sent_samples == 2000, timeout=20)
    assert done.value.transport == "azure"
    seen: set[int] = set()
    values: list[int] = []
    for message in hub.telemetry_after(done.value.sent_batches):
        batch = decode_batch(message.payload)
        assert message.properties["vwos-seq"] == str(batch.seq)
        if batch.seq not in seen:
            seen.add(batch.seq)
            values += [int(s.value) for s in batch.samples]  # type: ignore[call-overload]
    assert values == list(range(1, 2001))
    assert len([c for c in hub.connects if c.code == 0]) >= 2


# -- DPS ----------------------------------------------------------------------------------------------------


def dps_config(hub: iothub_fake.FakeIotHub, tmp_path: Path, **dps: Any) -> AzureConfig:
    assert hub.dps_address is not None
    return AzureConfig(
        dps=DpsConfig(id_scope=hub.id_scope, endpoint=hub.dps_address, **dps),
        ca_file=hub.certificates.ca_file,
        gateway_host=hub.address,
        rate_limit=0,
    )


async def test_dps_provisions_caches_and_reuses(hub: iothub_fake.FakeIotHub, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = dps_config(hub, tmp_path, registration_id="car-dps", key_file=key_file(tmp_path))
    with trio.fail_after(60):
        async with AzureTransport(config, "car-1", state_dir=state) as transport:
            await transport.connect()
            await transport.publish(1, b"one")
        assert (transport.hub, transport.device_id) == ("fakehub.azure-devices.net", "car-dps-device")
        cached = json.loads((state / CACHE_NAME).read_text())
        assert cached == {
            "id_scope": hub.id_scope,
            "registration_id": "car-dps",
            "hub": "fakehub.azure-devices.net",
            "device_id": "car-dps-device",
        }
        registrations = len(hub.dps_requests)
        assert registrations >= 2  # a PUT, then at least one poll
        # a restart: the cache is used, DPS is not asked again
        async with AzureTransport(config, "car-1", state_dir=state) as transport:
            await transport.connect()
            await transport.publish(2, b"two")
        assert len(hub.dps_requests) == registrations
    assert [t.device_id for t in hub.telemetry_after(2)] == ["car-dps-device", "car-dps-device"]


async def test_dps_group_enrolment_derives_the_device_key(
    hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    group = key_file(tmp_path, GROUP_KEY, "group.key")
    config = dps_config(hub, tmp_path, registration_id="car-group", group_key_file=group)
    with trio.fail_after(60):
        async with AzureTransport(config, "car-1", state_dir=tmp_path / "state") as transport:
            await transport.connect()
            await transport.publish(1, b"x")
    assert hub.telemetry_after(1)[0].device_id == "car-group-device"


async def test_a_hub_that_refuses_the_cached_device_makes_it_provision_again(
    hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    config = dps_config(hub, tmp_path, registration_id="car-dps", key_file=key_file(tmp_path))
    with trio.fail_after(60):
        async with AzureTransport(config, "car-1", state_dir=state) as transport:
            await transport.connect()
            hub.devices["car-dps-device"].enabled = False  # the device was disabled, or moved
            with pytest.raises(TransportError, match="client identifier not valid"):
                await transport.connect()
            assert load_assignment(state, hub.id_scope, "car-dps") is None  # the cache is dropped
            before = len(hub.dps_requests)
            hub.devices["car-dps-device"].enabled = True
            await transport.connect()  # provisioned again
            assert len(hub.dps_requests) > before
        hub.dps_refused.add("car-dps")
        (state / CACHE_NAME).unlink()
        async with AzureTransport(config, "car-1", state_dir=state) as transport:
            with pytest.raises(TransportError, match="DPS refused the registration: 401"):
                await transport.connect()


# -- the config ---------------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = structure(
        {"hub": "h.azure-devices.net", "key_file": "keys/car.key"}, AzureConfig, base_dir=Path("/c")
    )
    assert config.key_file == Path("/c/keys/car.key")  # relative to the config file
    assert (config.port, config.rate_limit, config.max_message_size, config.sas_ttl) == (
        8883,
        100.0,
        262_144,
        3600.0,
    )
    mqtt = config.mqtt("h.azure-devices.net", "car-1")
    assert (mqtt.protocol, mqtt.tls, mqtt.effective_port, mqtt.client_id) == ("3.1.1", True, 8883, "car-1")
    assert mqtt.username == "h.azure-devices.net/car-1/?api-version=2021-04-12"


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"hub": "not a host"}, "hub", "not a host name"),
        ({"device_id": "a/b"}, "device_id", "not an IoT Hub device id"),
        ({"sas_ttl": 1}, "sas_ttl", "from 10 to"),
        ({"sas_ttl": float("nan")}, "sas_ttl", "from 10 to"),
        ({"max_message_size": 300_000}, "max_message_size", "refuses messages over 256 KB"),
        ({"keepalive": 2000}, "keepalive", "IoT Hub's limit"),
        ({"rate_limit": -1}, "rate_limit", ">= 0"),
        ({"port": 0}, "port", "from 1 to 65535"),
        ({"cert_key_file": "k.pem"}, "cert_key_file", "needs cert_file"),
        ({"sas_key": "literal"}, "sas_key", "unknown key"),
        ({"dps": {"id_scope": "abc"}}, "dps.id_scope", "not a DPS ID scope"),
        (
            {"dps": {"id_scope": "0ne00000001", "registration_id": "Car 1"}},
            "dps.registration_id",
            "lower-case",
        ),
    ],
)
def test_config_problems_name_the_key(table: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(StructureError) as info:
        structure({"hub": "h.azure-devices.net", "key_file": "k", **table}, AzureConfig)
    problems = {".".join(map(str, p.path)): p.message for p in info.value.problems}
    assert key in problems, problems
    assert message in problems[key]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"key_file": None}, "needs key_file \\(SAS tokens\\) or cert_file"),
        ({"cert_file": "c.pem"}, "not both"),
        ({"hub": None}, "needs hub"),
        ({"hub": None, "key_file": None, "dps": {"id_scope": "0ne00000001"}}, "dps needs key_file"),
        (
            {"dps": {"id_scope": "0ne00000001", "key_file": "a", "group_key_file": "b"}},
            "dps.key_file or dps.group_key_file, not both",
        ),
    ],
)
def test_config_combinations_that_cannot_work(table: dict[str, Any], message: str) -> None:
    settings = {"hub": "h.azure-devices.net", "key_file": "k", **table}
    with pytest.raises(StructureError, match=message):
        structure({k: v for k, v in settings.items() if v is not None}, AzureConfig)


def test_the_uplink_config_checks_batches_against_iothubs_limit() -> None:
    campaigns = (Campaign("all", ("**",)),)
    table = AzureConfig(hub="h.azure-devices.net", key_file=Path("k"))
    ok = UplinkConfig(vehicle_id="car-1", campaigns=campaigns, transport="azure", azure=table)
    assert ok.max_batch_bytes <= 262_144
    with pytest.raises(ValueError, match="IoT Hub refuses messages over 256 KB"):
        UplinkConfig(
            vehicle_id="car-1", campaigns=campaigns, transport="azure", azure=table, max_batch_bytes=300_000
        )
    with pytest.raises(ValueError, match=r"needs an \[services\.NAME\.config\.azure\] table"):
        UplinkConfig(vehicle_id="car-1", campaigns=campaigns, transport="azure")
    with pytest.raises(ValueError, match="not an IoT Hub device id"):
        UplinkConfig(vehicle_id="car~1", campaigns=campaigns, transport="azure", azure=table)
