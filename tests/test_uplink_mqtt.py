"""The uplink's MQTT transport (services/uplink/_mqtt.py) against a real broker: mosquitto on loopback.

The broker tests use the real clock (a real broker does not run on trio's mock clock) and each has a hard
``trio.fail_after``. Brokers come from the ``make_mosquitto`` fixture (conftest.py, tests/mqtt_broker.py);
an independent ``mosquitto_sub`` process checks what arrived. The pure parts (config, token bucket) are
tested without a broker.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import attrs
import mqtt_broker
import pytest
import structlog
import trio

from services.uplink._mqtt import MqttConfig, MqttTransport, TokenBucket
from services.uplink._mqtt_errors import _error_levels, _load_error
from services.uplink._paho import _Attempt, _Link
from services.uplink._transport import TransportError, UplinkTransport
from vwos._structure import StructureError, structure

VEHICLE = "car-1"
TOPIC = f"vwos/{VEHICLE}/batches"
PASSWORD = "s3cret-Pa55word!"
#: Generous bound for a step against a loopback broker: a hang fails the test instead of stalling the suite.
STEP = 10.0


def plain(broker: mqtt_broker.MosquittoBroker, **changes: Any) -> MqttConfig:
    settings: dict[str, Any] = {"host": broker.host, "port": broker.port}
    settings.update(changes)
    return MqttConfig(**settings)


def tls(broker: mqtt_broker.MosquittoBroker, pki: mqtt_broker.Certificates, **changes: Any) -> MqttConfig:
    settings: dict[str, Any] = {
        "host": broker.host,
        "port": broker.tls_port,
        "tls": True,
        "ca_file": pki.ca_file,
    }
    settings.update(changes)
    return MqttConfig(**settings)


def payloads(count: int) -> list[bytes]:
    """Binary payloads that would break a line-based reader: NUL, newlines, every byte value."""
    return [
        bytes([n % 256]) + b"\n\x00batch" + bytes(range(256)) + n.to_bytes(4, "big") for n in range(count)
    ]


async def publish_all(config: MqttConfig, items: list[bytes]) -> MqttTransport:
    async with MqttTransport(config, VEHICLE) as transport:
        await transport.connect()
        for seq, payload in enumerate(items, start=1):
            await transport.publish(seq, payload)
        return transport


async def connect_error(config: MqttConfig) -> str:
    """The message of the TransportError that connect raises (the test fails if it does not raise)."""
    async with MqttTransport(config, VEHICLE) as transport:
        with pytest.raises(TransportError) as info:
            await transport.connect()
        assert not transport.statistics().connected
    return str(info.value)


# -- the interface ------------------------------------------------------------------------------------------


def test_it_is_an_uplink_transport() -> None:
    transport: UplinkTransport = MqttTransport(MqttConfig(host="broker.example"), VEHICLE)
    assert transport.name == "mqtt"


# -- delivery -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_batches_reach_an_independent_subscriber(
    make_mosquitto: mqtt_broker.BrokerFactory, protocol: str
) -> None:
    broker = make_mosquitto()
    items = payloads(30)
    with trio.fail_after(STEP), mqtt_broker.Subscriber(broker, "vwos/+/batches") as subscriber:
        transport = await publish_all(plain(broker, protocol=protocol), items)
        received = await subscriber.receive(len(items))
        log = await broker.log_shows(f"Received DISCONNECT from vwos-{VEHICLE}")
    assert received == items  # all of them, in order, byte for byte
    stats = transport.statistics()
    assert (stats.published, stats.acknowledged, stats.inflight, stats.connects) == (30, 30, 0, 1)
    assert not stats.connected  # leaving `async with` closed it
    assert f"Received PUBLISH from vwos-{VEHICLE} (d0, q1, r0, m1, '{TOPIC}'" in log  # QoS 1, our topic
    assert f"as vwos-{VEHICLE} (p{5 if protocol == '5' else 2}, c1, k60" in log  # protocol, clean session


async def test_publish_returns_only_after_the_puback(make_mosquitto: mqtt_broker.BrokerFactory) -> None:
    broker = make_mosquitto()
    done = trio.Event()
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker), VEHICLE) as transport:
            await transport.connect()
            broker.pause()  # it can still take bytes (the kernel does), but acknowledges nothing
            try:

                async def publish() -> None:
                    await transport.publish(1, b"held")
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publish)
                    while transport.statistics().inflight == 0:  # noqa: ASYNC110 -- polling a counter
                        await trio.sleep(0.01)
                    await trio.sleep(0.3)
                    assert not done.is_set()  # sent, not acknowledged: still waiting
                    broker.resume()
                    await done.wait()
            finally:
                broker.resume()
    assert transport.statistics().acknowledged == 1


async def test_a_silent_broker_times_out_connect_and_puback(
    make_mosquitto: mqtt_broker.BrokerFactory,
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker, connect_timeout=0.5, ack_timeout=0.5), VEHICLE) as transport:
            broker.pause()
            try:
                start = trio.current_time()
                with pytest.raises(
                    TransportError, match=r"no CONNACK from the broker within connect_timeout 0\.5 s"
                ):
                    await transport.connect()
                assert 0.4 < trio.current_time() - start < 3
                broker.resume()
                await transport.connect()
                broker.pause()
                with pytest.raises(TransportError, match=r"no PUBACK for batch 7 within ack_timeout 0\.5 s"):
                    await transport.publish(7, b"x")
                assert not transport.statistics().connected  # the connection was dropped
                with pytest.raises(TransportError, match="not connected"):
                    await transport.publish(8, b"y")
            finally:
                broker.resume()


async def test_a_stuck_tls_handshake_times_out_and_connect_cancels_promptly(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates
) -> None:
    broker = make_mosquitto()
    broker.pause()  # the kernel accepts the TCP connection; nobody answers the TLS ClientHello
    try:
        with trio.fail_after(STEP):
            start = trio.current_time()
            message = await connect_error(tls(broker, mqtt_pki, connect_timeout=0.5))
            assert (
                "cannot connect: no TCP connection or TLS handshake within connect_timeout 0.5 s" in message
            )
            assert trio.current_time() - start < 2
            async with MqttTransport(tls(broker, mqtt_pki, connect_timeout=5), VEHICLE) as transport:
                start = trio.current_time()
                with trio.move_on_after(0.2) as waiting:
                    await transport.connect()  # the blocking connect runs in a thread: it is abandoned
                assert waiting.cancelled_caught
                assert trio.current_time() - start < 1
                assert not transport.statistics().connected
    finally:
        broker.resume()


# -- TLS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_with_the_right_ca(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates, host: str
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP), mqtt_broker.Subscriber(broker, TOPIC) as subscriber:
        await publish_all(tls(broker, mqtt_pki, host=host), [b"over tls"])
        assert await subscriber.receive(1) == [b"over tls"]
    assert f"on port {broker.tls_port}." in broker.log_text()  # it came in on the TLS listener


async def test_tls_with_a_wrong_ca_fails_clearly(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        message = await connect_error(tls(broker, mqtt_pki, ca_file=mqtt_pki.other_ca_file))
    assert message.startswith(
        f"mqtts://127.0.0.1:{broker.tls_port}: TLS handshake failed: certificate verify failed"
    )
    assert message.endswith("(check ca_file)")


async def test_tls_against_a_plain_port_and_plain_against_a_tls_port(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        assert "(is this port a TLS listener?)" in await connect_error(
            tls(broker, mqtt_pki, port=broker.port)
        )
        message = await connect_error(plain(broker, port=broker.tls_port))
    assert "connection lost before CONNACK" in message
    assert "(does the broker expect TLS on this port?)" in message


async def test_mutual_tls(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates
) -> None:
    broker = make_mosquitto(require_certificate=True)
    with trio.fail_after(STEP), mqtt_broker.Subscriber(broker, TOPIC) as subscriber:
        config = tls(broker, mqtt_pki, cert_file=mqtt_pki.client_cert, key_file=mqtt_pki.client_key)
        await publish_all(config, [b"signed"])
        assert await subscriber.receive(1) == [b"signed"]
        # without a client certificate: refused, and the message says what to do
        message = await connect_error(tls(broker, mqtt_pki))
    assert message.startswith(f"mqtts://127.0.0.1:{broker.tls_port}: ")
    assert "client certificate" in message
    assert "cert_file" in message


async def test_unreadable_tls_files_fail_clearly(
    make_mosquitto: mqtt_broker.BrokerFactory, mqtt_pki: mqtt_broker.Certificates, tmp_path: Path
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        missing = tmp_path / "missing.pem"
        assert f"cannot load ca_file {missing}" in await connect_error(tls(broker, mqtt_pki, ca_file=missing))
        config = tls(broker, mqtt_pki, cert_file=mqtt_pki.client_cert, key_file=mqtt_pki.server_key)
        assert "cannot load cert_file" in await connect_error(config)  # a key that is not the cert's


def test_tls_file_errors_say_why() -> None:
    assert _load_error(FileNotFoundError(2, "No such file or directory")) == "No such file or directory"
    assert _load_error(ssl.SSLError(9, "[SSL: PEM_LIB] PEM lib (_ssl.c:3900)")) == "PEM lib"
    assert _load_error(OSError("no errno")) == "no errno"  # no strerror: the exception's text
    assert _load_error(ValueError("key_file is encrypted")) == "key_file is encrypted"


def test_the_connect_attempt_and_the_link_keep_pahos_last_error_line() -> None:
    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion, LogLevel

    assert _error_levels() is _error_levels()  # looked up once
    client = paho.Client(CallbackAPIVersion.VERSION2)
    here, there = socket.socketpair()
    with here, there:
        for make in (lambda: _Attempt(client), lambda: _Link(client, here)):
            hook = make()
            assert client.on_log == hook.on_log  # installed on the client
            seen = []
            for level, line in [
                (LogLevel.MQTT_LOG_DEBUG, "Sending CONNECT"),
                (LogLevel.MQTT_LOG_WARNING, "failed to receive on socket: [SSL: X] eof"),
                (LogLevel.MQTT_LOG_INFO, "Received PUBACK"),
                (LogLevel.MQTT_LOG_ERR, "broken pipe (_ssl.c:1006)"),
            ]:
                hook.on_log(client, None, level, line)
                seen.append(hook.last_error)
            assert seen == [None, "socket error: eof", "socket error: eof", "broken pipe"]


# -- passwords ----------------------------------------------------------------------------------------------


async def test_password_from_file_and_from_env(
    make_mosquitto: mqtt_broker.BrokerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_mosquitto(users={"vehicle": PASSWORD})
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # the trailing newline is not part of it
    monkeypatch.setenv("VWOS_TEST_MQTT_PASSWORD", PASSWORD)
    with trio.fail_after(STEP), mqtt_broker.Subscriber(broker, TOPIC) as subscriber:
        await publish_all(plain(broker, username="vehicle", password_file=password_file), [b"file"])
        await publish_all(plain(broker, username="vehicle", password_env="VWOS_TEST_MQTT_PASSWORD"), [b"env"])
        assert await subscriber.receive(2) == [b"file", b"env"]


async def test_wrong_or_missing_password_fails_clearly(
    make_mosquitto: mqtt_broker.BrokerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_mosquitto(users={"vehicle": PASSWORD})
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    monkeypatch.delenv("VWOS_TEST_MQTT_UNSET", raising=False)
    with trio.fail_after(STEP):
        message = await connect_error(plain(broker, username="vehicle", password_file=wrong))
        # mosquitto 2 answers "not authorized" to a bad password (MQTT 3.1.1 and 5 alike)
        assert message.startswith(f"mqtt://127.0.0.1:{broker.port}: connection refused by the broker: ")
        assert "not authorized" in message or "bad user name or password" in message
        assert "password" in message.split("broker: ", 1)[1]  # the hint names the password
        no_file = await connect_error(plain(broker, username="vehicle", password_file=tmp_path / "nope"))
        assert f"cannot read password_file {tmp_path / 'nope'}: No such file or directory" in no_file
        no_env = await connect_error(plain(broker, username="vehicle", password_env="VWOS_TEST_MQTT_UNSET"))
        assert "environment variable VWOS_TEST_MQTT_UNSET (password_env) is not set" in no_env


async def test_the_password_is_never_shown(
    make_mosquitto: mqtt_broker.BrokerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_mosquitto(users={"vehicle": PASSWORD})
    monkeypatch.setenv("VWOS_TEST_MQTT_PASSWORD", PASSWORD)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    shown: list[str] = []
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(STEP), structlog.testing.capture_logs() as events:
        for config in (
            plain(broker, username="vehicle", password_env="VWOS_TEST_MQTT_PASSWORD"),
            plain(broker, username="vehicle", password_file=password_file),
        ):
            shown += [repr(config), str(config), str(attrs.asdict(config))]
            async with MqttTransport(config, VEHICLE) as transport:
                await transport.connect()
                await transport.publish(1, b"x")
                shown += [repr(transport), repr(transport.statistics())]
        wrong = plain(broker, username="someone-else", password_env="VWOS_TEST_MQTT_PASSWORD")
        shown.append(await connect_error(wrong))
    shown += [repr(event) for event in events]
    shown.append(caplog.text)
    assert any("mqtt connected" in text for text in shown)  # the logs were captured
    assert len(events) >= 4
    for text in shown:
        assert PASSWORD not in text


# -- limits -------------------------------------------------------------------------------------------------


async def test_an_oversize_batch_is_refused_before_sending(make_mosquitto: mqtt_broker.BrokerFactory) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker), VEHICLE) as transport:
            await transport.connect()
            with pytest.raises(
                TransportError, match=r"^batch 5 of 200000 bytes exceeds max_message_size 131072$"
            ):
                await transport.publish(5, bytes(200_000))
            assert transport.statistics().published == 0
            await transport.publish(6, bytes(131_072))  # the limit itself is fine; the link is intact
            assert transport.statistics().acknowledged == 1
        log = await broker.log_shows(f"'{TOPIC}', ... (131072 bytes)")
    assert "(200000 bytes)" not in log


async def test_the_rate_limit_holds(make_mosquitto: mqtt_broker.BrokerFactory) -> None:
    broker = make_mosquitto()
    count, rate, burst = 14, 20.0, 4
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker, rate_limit=rate, rate_burst=burst), VEHICLE) as transport:
            await transport.connect()
            start = trio.current_time()
            for seq in range(count):
                await transport.publish(seq, b"r")
            elapsed = trio.current_time() - start
    assert elapsed >= (count - burst) / rate - 0.01  # 0.5 s: ten spaced 50 ms apart after a burst of four
    assert elapsed < 3  # and it does not wait much more than it must


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.take(0.0) == pytest.approx(0.1)  # then 1/rate apart, taken in advance (debt)
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.25) == pytest.approx(0.05)  # 2.5 tokens came back, 3 were owed
    assert bucket.take(10.0) == 0.0  # refilled, but never beyond the burst:
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    unlimited = TokenBucket(rate=0)
    assert all(unlimited.take(0.0) == 0.0 for _ in range(1000))
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1, burst=0)


# -- a broker that goes away --------------------------------------------------------------------------------


async def test_broker_killed_mid_publish_then_reconnect_after_restart(
    make_mosquitto: mqtt_broker.BrokerFactory,
) -> None:
    broker = make_mosquitto()
    outcome: list[BaseException] = []
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker, protocol="5"), VEHICLE) as transport:
            await transport.connect()
            await transport.publish(1, b"before")
            broker.pause()  # the next publish is sent but never acknowledged...

            async def publish() -> None:
                try:
                    await transport.publish(2, b"lost")
                except TransportError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                while transport.statistics().inflight == 0:  # noqa: ASYNC110 -- polling a counter
                    await trio.sleep(0.01)
                broker.kill()  # ...and then the broker dies: the kernel resets its connections
            assert len(outcome) == 1
            assert "batch 2 not acknowledged" in str(outcome[0])
            assert not transport.statistics().connected
            with pytest.raises(TransportError, match="connection refused"):
                await transport.connect()  # no broker now
            broker.start()  # the same ports
            with mqtt_broker.Subscriber(broker, TOPIC) as subscriber:
                await transport.connect()
                await transport.publish(2, b"lost")  # the caller sends it again (at least once)
                assert await subscriber.receive(1) == [b"lost"]
            stats = transport.statistics()
            assert (stats.connects, stats.acknowledged) == (2, 2)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_broker_that_stops_is_noticed(
    make_mosquitto: mqtt_broker.BrokerFactory, protocol: str
) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP), structlog.testing.capture_logs() as events:
        async with MqttTransport(plain(broker, protocol=protocol), VEHICLE) as transport:
            await transport.connect()
            await trio.to_thread.run_sync(broker.stop)  # SIGTERM: a clean shutdown
            while transport.statistics().connected:  # noqa: ASYNC110 -- the driver notices on its own
                await trio.sleep(0.01)
            with pytest.raises(
                TransportError, match=r"not connected \(connection closed by the broker; batch 1"
            ):
                await transport.publish(1, b"x")
    lost = [e for e in events if e["event"] == "mqtt connection lost"]
    assert len(lost) == 1
    assert lost[0]["log_level"] == "warning"
    assert lost[0]["broker"] == f"mqtt://127.0.0.1:{broker.port}"


async def test_keepalive_pings_on_an_idle_connection(make_mosquitto: mqtt_broker.BrokerFactory) -> None:
    broker = make_mosquitto()
    with trio.fail_after(STEP):
        async with MqttTransport(plain(broker, keepalive=1), VEHICLE) as transport:
            await transport.connect()
            await broker.log_shows(f"Received PINGREQ from vwos-{VEHICLE}")  # within a second or two
            await transport.publish(1, b"still up")
            assert transport.statistics().connected


# -- life cycle ---------------------------------------------------------------------------------------------


async def test_life_cycle(make_mosquitto: mqtt_broker.BrokerFactory) -> None:
    broker = make_mosquitto()
    transport = MqttTransport(plain(broker), VEHICLE)
    with pytest.raises(RuntimeError, match="async with"):
        await transport.connect()
    with trio.fail_after(STEP):
        async with transport:
            with pytest.raises(TransportError, match="not connected"):
                await transport.publish(1, b"x")
            await transport.connect()
            await transport.connect()  # connecting again replaces the connection
            assert transport.statistics().connects == 2
            await transport.close()
            await transport.close()  # idempotent
            assert not transport.statistics().connected
            with pytest.raises(TransportError, match="not connected"):
                await transport.publish(1, b"x")
            await transport.connect()
            assert "connected>" in repr(transport)

        async def fail_inside() -> None:
            async with MqttTransport(plain(broker), VEHICLE) as other:
                await other.connect()
                raise KeyError("boom")

        # an exception in the body comes out as it is, not wrapped in an ExceptionGroup
        with pytest.raises(KeyError):
            await fail_inside()
        log = await broker.log_shows(
            f"Received DISCONNECT from vwos-{VEHICLE}", count=4
        )  # every close is clean
    assert log.count("New client connected from 127.0.0.1") == 4


async def test_connection_refused_fails_fast() -> None:
    with trio.fail_after(STEP):
        message = await connect_error(MqttConfig(host="127.0.0.1", port=1))
    assert (
        message
        == "mqtt://127.0.0.1:1: cannot connect: connection refused (is the broker running, on this port?)"
    )


# -- the config ---------------------------------------------------------------------------------------------


def test_config_defaults_and_derived_values() -> None:
    config = MqttConfig(host="broker.example")
    assert (config.effective_port, config.url) == (1883, "mqtt://broker.example:1883")
    assert MqttConfig(host="broker.example", tls=True).url == "mqtts://broker.example:8883"
    assert MqttConfig(host="::1", port=1884).url == "mqtt://[::1]:1884"
    assert (config.protocol, config.keepalive, config.rate_limit, config.max_message_size) == (
        "3.1.1",
        60,
        100,
        131072,
    )
    transport = MqttTransport(
        MqttConfig(host="b", topic="fleet/{vehicle}/up", client_id="c-{vehicle}"), "VIN123"
    )
    assert (transport.topic, transport.client_id) == ("fleet/VIN123/up", "c-VIN123")
    with pytest.raises(ValueError, match="cannot go in an MQTT topic"):
        MqttTransport(config, "a/b")


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"host": ""}, "host", "must not be empty"),
        ({"port": 0}, "port", "from 1 to 65535"),
        ({"topic": "vwos/{vin}/x"}, "topic", "the only placeholder is {vehicle}"),
        ({"topic": "vwos/{vehicle}/#"}, "topic", "must not contain '#'"),
        ({"topic": "vwos/{vehicle"}, "topic", "not a valid template"),
        ({"client_id": "{vehicle!r}"}, "client_id", "the only placeholder"),
        ({"protocol": "4"}, "protocol", ""),
        ({"ca_file": "ca.pem"}, "ca_file", "needs tls = true"),
        ({"tls": True, "key_file": "k.pem"}, "key_file", "needs cert_file"),
        ({"tls_insecure": True}, "tls_insecure", "needs tls = true"),
        ({"password_file": "pw"}, "password_file", "needs username"),
        ({"username": "u", "password_file": "pw", "password_env": "PW"}, "password_env", "not both"),
        ({"connect_timeout": 0}, "connect_timeout", "> 0 and at most 1000000000"),
        ({"rate_limit": -1}, "rate_limit", ">= 0"),
        ({"rate_burst": 0}, "rate_burst", "at least 1"),
        ({"max_message_size": 0}, "max_message_size", "from 1 to"),
        ({"password": "literal"}, "password", "unknown key"),
        ({"topic": ""}, "topic", "the topic must not be empty (e.g. 'vwos/{vehicle}/batches')"),
        ({"topic": "a/" + "x" * 60_001}, "topic", "the topic is too long (MQTT allows 65535 bytes)"),
        ({"client_id": "a\0b"}, "client_id", "client_id must not contain NUL"),
        ({"keepalive": 70_000}, "keepalive", "expected seconds from 0 (no keepalive) to 65535, got 70000"),
        ({"keepalive": -1}, "keepalive", "expected seconds from 0 (no keepalive) to 65535, got -1"),
        ({"password_env": ""}, "password_env", "password_env must name an environment variable"),
    ],
)
def test_config_problems_name_the_key(table: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(StructureError) as info:
        structure({"host": "broker.example", **table}, MqttConfig)
    problems = {".".join(map(str, p.path)): p.message for p in info.value.problems}
    assert key in problems, problems
    assert message in problems[key]


def test_config_from_toml_values(tmp_path: Path) -> None:
    table = {
        "host": "broker.example",
        "tls": True,
        "ca_file": "pki/ca.pem",
        "cert_file": "pki/car.pem",
        "key_file": "pki/car.key",
        "username": "car",
        "password_file": "secrets/mqtt",
        "protocol": "5",
        "rate_limit": 20,
    }
    config = structure(table, MqttConfig, base_dir=tmp_path)
    assert config.ca_file == tmp_path / "pki/ca.pem"  # relative to the config file
    assert config.password_file == tmp_path / "secrets/mqtt"
    assert (config.protocol, config.rate_limit, config.effective_port) == ("5", 20.0, 8883)
