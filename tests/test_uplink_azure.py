"""services.uplink's Azure IoT Hub dialect (pure): property bags, topics, SAS tokens, keys.

The same tokens and topics are checked against Microsoft's own SDK in tests/test_iothub_fake.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import iothub_property_bags, iothub_topics

from services.uplink import BatchBuilder
from services.uplink._azure import (
    API_VERSION,
    AzureDialect,
    check_device_id,
    decode_property_bag,
    derive_device_key,
    device_resource,
    device_username,
    encode_property_bag,
    parse_sas_token,
    read_device_key,
    sas_token,
)
from services.uplink._dialect import (
    CloudMessage,
    CommandRequest,
    DesiredPatch,
    Dialect,
    Incoming,
    TwinResponse,
)

KEY = bytes(range(32))
DIALECT = AzureDialect("car-1")


def test_it_is_a_dialect() -> None:
    dialect: Dialect = DIALECT
    assert dialect.name == "azure"


# -- property bags -------------------------------------------------------------------------------------------


@given(iothub_property_bags())
def test_property_bags_round_trip(properties: dict[str, str]) -> None:
    text = encode_property_bag(properties)
    assert decode_property_bag(text) == properties
    # what goes in a topic: no separator, wildcard or NUL left unescaped inside a name or value
    for part in text.split("&") if text else []:
        assert part.count("=") == 1
        assert not set(part) & set("/+#?\0 ")


def test_property_bag_encoding_is_what_iothub_documents() -> None:
    text = encode_property_bag({"$.ct": "application/json", "$.ce": "utf-8", "a b": "c&d=e"})
    assert text == "%24.ct=application%2Fjson&%24.ce=utf-8&a%20b=c%26d%3De"
    # IoT Hub's own examples leave "$" unescaped; both read the same
    assert decode_property_bag("$.ct=application%2Fjson&$.ce=utf-8&flag") == {
        "$.ct": "application/json",
        "$.ce": "utf-8",
        "flag": "",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=1&&b=2", "an empty property name"),
        ("=1", "an empty property name"),
        ("a=1&a=2", "'a' is given twice"),
        ("a=%zz", "a % not followed by two hex digits"),
        ("a=%e9", "not UTF-8"),
        ("a%=1", "a % not followed by two hex digits"),
    ],
)
def test_malformed_property_bags_say_what(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_property_bag(text)


def test_encode_refuses_what_is_not_a_property() -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        encode_property_bag({"": "x"})
    with pytest.raises(ValueError, match="non-empty strings"):
        encode_property_bag([("a", 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not UTF-8 text"):
        encode_property_bag({"a": "\ud800"})


# -- SAS tokens and keys -------------------------------------------------------------------------------------


def test_sas_token_is_the_documented_hmac() -> None:
    resource = device_resource("hub.azure-devices.net", "car-1")
    token = sas_token(resource, KEY, 1_700_000_000)
    encoded = urllib.parse.quote(resource, safe="")
    digest = hmac.new(KEY, f"{encoded}\n1700000000".encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    assert token == f"SharedAccessSignature sr={encoded}&sig={signature}&se=1700000000"
    parsed = parse_sas_token(token)
    assert (parsed.resource, parsed.expiry, parsed.policy) == (resource, 1_700_000_000, None)
    assert parsed.valid(KEY)
    assert not parsed.valid(bytes(32))
    with_policy = parse_sas_token(sas_token(resource, KEY, 5, policy="registration"))
    assert with_policy.policy == "registration"
    assert with_policy.valid(KEY)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("sr=a&sig=b&se=1", "starts with 'SharedAccessSignature '"),
        ("SharedAccessSignature sig=b&se=1", "no sr"),
        ("SharedAccessSignature sr=a&se=1", "no sig"),
        ("SharedAccessSignature sr=a&sig=b", "no se"),
        ("SharedAccessSignature sr=a&sig=b&se=-1", "not a time"),
        ("SharedAccessSignature sr=a&sig=b&se=1&x=2", "no field 'x'"),
    ],
)
def test_malformed_sas_tokens_say_what(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sas_token(token)


def test_user_name_and_device_ids() -> None:
    assert (
        device_username("h.azure-devices.net", "car-1")
        == f"h.azure-devices.net/car-1/?api-version={API_VERSION}"
    )
    assert API_VERSION == "2021-04-12"
    assert check_device_id("a-b.c%_*?!(),:=@$'") == "a-b.c%_*?!(),:=@$'"
    for bad in ("", "a/b", "a+b", "a#b", "a b", "é", "x" * 129):
        with pytest.raises(ValueError, match="not an IoT Hub device id"):
            check_device_id(bad)
    with pytest.raises(ValueError, match="not an IoT Hub device id"):
        AzureDialect("car/1")


def test_device_keys_from_files(tmp_path: Path) -> None:
    good = tmp_path / "key"
    good.write_text(base64.b64encode(KEY).decode() + "\n")
    assert read_device_key(good) == KEY
    cases = {
        "empty": (b"  \n", "is empty"),
        "junk": (b"not base64!", "is not base64"),
        "short": (base64.b64encode(b"x" * 8), "8 bytes: IoT Hub keys are 16 to 64"),
        "long": (base64.b64encode(b"x" * 65), "65 bytes"),
        "binary": (b"\xff\xfe", "not base64 text"),
        "huge": (b"A" * 10_000, "larger than 4096 bytes"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message) as caught:
            read_device_key(path)
        assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match="cannot read key_file"):
        read_device_key(tmp_path / "missing")
    secret = tmp_path / "secret"
    secret.write_text(base64.b64encode(KEY).decode() + "!")
    with pytest.raises(ValueError, match="not base64") as caught:
        read_device_key(secret)
    assert base64.b64encode(KEY).decode() not in str(caught.value)  # the key is never shown


def test_group_enrolment_key_derivation() -> None:
    # DPS: a device's key is HMAC-SHA256(group key, registration id), as `az iot dps enrollment-group
    # compute-device-key` computes it
    derived = derive_device_key(KEY, "car-1")
    assert derived == hmac.new(KEY, b"car-1", hashlib.sha256).digest()
    assert len(derived) == 32


# -- telemetry -----------------------------------------------------------------------------------------------


def _batch(stream: str = "0123456789abcdef") -> bytes:
    return BatchBuilder("car-1", stream, max_bytes=4096, compress=False).build(7, [("Vehicle.Speed", 0, 1.0)])


def test_telemetry_topic_and_property_bag() -> None:
    payload = _batch()
    out = DIALECT.telemetry(7, payload)
    assert out.qos == 1
    assert out.payload == payload
    prefix = "devices/car-1/messages/events/"
    assert out.topic.startswith(prefix)
    bag = decode_property_bag(out.topic[len(prefix) :])
    assert bag == {
        "$.ct": "application/cbor",
        "$.ce": "identity",
        "$.mid": "0123456789abcdef-7",
        "vwos-seq": "7",
        "vwos-stream": "0123456789abcdef",
        "vwos-body": "cbor",
    }
    # not a batch (a test's bytes): the seq alone
    assert decode_property_bag(DIALECT.telemetry(3, b"x").topic[len(prefix) :])["vwos-seq"] == "3"


def test_subscriptions() -> None:
    assert DIALECT.subscriptions() == [
        ("$iothub/methods/POST/#", 1),
        ("$iothub/twin/res/#", 1),
        ("$iothub/twin/PATCH/properties/desired/#", 1),
        ("devices/car-1/messages/devicebound/#", 1),
    ]


# -- cloud -> car --------------------------------------------------------------------------------------------


def parse(topic: str, payload: bytes = b"{}") -> object:
    return DIALECT.parse(Incoming(topic, payload))


def test_parse_each_kind() -> None:
    assert parse("$iothub/methods/POST/lock/?$rid=1a", b'{"x":1}') == CommandRequest("lock", b'{"x":1}', "1a")
    assert parse("$iothub/twin/res/200/?$rid=7", b"{}") == TwinResponse("7", 200, b"{}", None)
    assert parse("$iothub/twin/res/204/?$rid=8&$version=12", b"") == TwinResponse("8", 204, b"", 12)
    assert parse("$iothub/twin/PATCH/properties/desired/?$version=5", b'{"a":1,"$version":5}') == (
        DesiredPatch(5, b'{"a":1,"$version":5}')
    )
    # no $version in the topic: the document's
    assert parse("$iothub/twin/PATCH/properties/desired/", b'{"$version":9}') == DesiredPatch(
        9, b'{"$version":9}'
    )
    c2d = (
        "devices/car-1/messages/devicebound/"
        "%24.mid=m1&%24.to=%2Fdevices%2Fcar-1%2Fmessages%2FdeviceBound&k=v%20w"
    )
    assert parse(c2d, b"hi") == CloudMessage(
        b"hi", {"$.mid": "m1", "$.to": "/devices/car-1/messages/deviceBound", "k": "v w"}
    )
    assert parse("devices/car-1/messages/devicebound", b"") == CloudMessage(b"", {})
    assert parse("vwos/car-1/batches") is None
    assert parse("devices/car-1/messages/events/") is None


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        ("$iothub/methods/POST/lock", b"", "no '\\?'"),
        ("$iothub/methods/POST//?$rid=1", b"", "no method name"),
        ("$iothub/methods/POST/a/b/?$rid=1", b"", "no method name"),
        ("$iothub/methods/POST/lock/?x=1", b"", "without \\$rid"),
        ("$iothub/twin/res/200/?x=1", b"", "without \\$rid"),
        ("$iothub/twin/res/2000/?$rid=1", b"", "not a 3-digit code"),
        ("$iothub/twin/res/abc/?$rid=1", b"", "not a 3-digit code"),
        ("$iothub/twin/res/200/?$rid=1&$version=-3", b"", "not a non-negative integer"),
        ("$iothub/twin/PATCH/properties/desired/?$version=x", b"{}", "not a non-negative integer"),
        ("$iothub/twin/PATCH/properties/desired/", b"{}", "without \\$version"),
        ("$iothub/twin/PATCH/properties/desired/", b"[", "not JSON"),
        ("$iothub/twin/PATCH/properties/desiredX/?$version=1", b"{}", "not a desired-properties patch"),
        ("devices/other/messages/devicebound/", b"", "for another device"),
        ("devices/car-1/messages/devicebound/a=%zz", b"", "two hex digits"),
        ("$iothub/methods/POST/lock/?$rid=1&$rid=2", b"", "given twice"),
    ],
)
def test_malformed_messages_say_what(topic: str, payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(topic, payload)


@given(iothub_topics(), st.binary(max_size=64))
def test_hostile_topics_parse_or_raise_value_error(topic: str, payload: bytes) -> None:
    try:
        event = DIALECT.parse(Incoming(topic, payload))
    except ValueError as exc:
        message = str(exc)
        event = None
        assert message, "a ValueError says what is wrong"
    assert event is None or isinstance(event, CommandRequest | TwinResponse | DesiredPatch | CloudMessage)


@given(iothub_property_bags(), st.binary(max_size=32))
def test_cloud_to_device_property_bags_round_trip(properties: dict[str, str], payload: bytes) -> None:
    topic = "devices/car-1/messages/devicebound/" + encode_property_bag(properties)
    assert parse(topic, payload) == CloudMessage(payload, properties)


@given(st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s), iothub_property_bags())
def test_method_names_and_request_ids_survive(name: str, extra: dict[str, str]) -> None:
    query = encode_property_bag({"$rid": "r-1", **{k: v for k, v in extra.items() if k != "$rid"}})
    event = parse(f"$iothub/methods/POST/{name}/?{query}")
    assert event == CommandRequest(name, b"{}", "r-1")


# -- car -> cloud answers ------------------------------------------------------------------------------------


def test_replies_and_requests() -> None:
    reply = DIALECT.command_reply("1a", 200, b'{"ok":true}')
    assert (reply.topic, reply.payload) == ("$iothub/methods/res/200/?$rid=1a", b'{"ok":true}')
    assert DIALECT.command_reply("1a", 504, b"{}").topic == "$iothub/methods/res/504/?$rid=1a"
    assert DIALECT.get_desired("g1").topic == "$iothub/twin/GET/?$rid=g1"
    report = DIALECT.report("r2", b'{"a":1}')
    assert (report.topic, report.payload) == ("$iothub/twin/PATCH/properties/reported/?$rid=r2", b'{"a":1}')
    for bad_status in (99, 1000, True):
        with pytest.raises(ValueError, match="3-digit"):
            DIALECT.command_reply("1", bad_status, b"")
    for bad_rid in ("", "a/b", "a#", None):
        with pytest.raises(ValueError, match="reply_to"):
            DIALECT.command_reply(bad_rid, 200, b"")
    for bad_request in ("", "a b", "a/b", "x" * 65):
        with pytest.raises(ValueError, match="request id"):
            DIALECT.get_desired(bad_request)
        with pytest.raises(ValueError, match="request id"):
            DIALECT.report(bad_request, b"{}")


def test_desired_from_a_twin_get() -> None:
    twin = {"desired": {"rate": 5, "$version": 4}, "reported": {"$version": 2}}
    full = DIALECT.desired_from_twin(TwinResponse("g", 200, json.dumps(twin).encode()))
    assert full.full
    assert full.version == 4
    assert json.loads(full.document) == {"rate": 5, "$version": 4}
    for status, payload, message in [
        (404, b"{}", "status 404"),
        (200, b"nope", "not JSON"),
        (200, b"[1]", "no 'desired'"),
        (200, b'{"desired": {}}', "no \\$version"),
        (200, b"[" * 100_000, "not JSON"),
    ]:
        with pytest.raises(ValueError, match=message):
            DIALECT.desired_from_twin(TwinResponse("g", status, payload))
