"""The fake IoT Hub (tests/iothub_fake.py) proven faithful by Microsoft's own device SDK.

``azure-iot-device`` 2.14.0 pins paho-mqtt < 2, so it cannot live in the project's environment: the
``azure_sdk`` fixture makes a virtualenv of its own, once, under ``AZURE_SDK_CACHE`` (kept between runs, as
the npm packages of test_record.py are), and the scripts below run there. The SDK connects to its fixed
port 8883: the fake listens on 8883 of a loopback address drawn per hub, given to the SDK as the connection
string's ``GatewayHostName`` -- the SDK itself is not patched. If the SDK cannot talk to the fake, the fake
is wrong.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import iothub_fake
import mqtt_broker
import pytest
from conftest import skip_or_fail

AZURE_SDK = "azure-iot-device==2.14.0"
AZURE_SDK_CACHE = Path(
    os.environ.get("VWOS_TEST_AZURE_SDK_VENV", Path.home() / ".cache" / "vwos-test-azure-iot-device-2.14.0")
)
PIP_TIMEOUT = 300
SCRIPT_TIMEOUT = 60

KEY = bytes(range(32))


@pytest.fixture(scope="session")
def azure_sdk() -> Path:
    """The python of a virtualenv holding azure-iot-device 2.14.0 (made once, cached)."""
    python = AZURE_SDK_CACHE / "bin" / "python"
    ready = AZURE_SDK_CACHE / ".vwos-ready"
    if ready.exists() and python.exists():
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(AZURE_SDK_CACHE)], check=True, timeout=120,
                       capture_output=True)  # fmt: skip
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", AZURE_SDK],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        skip_or_fail(f"pip install {AZURE_SDK} took over {PIP_TIMEOUT} s (no registry?)")
    except subprocess.CalledProcessError as exc:
        skip_or_fail(f"cannot make a virtualenv for {AZURE_SDK}: {exc.stderr!r}")
    if done.returncode != 0:
        skip_or_fail(f"pip cannot install {AZURE_SDK}: {done.stderr.strip()[-300:]}")
    ready.write_text(AZURE_SDK + "\n")
    return python


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[iothub_fake.FakeIotHub]:
    reason = mqtt_broker.mosquitto_unavailable_reason()
    if reason is not None:
        skip_or_fail(f"the fake IoT Hub needs mosquitto and openssl; {reason}")
    enrolments = {"car-dps": (KEY, "car-dps-device")}
    with iothub_fake.FakeIotHub(
        tmp_path / "hub", {"car-1": KEY, "car-x509": None}, dps=True, enrolments=enrolments
    ) as fake:
        yield fake


# -- the SDK side --------------------------------------------------------------------------------------------

DEVICE_SCRIPT = r"""
import json, sys, threading, time
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, X509

args = json.loads(sys.argv[1])
ca = open(args["ca"]).read()

def say(**event):
    print(json.dumps(event), flush=True)

if args.get("x509"):
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(args["cert"], args["key"]), hostname=args["hub"], device_id=args["device"],
        gateway_hostname=args["address"], server_verification_cert=ca, connection_retry=False)
else:
    client = IoTHubDeviceClient.create_from_connection_string(
        args["connection_string"], server_verification_cert=ca, connection_retry=False)
try:
    client.connect()
except Exception as exc:
    say(event="connect_failed", error=type(exc).__name__, text=str(exc))
    sys.exit(0)
say(event="connected")
if args.get("connect_only"):
    client.shutdown()
    sys.exit(0)

done = {"desired": threading.Event(), "method": threading.Event(), "c2d": threading.Event()}

def on_desired(patch):
    say(event="desired", patch=patch)
    done["desired"].set()

def on_method(request):
    say(event="method", name=request.name, payload=request.payload)
    answer = MethodResponse.create_from_method_request(request, 200, {"done": request.name})
    client.send_method_response(answer)
    done["method"].set()

def on_c2d(message):
    say(event="c2d", data=message.data.decode(), custom=message.custom_properties,
        message_id=message.message_id, content_type=message.content_type)
    done["c2d"].set()

client.on_twin_desired_properties_patch_received = on_desired
client.on_method_request_received = on_method
client.on_message_received = on_c2d

message = Message(json.dumps({"speed": 87.5}), content_encoding="utf-8", content_type="application/json")
message.custom_properties["vwos-seq"] = "7"
message.custom_properties["odd key"] = "a&b=c/d"
client.send_message(message)
say(event="sent")
twin = client.get_twin()
say(event="twin", twin=twin)
client.patch_twin_reported_properties({"vwos": {"version": "0.1"}, "speed_limit": 130})
say(event="reported")
say(event="ready")
ok = all(e.wait(30) for e in done.values())
say(event="finished", ok=ok)
client.shutdown()
"""


class Script:
    """The SDK script in its own process; its JSON lines arrive on a queue (read by a thread)."""

    def __init__(self, python: Path, tmp_path: Path, args: dict[str, Any]) -> None:
        path = tmp_path / "device.py"
        path.write_text(DEVICE_SCRIPT)
        self.process = subprocess.Popen(
            [str(python), str(path), json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.events.put(json.loads(line))

    def wait_for(self, name: str, timeout: float = SCRIPT_TIMEOUT) -> dict[str, Any]:
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                self.process.kill()
                self.process.wait(10)
                err = self.process.stderr.read() if self.process.stderr is not None else ""
                raise AssertionError(
                    f"no {name!r} from the SDK script; saw {self.seen}; stderr: {err[-2000:]}"
                ) from None
            self.seen.append(event)
            if event["event"] == name:
                return event
            if event["event"] == "connect_failed" and name != "connect_failed":
                raise AssertionError(f"the SDK could not connect to the fake hub: {event}")

    def close(self) -> None:
        try:
            self.process.wait(SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def test_the_sdk_exercises_every_feature_against_the_fake(
    azure_sdk: Path, hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    hub.devices["car-1"].desired.update({"campaigns": [], "rate": 1})
    script = Script(
        azure_sdk,
        tmp_path,
        {"connection_string": hub.connection_string("car-1"), "ca": str(hub.certificates.ca_file)},
    )
    try:
        script.wait_for("connected")
        # the SDK's CONNECT passed the fake's checks: client id, user name, a SAS token signed with the key
        accepted = [c for c in hub.connects if c.code == 0]
        assert accepted[0].client_id == "car-1"
        assert accepted[0].auth == "sas"
        assert accepted[0].username is not None
        assert accepted[0].username.startswith("fakehub.azure-devices.net/car-1/?api-version=")
        # telemetry, with its property bag
        script.wait_for("sent")
        hub.wait_until(lambda: len(hub.telemetry) == 1)
        sent = hub.telemetry[0]
        assert json.loads(sent.payload) == {"speed": 87.5}
        assert sent.properties["$.ct"] == "application/json"
        assert sent.properties["$.ce"] == "utf-8"
        assert sent.properties["vwos-seq"] == "7"
        assert sent.properties["odd key"] == "a&b=c/d"
        # twin GET and the reported patch
        twin = script.wait_for("twin")["twin"]
        assert twin["desired"] == {"campaigns": [], "rate": 1, "$version": 1}
        script.wait_for("reported")
        assert hub.devices["car-1"].reported["speed_limit"] == 130
        assert hub.devices["car-1"].reported["$version"] == 2
        script.wait_for("ready")
        # cloud -> device: a desired patch, a direct method (its answer collected), a C2D message
        version = hub.update_desired("car-1", {"rate": 10})
        assert version == 2
        assert hub.invoke_method("car-1", "lock", {"doors": "all"}) == (200, {"done": "lock"})
        mid = hub.send_c2d("car-1", b"hello car", {"kind": "note", "odd key": "x&y"})
        events = {e["event"]: e for e in [script.wait_for("finished"), *script.seen]}
        assert events["finished"]["ok"]
        assert events["desired"]["patch"] == {"rate": 10, "$version": 2}
        assert events["method"] == {"event": "method", "name": "lock", "payload": {"doors": "all"}}
        assert events["c2d"]["data"] == "hello car"
        assert events["c2d"]["message_id"] == mid
        assert events["c2d"]["custom"] == {"kind": "note", "odd key": "x&y"}
    finally:
        script.close()


@pytest.mark.parametrize(
    ("change", "code", "why"),
    [
        ({"SharedAccessKey": base64.b64encode(bytes(32)).decode()}, 5, "bad signature"),
        ({"DeviceId": "nobody"}, 2, "no such device"),
        ({"HostName": "otherhub.azure-devices.net"}, 4, "user name"),
    ],
)
def test_the_fake_refuses_what_iothub_refuses(
    azure_sdk: Path, hub: iothub_fake.FakeIotHub, tmp_path: Path, change: dict[str, str], code: int, why: str
) -> None:
    parts = dict(p.split("=", 1) for p in hub.connection_string("car-1").split(";"))
    parts.update(change)
    script = Script(
        azure_sdk,
        tmp_path,
        {
            "connection_string": ";".join(f"{k}={v}" for k, v in parts.items()),
            "ca": str(hub.certificates.ca_file),
            "connect_only": True,
        },
    )
    try:
        failed = script.wait_for("connect_failed")
        assert failed["error"] in {"CredentialError", "ConnectionFailedError", "ClientError"}
        assert [(c.code, why in c.why) for c in hub.connects] == [(code, True)]
    finally:
        script.close()


def test_the_sdk_with_an_x509_certificate(
    azure_sdk: Path, hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    cert, key = hub.certificates.device_certificate("car-x509")
    args = {
        "x509": True,
        "cert": str(cert),
        "key": str(key),
        "hub": hub.hub,
        "device": "car-x509",
        "address": hub.address,
        "ca": str(hub.certificates.ca_file),
        "connect_only": True,
    }
    script = Script(azure_sdk, tmp_path, args)
    try:
        script.wait_for("connected")
        assert [(c.client_id, c.code, c.auth) for c in hub.connects] == [("car-x509", 0, "x509")]
    finally:
        script.close()
    # a certificate whose CN is another device is refused
    wrong, wrong_key = hub.certificates.device_certificate("car-1")
    script = Script(azure_sdk, tmp_path, {**args, "cert": str(wrong), "key": str(wrong_key)})
    try:
        script.wait_for("connect_failed")
        assert hub.connects[-1].code == 5
    finally:
        script.close()


PROVISIONING_SCRIPT = r"""
import json, sys
from azure.iot.device import ProvisioningDeviceClient

args = json.loads(sys.argv[1])
client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=args["host"], registration_id=args["registration"], id_scope=args["scope"],
    symmetric_key=args["key"], server_verification_cert=open(args["ca"]).read())
result = client.register()
state = result.registration_state
print(json.dumps({"event": "registered", "status": result.status, "hub": state.assigned_hub,
                  "device": state.device_id}), flush=True)
"""


def test_the_sdks_provisioning_client_against_the_fake_dps(
    azure_sdk: Path, hub: iothub_fake.FakeIotHub, tmp_path: Path
) -> None:
    path = tmp_path / "provision.py"
    path.write_text(PROVISIONING_SCRIPT)
    args = {
        "host": hub.dps_address,
        "registration": "car-dps",
        "scope": hub.id_scope,
        "key": base64.b64encode(KEY).decode(),
        "ca": str(hub.certificates.ca_file),
    }
    done = subprocess.run(
        [str(azure_sdk), str(path), json.dumps(args)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "event": "registered",
        "status": "assigned",
        "hub": "fakehub.azure-devices.net",
        "device": "car-dps-device",
    }
    topics = [topic for _, topic in hub.dps_requests]
    assert topics[0].startswith("$dps/registrations/PUT/iotdps-register/?$rid=")
    assert any(t.startswith("$dps/registrations/GET/iotdps-get-operationstatus/") for t in topics)
