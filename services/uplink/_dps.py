"""Azure's Device Provisioning Service over MQTT: which hub, and as which device, the car connects to.

The protocol (pure functions, no I/O): connect to the DPS endpoint as client id = registration id, user
name ``{idScope}/registrations/{registrationId}/api-version=2019-03-31``, a SAS token for
``{idScope}/registrations/{registrationId}`` (policy ``registration``) signed with the enrolment's key -- an
individual enrolment's own, or for a group enrolment the device key derived from the group's (HMAC-SHA256 of
the registration id) -- or an X.509 client certificate; subscribe to ``$dps/registrations/res/#``; publish
``$dps/registrations/PUT/iotdps-register/?$rid={rid}`` with ``{"registrationId": ...}``; DPS answers 202 with
an ``operationId`` and a ``retry-after``; poll ``$dps/registrations/GET/iotdps-get-operationstatus/?$rid=
{rid}&operationId={id}`` until it answers 200 with ``status: "assigned"`` and the ``registrationState``
(``assignedHub``, ``deviceId``).

The I/O (`provision`): a registration happens once per device (and again only when the hub refuses the
assignment), so it runs as one blocking paho conversation in a worker thread, bounded by ``dps.timeout``,
rather than through the transport's trio driver. The assignment is cached in the state directory
(``azure-dps.json``, written atomically: temporary file, fsync, rename, directory fsync) and reused at the
next start when its ID scope and registration id are the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import ssl
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from services.uplink._azure import (
    decode_property_bag,
    derive_device_key,
    read_device_key,
    sas_token,
)
from services.uplink._transport import TransportError

if TYPE_CHECKING:
    import structlog

    from services.uplink._azure_config import AzureConfig

__all__ = [
    "DPS_API_VERSION",
    "Assignment",
    "DpsResponse",
    "forget_assignment",
    "load_assignment",
    "parse_response",
    "poll_topic",
    "provision",
    "register_topic",
    "registration_username",
    "save_assignment",
]

DPS_API_VERSION: Final = "2019-03-31"
CACHE_NAME: Final = "azure-dps.json"
#: DPS's retry-after, bounded: at least this often, at most this rarely (seconds).
_MIN_RETRY, _MAX_RETRY = 0.5, 30.0


@attrs.frozen
class Assignment:
    """Where DPS assigned the device: its hub and device id (cached in the state directory)."""

    id_scope: str
    registration_id: str
    hub: str
    device_id: str


@attrs.frozen
class DpsResponse:
    """An answer of DPS: ``$dps/registrations/res/{status}/?$rid=...&retry-after=...`` and its JSON."""

    status: int
    request_id: str
    retry_after: float | None
    body: dict[str, Any]


def registration_username(id_scope: str, registration_id: str) -> str:
    return f"{id_scope}/registrations/{registration_id}/api-version={DPS_API_VERSION}"


def registration_resource(id_scope: str, registration_id: str) -> str:
    return f"{id_scope}/registrations/{registration_id}"


def register_topic(request_id: str) -> str:
    return f"$dps/registrations/PUT/iotdps-register/?$rid={request_id}"


def poll_topic(request_id: str, operation_id: str) -> str:
    return f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={request_id}&operationId={operation_id}"


def parse_response(topic: str, payload: bytes) -> DpsResponse:
    """An answer of DPS; ValueError saying what is wrong."""
    prefix = "$dps/registrations/res/"
    if not topic.startswith(prefix):
        raise ValueError(f"{topic[:200]!r} is not a DPS answer")
    status_text, _, query = topic[len(prefix) :].partition("/?")
    if not (len(status_text) == 3 and status_text.isdigit()):
        raise ValueError(f"{topic[:200]!r}: status {status_text!r} is not a 3-digit code")
    fields = decode_property_bag(query)
    retry: float | None = None
    if "retry-after" in fields:
        try:
            retry = min(_MAX_RETRY, max(_MIN_RETRY, float(fields["retry-after"])))
        except ValueError:
            raise ValueError(f"{topic[:200]!r}: retry-after is not a number") from None
    try:
        body = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        raise ValueError(f"DPS answer {status_text}: not JSON") from None
    if not isinstance(body, dict):
        raise ValueError(f"DPS answer {status_text}: not a JSON object")
    return DpsResponse(int(status_text), fields.get("$rid", ""), retry, body)


def assignment_from(response: DpsResponse, id_scope: str, registration_id: str) -> Assignment | None:
    """The assignment a 200 answer carries; None while DPS is still assigning; ValueError for a failure."""
    body = response.body
    if response.status == 202 or body.get("status") == "assigning":
        return None
    if response.status != 200:
        raise ValueError(f"DPS refused the registration: {response.status} {body.get('message', body)}")
    if body.get("status") != "assigned":
        raise ValueError(f"DPS did not assign the device: status {body.get('status')!r}")
    state = body.get("registrationState")
    hub = state.get("assignedHub") if isinstance(state, dict) else None
    device = state.get("deviceId") if isinstance(state, dict) else None
    if not (isinstance(hub, str) and hub and isinstance(device, str) and device):
        raise ValueError("DPS's answer has no assignedHub and deviceId")
    return Assignment(id_scope, registration_id, hub, device)


# -- the cache ----------------------------------------------------------------------------------------------


def load_assignment(state_dir: Path, id_scope: str, registration_id: str) -> Assignment | None:
    """The cached assignment for this enrolment, or None (no cache, another enrolment's, unreadable)."""
    try:
        data = json.loads((state_dir / CACHE_NAME).read_text("utf-8"))
        assignment = Assignment(
            **{k: str(data[k]) for k in ("id_scope", "registration_id", "hub", "device_id")}
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (assignment.id_scope, assignment.registration_id) != (id_scope, registration_id):
        return None
    return assignment


def save_assignment(state_dir: Path, assignment: Assignment) -> None:
    """Write the cache atomically: a reader sees the old one or the new one, never a part."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CACHE_NAME
    temporary = state_dir / f".{CACHE_NAME}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(attrs.asdict(assignment), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def forget_assignment(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / CACHE_NAME).unlink()


# -- the registration ---------------------------------------------------------------------------------------


def _registration_id(config: AzureConfig, device_id: str) -> str:
    assert config.dps is not None
    return config.dps.registration_id or device_id


def _enrolment_key(config: AzureConfig, registration_id: str) -> bytes | None:
    dps = config.dps
    assert dps is not None
    if dps.key_file is not None:
        return read_device_key(dps.key_file)
    if dps.group_key_file is not None:
        return derive_device_key(read_device_key(dps.group_key_file), registration_id)
    return None  # X.509


def _tls_context(config: AzureConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=None if config.ca_file is None else str(config.ca_file))
    if config.cert_file is not None:
        key = None if config.cert_key_file is None else str(config.cert_key_file)
        context.load_cert_chain(str(config.cert_file), key)
    return context


def _register(config: AzureConfig, registration_id: str, deadline: float) -> Assignment:  # worker thread
    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    dps = config.dps
    assert dps is not None
    where = f"DPS {dps.endpoint}:{dps.port}"
    key = _enrolment_key(config, registration_id)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=registration_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    password = None
    if key is not None:
        expiry = int(time.time() + 3600)
        resource = registration_resource(dps.id_scope, registration_id)
        password = sas_token(resource, key, expiry, policy="registration")
    client.username_pw_set(registration_username(dps.id_scope, registration_id), password)
    client.tls_set_context(_tls_context(config))
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.on_connect = lambda c, u, f, reason, p: events.put(("connack", reason))
    client.on_subscribe = lambda c, u, mid, reasons, p: events.put(("suback", reasons))
    client.on_message = lambda c, u, message: events.put(("message", message))
    client.on_disconnect = lambda c, u, f, reason, p: events.put(("closed", reason))

    def wait(kind: str) -> Any:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"{where}: no answer within dps.timeout {dps.timeout:g} s")
            try:
                got, value = events.get(timeout=remaining)
            except queue.Empty:
                continue
            if got == "closed":
                raise TransportError(f"{where}: connection closed ({value})")
            if got == kind:
                return value

    try:
        client.connect(dps.endpoint, dps.port, keepalive=60)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"{where}: cannot connect: {exc}") from None
    client.loop_start()
    try:
        reason = wait("connack")
        if reason.is_failure:
            raise TransportError(
                f"{where}: registration {registration_id!r} refused: {str(reason).lower()} "
                "(check id_scope, registration_id and the enrolment's key or certificate)"
            )
        client.subscribe("$dps/registrations/res/#", qos=1)
        wait("suback")
        rid = uuid.uuid4().hex[:12]
        client.publish(register_topic(rid), json.dumps({"registrationId": registration_id}), qos=1)
        while True:
            message = wait("message")
            try:
                response = parse_response(message.topic, bytes(message.payload))
                if response.request_id != rid:
                    continue
                assignment = assignment_from(response, dps.id_scope, registration_id)
            except ValueError as exc:
                raise TransportError(f"{where}: {exc}") from None
            if assignment is not None:
                return assignment
            operation = response.body.get("operationId")
            if not isinstance(operation, str) or not operation:
                raise TransportError(f"{where}: DPS answered {response.status} without an operationId")
            time.sleep(min(response.retry_after or 2.0, max(0.0, deadline - time.monotonic())))
            rid = uuid.uuid4().hex[:12]
            client.publish(poll_topic(rid, operation), b"", qos=1)
    finally:
        client.disconnect()
        client.loop_stop()


async def provision(
    config: AzureConfig, device_id: str, state_dir: Path, *, log: structlog.typing.FilteringBoundLogger
) -> Assignment:
    """The cached assignment, else a registration with DPS (cached once it succeeds)."""
    dps = config.dps
    assert dps is not None
    registration_id = _registration_id(config, device_id)
    cached = await trio.to_thread.run_sync(load_assignment, state_dir, dps.id_scope, registration_id)
    if cached is not None:
        return cached
    log.info("provisioning through DPS", endpoint=dps.endpoint, registration_id=registration_id)
    deadline = time.monotonic() + dps.timeout
    try:
        with trio.fail_after(dps.timeout + 1.0):
            assignment = await trio.to_thread.run_sync(
                _register, config, registration_id, deadline, abandon_on_cancel=True
            )
    except trio.TooSlowError:
        raise TransportError(
            f"DPS {dps.endpoint}: no assignment within dps.timeout {dps.timeout:g} s"
        ) from None
    except ValueError as exc:  # a key file
        raise TransportError(f"DPS {dps.endpoint}: {exc}") from None
    await trio.to_thread.run_sync(save_assignment, state_dir, assignment)
    log.info("provisioned", hub=assignment.hub, device_id=assignment.device_id)
    return assignment
