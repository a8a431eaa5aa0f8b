"""`vwos check` on a CAN gateway's config foresees what the gateway would fail on at start or at run, and
reports every problem at once, each at its TOML key.

The databases are small ones written by the tests, each message with the fault it is there for; one test
takes ../shared's vw_mqb.dbc. For the worst faults the tests also show that they are real: a config built
with its validators off makes the gateway fail just as the check said it would.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import can_gateway_tables
from test_can_gateway import Link, gateway_on

from bus import Codec, Topic, TopicError
from services.can import (
    CanCodec,
    CanDatabaseError,
    EncodeError,
    GatewayConfig,
    generate_topics,
    load_database,
    status_topic,
)
from vwos import ConfigError, FieldProblem, ServiceSpec, StructureError, parse_config
from vwos._structure import structure
from vwos.testing import open_harness

#: One message per fault the tests need.
NASTY = """\
VERSION ""

NS_ :

BS_:

BU_: ECU GW

BO_ 256 Speed: 8 ECU
 SG_ VehicleSpeed : 0|16@1+ (0.01,0) [0|655.32] "km/h" GW
 SG_ Counter : 16|4@1+ (1,0) [0|15] "" GW

BO_ 512 Command: 2 GW
 SG_ Lock : 0|1@1+ (1,0) [0|1] "" ECU
 SG_ Level : 8|8@1+ (1,0) [0|100] "%" ECU

BO_ 768 Muxed: 8 GW
 SG_ Mux M : 0|8@1+ (1,0) [0|1] "" ECU
 SG_ A m0 : 8|8@1+ (1,0) [0|255] "" ECU
 SG_ B m1 : 16|8@1+ (1,0) [0|255] "" ECU

BO_ 1024 Wide: 12 GW
 SG_ Big : 0|32@1+ (1,0) [0|1000] "" ECU

BO_ 1280 Started: 1 GW
 SG_ Mode : 0|8@1+ (1,0) [0|3] "" ECU

BA_DEF_ SG_ "GenSigStartValue" INT 0 10000;
BA_DEF_DEF_ "GenSigStartValue" 0;
BA_ "GenSigStartValue" SG_ 1280 Mode 9;
"""

NETWORK = "nasty"  # a network name of these tests only: its record classes are the NASTY database's
PREFIX = "services.gw.config."


def config_text(body: str, *, network: str = NETWORK) -> str:
    head = f"""\
        [services.gw]
        plugin = "can_gateway"
        [services.gw.config]
        database = "car.dbc"
        network = "{network}"
        """
    return textwrap.dedent(head) + textwrap.dedent(body)


def check(tmp_path: Path, body: str, *, dbc: str = NASTY, network: str = NETWORK) -> list[tuple[str, str]]:
    """The problems `vwos check` finds in the gateway's config: (key below the config table, message)."""
    (tmp_path / "car.dbc").write_text(dbc)
    try:
        parse_config(config_text(body, network=network), path=tmp_path / "vwos.toml")
    except ConfigError as exc:
        return [(p.key_path.removeprefix(PREFIX), p.message) for p in exc.problems]
    return []


def check_keys(tmp_path: Path, body: str, **kwargs: Any) -> dict[str, str]:
    problems = check(tmp_path, body, **kwargs)
    keys = dict(problems)
    assert len(keys) == len(problems), f"two problems at one key: {problems}"
    return keys


@pytest.fixture
def dbc(tmp_path: Path) -> Path:
    path = tmp_path / "car.dbc"
    path.write_text(NASTY)
    return path


def unchecked(**kwargs: Any) -> GatewayConfig:
    """A gateway config built with its validators off: what `vwos run` would get if check let it pass."""
    kwargs.setdefault("network", NETWORK)
    with attrs.validators.disabled():
        return GatewayConfig(**kwargs)


# -- lists: every problem at once, at its item -------------------------------------------------------------


def test_every_problem_of_every_list_is_reported_at_once_at_its_item(tmp_path: Path) -> None:
    problems = check_keys(
        tmp_path,
        """\
        transmit = ["Comand", "Speed", "Nope"]
        [[services.gw.config.signals]]
        signal = "Speed.Sped"
        topic = "Vehicle.Speed"
        [[services.gw.config.signals]]
        signal = "Speed.Counter"
        topic = "Vehicle.Counter"
        [[services.gw.config.signals]]
        signal = "Sped.VehicleSpeed"
        topic = "Vehicle.Speed2"
        [[services.gw.config.cyclic]]
        message = "Command"
        period = 0.1
        signals = { Lock = 1, Levl = 5, Level = 500 }
        [[services.gw.config.cyclic]]
        message = "Commandd"
        period = 0.1
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.02
        signals = { VehicleSpeed = 655.34, Counter = nan }
        """,
    )
    assert problems == {
        "transmit[0]": "no message 'Comand' in the database; did you mean 'Command'?",
        "transmit[2]": "no message 'Nope' in the database",
        "signals[0].signal": "Speed: no signal 'Sped'",
        "signals[2].signal": "no message 'Sped' in the database; did you mean 'Speed'?",
        "cyclic[0].signals.Levl": "Command: no signal 'Levl'; did you mean 'Level'?",
        "cyclic[0].signals.Level": "500.0 is out of range [0, 100] %",
        "cyclic[1].message": "no message 'Commandd' in the database; did you mean 'Command'?",
        "cyclic[2].signals.VehicleSpeed": "655.34 is out of range [0, 655.32] km/h",
        "cyclic[2].signals.Counter": "expected a finite number, got nan",
    }


def test_an_entry_wrong_in_itself_does_not_hide_the_problems_of_the_others(tmp_path: Path) -> None:
    body = """\
        transmit = ["Command"]
        [[services.gw.config.cyclic]]
        message = "Command"
        period = "fast"
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.1
        signals = { VehicleSpeed = 700 }
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.1
        [[services.gw.config.actuators]]
        topic = "Body.Lock"
        message = "Comand"
        signal = "Lock"
        [[services.gw.config.actuators]]
        topic = "Body.Lock"
        message = "Command"
        signal = "Lock"
        tpye = "bool"
        [[services.gw.config.actuators]]
        topic = "Body.Level"
        message = "Speed"
        signal = "Counter"
        """
    assert check_keys(tmp_path, body) == {
        "cyclic[0].period": "expected a number, got the string 'fast'",
        "actuators[1].tpye": "unknown key; did you mean 'type'?",
        "cyclic[1].signals.VehicleSpeed": "700.0 is out of range [0, 655.32] km/h",
        "cyclic[2].message": "Speed is listed in cyclic before: list a message once, with all the signal "
        "values it starts with",
        "actuators[0].message": "no message 'Comand' in the database; did you mean 'Command'?",
        # not "Speed is not in transmit": cyclic, which might send it, is not all there yet
    }


def test_a_list_validator_raising_several_problems_names_its_field_in_python_too(dbc: Path) -> None:
    from services.can import CyclicMessage

    with pytest.raises(StructureError) as info:
        GatewayConfig(
            database=dbc,
            network=NETWORK,
            cyclic=(CyclicMessage("Command", 0.1, {"Level": 500.0, "Nope": 1.0}),),
        )
    assert str(info.value).splitlines() == [
        "cyclic[0].signals.Nope: Command: no signal 'Nope'",
        "cyclic[0].signals.Level: 500.0 is out of range [0, 100] %",
    ]
    assert [str(p) for p in info.value.problems] == [  # relative to the field, for the config loader
        "[0].signals.Nope: Command: no signal 'Nope'",
        "[0].signals.Level: 500.0 is out of range [0, 100] %",
    ]


# -- cyclic messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("700.0", "700.0 is out of range [0, 655.32] km/h"),
        ("-0.5", "-0.5 is out of range [0, 655.32] km/h"),
        ("inf", "expected a finite number, got inf"),
        ("-inf", "expected a finite number, got -inf"),
        ("nan", "expected a finite number, got nan"),
    ],
)
def test_a_cyclic_start_value_the_codec_refuses_is_a_problem_at_its_signal(
    tmp_path: Path, value: str, message: str
) -> None:
    body = f"""\
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.02
        signals = {{ VehicleSpeed = {value} }}
        """
    assert check(tmp_path, body) == [("cyclic[0].signals.VehicleSpeed", message)]


def test_a_cyclic_start_value_of_the_wrong_type_is_a_problem_at_its_signal(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.02
        signals = { VehicleSpeed = "fast", Counter = true }
        """
    assert check_keys(tmp_path, body) == {
        "cyclic[0].signals.VehicleSpeed": "expected a number, got the string 'fast'",
        "cyclic[0].signals.Counter": "expected a number, got the boolean true",
    }


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_start_value_check_refuses_fails_the_gateway_at_start(
    dbc: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Not a matter of taste: without the check, the gateway fails at start, restarted in a loop."""
    from services.can import CyclicMessage

    cfg = unchecked(database=dbc, cyclic=(CyclicMessage("Speed", 0.02, {"VehicleSpeed": 700.0}),))
    with pytest.raises(EncodeError, match=r"700.0 is out of range"):
        async with open_harness(ServiceSpec("gateway", gateway_on(Link()), cfg)):
            pass


def test_a_message_listed_twice_in_cyclic_is_a_problem_at_the_second(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.cyclic]]
        message = "Command"
        period = 0.1
        [[services.gw.config.cyclic]]
        message = "Speed"
        period = 0.1
        [[services.gw.config.cyclic]]
        message = "Command"
        period = 0.5
        signals = { Lock = 1 }
        """
    (key, message), *rest = check(tmp_path, body)
    assert rest == []
    assert key == "cyclic[2].message"
    assert message.startswith("Command is listed in cyclic before: list a message once")


def test_the_multiplexer_of_a_cyclic_message_is_checked_as_it_is_encoded(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.cyclic]]
        message = "Muxed"
        period = 0.1
        signals = { Mux = 2 }
        [[services.gw.config.cyclic]]
        message = "Started"
        period = 0.1
        """
    assert check_keys(tmp_path, body) == {
        "cyclic[0].signals.Mux": "2.0 is out of range [0, 1]",
        # a start value that is the database's own (GenSigStartValue 9, above its max 3)
        "cyclic[1]": 'Started: cannot encode: Expected signal "Mode" value smaller than or equal to 3 in '
        'message "Started", but got 9.0.',
    }
    stray = """\
        [[services.gw.config.cyclic]]
        message = "Muxed"
        period = 0.1
        signals = { Mux = 1, A = 3 }
        """
    assert check(tmp_path, stray) == [("cyclic[0]", "Muxed: A not sent with these multiplexer values")]


@pytest.mark.parametrize("period", ["0.0", "0.0001", "-1", "nan", "inf", "1e12"])
def test_a_cyclic_period_is_a_sane_number_of_seconds(tmp_path: Path, period: str) -> None:
    body = f"""\
        [[services.gw.config.cyclic]]
        message = "Command"
        period = {period}
        """
    ((key, message),) = check(tmp_path, body)
    assert key == "cyclic[0].period"
    assert message.startswith("expected seconds from 0.001")


def test_a_cyclic_can_fd_message_on_a_classic_network_is_a_problem(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.cyclic]]
        message = "Wide"
        period = 0.1
        """
    ((key, message),) = check(tmp_path, body)
    assert key == "cyclic[0].message"
    assert message.startswith("Wide is a CAN FD message (12 bytes) and this network is configured fd = false")
    assert check(tmp_path, "fd = true\n" + body) == []


# -- transmit and actuators --------------------------------------------------------------------------------


def test_an_actuator_whose_message_the_gateway_may_not_send_is_a_problem(tmp_path: Path) -> None:
    actuator = """\
        [[services.gw.config.actuators]]
        topic = "Body.Lock"
        message = "Command"
        signal = "Lock"
        type = "bool"
        """
    ((key, message),) = check(tmp_path, actuator)
    assert key == "actuators[0].message"
    assert message == (
        "Command is not in transmit (nor sent cyclically): the gateway would refuse to send it at every "
        "sample; add it to transmit"
    )
    assert check(tmp_path, 'transmit = ["Command"]\n' + actuator) == []
    assert check(tmp_path, 'transmit = ["*"]\n' + actuator) == []
    cyclic = '[[services.gw.config.cyclic]]\nmessage = "Command"\nperiod = 0.1\n'
    assert check(tmp_path, actuator + cyclic) == []


@pytest.mark.usefixtures("vwos_bus_client")
async def test_an_actuator_check_refuses_sends_nothing_at_run(
    dbc: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Without the check the gateway starts, and refuses every sample of the actuator."""
    from services.can import Actuator

    link = Link()
    cfg = unchecked(database=dbc, actuators=(Actuator("Body.Lock", "Command", "Lock", type="bool"),))
    async with open_harness(ServiceSpec("gateway", gateway_on(link), cfg)) as car:
        car.publish(Topic("Body.Lock", bool), True)
        await trio.sleep(1)
    assert link.transport.sent == []


def test_actuator_topics_are_checked_against_the_gateways_own_and_each_other(tmp_path: Path) -> None:
    body = """\
        transmit = ["*"]
        [[services.gw.config.signals]]
        signal = "Speed.VehicleSpeed"
        topic = "Vehicle.Speed"
        [[services.gw.config.actuators]]
        topic = "CAN.nasty.Speed"
        message = "Command"
        signal = "Level"
        [[services.gw.config.actuators]]
        topic = "CAN.nasty.Status"
        message = "Command"
        signal = "Level"
        [[services.gw.config.actuators]]
        topic = "Vehicle.Speed"
        message = "Command"
        signal = "Level"
        [[services.gw.config.actuators]]
        topic = "Body.Level"
        message = "Command"
        signal = "Level"
        [[services.gw.config.actuators]]
        topic = "Body.Level"
        message = "Command"
        signal = "Lock"
        type = "bool"
        [[services.gw.config.actuators]]
        topic = "Body..Level"
        message = "Command"
        signal = "Lok"
        [[services.gw.config.actuators]]
        topic = "Body.Scaled"
        message = "Comand"
        signal = "Level"
        scale = nan
        """
    problems = check_keys(tmp_path, body)
    echo = ", which the gateway publishes: an actuator on it would send back what the gateway receives"
    assert problems == {
        "actuators[0].topic": "CAN.nasty.Speed is the topic of message Speed" + echo,
        "actuators[1].topic": "CAN.nasty.Status is the gateway's status topic" + echo,
        "actuators[2].topic": "Vehicle.Speed is the topic of signals[0] (Speed.VehicleSpeed)" + echo,
        "actuators[4].type": "Body.Level is the topic of an earlier actuator too, with type 'float': a "
        "topic has one type",
        "actuators[5].topic": "topic name 'Body..Level': segment '' must be non-empty letters, digits or "
        "underscores",
        "actuators[5].signal": "Command: no signal 'Lok'; did you mean 'Lock'?",
        # an actuator that is wrong in itself is reported as such (the rest of it once that is fixed)
        "actuators[6].scale": "expected a finite number, got nan",
    }


def test_an_actuator_on_a_signal_that_cannot_be_sent_alone_is_a_problem(tmp_path: Path) -> None:
    body = """\
        transmit = ["Muxed"]
        [[services.gw.config.actuators]]
        topic = "Body.B"
        message = "Muxed"
        signal = "B"
        [[services.gw.config.actuators]]
        topic = "Body.A"
        message = "Muxed"
        signal = "A"
        """
    assert check(tmp_path, body) == [
        (
            "actuators[0].signal",
            "Muxed cannot be sent with only B set: Muxed: B not sent with these multiplexer values",
        )
    ]
    # a cyclic entry that selects B's branch makes it sendable, as the gateway sends on top of it
    cyclic = '[[services.gw.config.cyclic]]\nmessage = "Muxed"\nperiod = 0.1\nsignals = { Mux = 1 }\n'
    assert check(tmp_path, body.replace('signal = "A"', 'signal = "B"') + cyclic) == []


def test_can_fd_messages_in_transmit_and_actuators_on_a_classic_network_are_problems(tmp_path: Path) -> None:
    body = """\
        transmit = ["Command", "Wide"]
        [[services.gw.config.actuators]]
        topic = "Body.Big"
        message = "Wide"
        signal = "Big"
        """
    problems = check_keys(tmp_path, body)
    assert list(problems) == ["transmit[1]", "actuators[0].message"]
    assert problems["transmit[1]"].endswith(
        "fd = false: Send would refuse it every time; set fd = true if the network is CAN FD"
    )
    assert "Wide is a CAN FD message (12 bytes)" in problems["actuators[0].message"]
    assert check(tmp_path, "fd = true\n" + body) == []


# -- mapped signals ----------------------------------------------------------------------------------------


def test_mapped_topics_are_valid_names_each_taken_once_and_not_the_gateways_own(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.signals]]
        signal = "Speed.VehicleSpeed"
        topic = "Vehicle.Speed"
        [[services.gw.config.signals]]
        signal = "Speed.Counter"
        topic = "Vehicle.Speed"
        [[services.gw.config.signals]]
        signal = "Speed.Counter"
        topic = "Vehicle.Speed Counter"
        [[services.gw.config.signals]]
        signal = "Speed.Counter"
        topic = "CAN.nasty.Command"
        [[services.gw.config.signals]]
        signal = "SpeedCounter"
        topic = "Vehicle.Counter"
        [[services.gw.config.signals]]
        signal = "Speed.VehicleSpeed"
        topic = "Vehicle.SpeedX"
        min = 10.0
        max = 1.0
        scale = inf
        """
    assert check_keys(tmp_path, body) == {
        "signals[1].topic": "Vehicle.Speed is the topic of an earlier mapping too (Speed.VehicleSpeed): a "
        "topic carries one signal",
        "signals[2].topic": "topic name 'Vehicle.Speed Counter': segment 'Speed Counter' must be non-empty "
        "letters, digits or underscores",
        "signals[3].topic": "CAN.nasty.Command is the topic of message Command, which the gateway publishes",
        "signals[4].signal": "'SpeedCounter': expected Message.Signal",
        "signals[5].scale": "expected a finite number, got inf",
        "signals[5].min": "10.0 is above max 1.0",
    }
    # with message_topics off, the message's name is free for a mapping
    free = 'message_topics = false\n[[services.gw.config.signals]]\nsignal = "Speed.Counter"\n'
    assert check(tmp_path, free + 'topic = "CAN.nasty.Command"\n') == []


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_mapped_topic_check_refuses_fails_the_gateway_at_start(
    dbc: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from services.can import SignalMapping

    cfg = unchecked(database=dbc, signals=(SignalMapping("Speed.Counter", "Vehicle.Speed Counter"),))
    with pytest.raises(TopicError, match=r"segment 'Speed Counter' must be non-empty"):
        async with open_harness(ServiceSpec("gateway", gateway_on(Link()), cfg)):
            pass


# -- the topics module -------------------------------------------------------------------------------------


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for topics modules; the modules imported from it are forgotten after."""
    directory = tmp_path / "modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_topics_module_must_import_and_have_records_that_fit(tmp_path: Path, modules: Path) -> None:
    db = load_database_text(tmp_path)
    (modules / "good_topics.py").write_text(generate_topics(db, network=NETWORK))
    (modules / "other_net.py").write_text(generate_topics(db, network="other"))
    (modules / "broken_topics.py").write_text("import nothing_of_that_name\n")
    (modules / "no_records.py").write_text("TOPICS = ()\n")
    (modules / "list_records.py").write_text("RECORDS = ['Speed']\n")
    stale = generate_topics(db, network=NETWORK).replace("    Counter: int | None", "    Count: int | None")
    stale = stale.replace("    Counter: int", "    Count: int")
    (modules / "stale_topics.py").write_text(stale)

    def problem(module: str) -> list[tuple[str, str]]:
        return check(tmp_path, f'topics_module = "{module}"\n')

    assert problem("good_topics") == []
    assert problem("no_such_topics") == [
        (
            "topics_module",
            "cannot import 'no_such_topics': ModuleNotFoundError: No module named 'no_such_topics'",
        )
    ]
    assert problem("broken_topics") == [
        (
            "topics_module",
            "cannot import 'broken_topics': ModuleNotFoundError: No module named 'nothing_of_that_name'",
        )
    ]
    assert problem("no_records") == [
        ("topics_module", "module no_records has no RECORDS: is it a module `vwos can gen` wrote?")
    ]
    ((key, message),) = problem("list_records")
    assert (key, message) == (
        "topics_module",
        "list_records.RECORDS: expected a dict of record classes by message name, got ['Speed']",
    )
    ((key, message),) = problem("stale_topics")
    assert key == "topics_module"
    assert message.startswith("stale_topics: the record class given for Speed does not match the database")
    ((key, message),) = problem("other_net")
    assert key == "topics_module"
    assert message.startswith(
        "other_net was generated for network 'other', and this gateway's network is 'nasty'"
    )


def load_database_text(tmp_path: Path) -> Any:
    (tmp_path / "car.dbc").write_text(NASTY)
    return load_database(tmp_path / "car.dbc")


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_missing_topics_module_fails_the_gateway_at_start(
    dbc: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = unchecked(database=dbc, topics_module="no_such_topics_module")
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'no_such_topics_module'"):
        async with open_harness(ServiceSpec("gateway", gateway_on(Link()), cfg)):
            pass


def test_checking_a_topics_module_leaves_the_default_codec_alone(tmp_path: Path, modules: Path) -> None:
    from bus import default_codec

    db = load_database_text(tmp_path)
    (modules / "fresh_topics.py").write_text(generate_topics(db, network="fresh"))
    assert check(tmp_path, 'topics_module = "fresh_topics"\n', network="fresh") == []
    import fresh_topics  # type: ignore[import-not-found]

    assert not any(default_codec.is_registered(cls) for cls in fresh_topics.RECORDS.values())


# -- the other keys ----------------------------------------------------------------------------------------


def test_the_link_settings_are_ones_python_can_takes(tmp_path: Path) -> None:
    body = """\
        interface = "socketcann"
        channel = ""
        bitrate = 0
        """
    assert check_keys(tmp_path, body) == {
        "interface": "python-can has no interface 'socketcann'; did you mean 'socketcan'?",
        "channel": "expected the name of a channel (such as vcan0), got an empty string",
        "bitrate": "expected a number of bits per second > 0, got 0",
    }
    ((key, message),) = check(tmp_path, 'interface = "virtual"\nreceive_mode = "fd"\n')
    assert key == "receive_mode"
    assert message.startswith("python-can's virtual interface has no file descriptor to wait on")
    assert check(tmp_path, 'interface = "virtual"\nreceive_mode = "poll"\n') == []


@pytest.mark.parametrize(
    "key", ["poll_interval", "reconnect_initial", "reconnect_max", "status_period", "log_interval"]
)
@pytest.mark.parametrize("value", ["0", "-1.0", "nan", "inf"])
def test_periods_and_intervals_are_finite_seconds(tmp_path: Path, key: str, value: str) -> None:
    ((where, message),) = check(tmp_path, f"{key} = {value}\n")
    assert where == key
    assert message.startswith("expected seconds > 0 and at most 1000000000")


@pytest.mark.parametrize("network", ["nétwork", "1can", "can-0", "x" * 129])
def test_a_network_name_is_one_the_bus_takes(tmp_path: Path, network: str) -> None:
    problems = dict(check(tmp_path, "", network=network))
    assert list(problems) == ["network"]


def test_every_message_named_like_the_gateways_own_names_is_reported(tmp_path: Path) -> None:
    clash = NASTY + (
        '\nBO_ 1536 Status: 1 ECU\n SG_ Ok : 0|8@1+ (1,0) [0|255] "" GW\n'
        '\nBO_ 1537 Send: 1 ECU\n SG_ Go : 0|8@1+ (1,0) [0|255] "" GW\n'
    )
    problems = check(tmp_path, "", dbc=clash)
    assert [key for key, _ in problems] == ["database", "database"]
    assert "message 'Status' would publish on CAN.nasty.Status" in problems[0][1]
    assert "message 'Send' would publish on CAN.nasty.Send" in problems[1][1]


def test_a_message_whose_topic_the_codec_cannot_make_is_a_problem(tmp_path: Path) -> None:
    """A negative cycle time (GenMsgCycleTime) made the codec's topic refuse its max_age at start."""
    negative = NASTY + 'BA_DEF_ BO_ "GenMsgCycleTime" INT -100 10000;\nBA_ "GenMsgCycleTime" BO_ 256 -20;\n'
    ((key, message),) = check(tmp_path, "", dbc=negative)
    assert key == "database"
    assert message.endswith(
        "car.dbc: message 'Speed' cannot be a topic: CAN.nasty.Speed: max_age must be positive seconds, "
        "not -0.06"
    )
    with pytest.raises(TopicError, match="max_age must be positive"):  # as run would fail
        CanCodec(load_database(tmp_path / "car.dbc"), NETWORK, codec=Codec())
    mapped = (
        'message_topics = false\n[[services.gw.config.signals]]\nsignal = "Speed.Counter"\ntopic = "V.C"\n'
    )
    ((key, message),) = check(tmp_path, mapped, dbc=negative)
    assert key == "signals[0]"
    assert message == "V.C: max_age must be positive seconds, not -0.06"


KCD = """\
<NetworkDefinition xmlns="http://kayak.2codeornot2code.org/1.0">
  <Bus name="B">
    <Message id="0x100" name="Speed" length="8"><Signal name="Veh-Speed" offset="0" length="16"/></Message>
    <Message id="0x101" name="Door Lock" length="1"><Signal name="Lock" offset="0" length="1"/></Message>
    <Message id="0x102" name="Twice" length="1"><Signal name="A" offset="0" length="1"/></Message>
    <Message id="0x103" name="Twice" length="1"><Signal name="B" offset="0" length="1"/></Message>
  </Bus>
</NetworkDefinition>
"""


def test_messages_and_signals_that_cannot_make_topics_and_records_are_problems(tmp_path: Path) -> None:
    """Real exports (KCD, ARXML) have names a DBC cannot: each made the gateway fail at start."""
    (tmp_path / "car.kcd").write_text(KCD)
    text = config_text("").replace('"car.dbc"', '"car.kcd"')
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    messages = [p.message.removeprefix(f"{tmp_path / 'car.kcd'}: ") for p in info.value.problems]
    assert {p.key_path for p in info.value.problems} == {PREFIX + "database"}
    assert messages == [
        "message 'Door Lock' cannot be a topic: topic name 'CAN.nasty.Door Lock': segment 'Door Lock' must "
        "be non-empty letters, digits or underscores",
        "messages 0x102, 0x103 are all named 'Twice': a name makes one topic and one record; rename them "
        "in the database, or set message_topics = false and map their signals",
        "signal Speed.'Veh-Speed' cannot be a field of the message's record (it is not a Python name)",
    ]
    db = load_database(tmp_path / "car.kcd")
    for name in ["Speed", "Twice"]:  # as run would fail
        with pytest.raises(CanDatabaseError):
            CanCodec(cantools_database([m for m in db.messages if m.name == name]), NETWORK, codec=Codec())
    parse_config(
        text.replace("[services.gw.config]", "[services.gw.config]\nmessage_topics = false"),
        path=tmp_path / "vwos.toml",
    )


def cantools_database(messages: list[Any]) -> Any:
    import cantools.database

    return cantools.database.can.Database(messages=messages, strict=False)


def test_a_database_problem_is_shown_as_the_loader_gives_it(tmp_path: Path, mqb_dbc: Path) -> None:
    """The loader decides when to hint at strict = false; check shows its message unchanged."""
    with pytest.raises(CanDatabaseError) as loading:
        load_database(mqb_dbc, strict=True)
    (tmp_path / "vwos.toml").write_text("")
    text = f'[services.gw]\nplugin = "can_gateway"\n[services.gw.config]\ndatabase = "{mqb_dbc}"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    assert [(p.key_path, p.message) for p in info.value.problems] == [
        ("services.gw.config.database", str(loading.value))
    ]
    broken = tmp_path / "broken.dbc"
    broken.write_text('VERSION ""\n\nBO_ 1 X: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" X\nnonsense here\n')
    with pytest.raises(CanDatabaseError) as loading:
        load_database(broken, strict=True)
    text = f'[services.gw]\nplugin = "can_gateway"\n[services.gw.config]\ndatabase = "{broken}"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    assert [p.message for p in info.value.problems] == [str(loading.value)]


def test_a_failing_database_is_parsed_once_per_check_not_once_per_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.can._database as codec_module

    calls = []
    real = codec_module.load_database

    def counting(path: Any, *, strict: bool = True) -> Any:
        calls.append(path)
        return real(path, strict=strict)

    monkeypatch.setattr(codec_module, "load_database", counting)
    body = """\
        transmit = ["Speed"]
        [[services.gw.config.cyclic]]
        message = "Command"
        period = 0.1
        [[services.gw.config.actuators]]
        topic = "Body.Lock"
        message = "Command"
        signal = "Lock"
        [[services.gw.config.signals]]
        signal = "Speed.Counter"
        topic = "Vehicle.Counter"
        """
    problems = check(tmp_path, body, dbc="this is not a DBC file")
    assert [key for key, _ in problems] == ["database"]
    assert len(calls) == 1


def test_a_config_of_thousands_of_entries_is_checked_in_bounded_time(tmp_path: Path) -> None:
    import time

    n = 3000
    entries = []
    for i in range(n):
        entries.append(
            f'[[services.gw.config.cyclic]]\nmessage = "Command"\nperiod = 0.1\nsignals = {{ Level = {i} }}'
        )
        entries.append(
            f'[[services.gw.config.actuators]]\ntopic = "T.A{i}"\nmessage = "Command"\nsignal = "Level"'
        )
        entries.append(f'[[services.gw.config.signals]]\nsignal = "Speed.Counter"\ntopic = "V.S{i % 100}"')
    body = 'transmit = ["Command"]\n' + "\n".join(entries) + "\n"
    start = time.perf_counter()
    problems = check(tmp_path, body)
    elapsed = time.perf_counter() - start
    assert len(problems) == (n - 1) + (n - 100)  # the repeated cyclic messages, the repeated topics
    assert elapsed < 30  # about a second; generous for a loaded machine


# -- with a real database ----------------------------------------------------------------------------------


def test_a_real_database_config_is_checked_in_full(tmp_path: Path, mqb_dbc: Path) -> None:
    body = f"""\
        [services.gw]
        plugin = "can_gateway"
        [services.gw.config]
        database = "{mqb_dbc}"
        strict = false
        network = "mqb_check"
        transmit = ["ACC_06"]
        [[services.gw.config.signals]]
        signal = "ESP_21.ESP_v_Signal"
        topic = "Vehicle.Speed"
        [[services.gw.config.signals]]
        signal = "ESP_21.ESP_v_Signal"
        topic = "Vehicle.Speed"
        [[services.gw.config.cyclic]]
        message = "ACC_06"
        period = 0.02
        signals = {{ ACC_Sollbeschleunigung_02 = 99.0 }}
        [[services.gw.config.cyclic]]
        message = "ACC_6"
        period = 0.02
        [[services.gw.config.actuators]]
        topic = "Vehicle.ADAS.CruiseControl.SetSpeed"
        message = "ACC_02"
        signal = "ACC_Wunschgeschw_02"
        """
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(body), path=tmp_path / "vwos.toml")
    problems = {p.key_path.removeprefix(PREFIX): p.message for p in info.value.problems}
    assert list(problems) == [
        "signals[1].topic",
        "cyclic[0].signals.ACC_Sollbeschleunigung_02",
        "cyclic[1].message",
        "actuators[0].message",
    ]
    assert problems["cyclic[0].signals.ACC_Sollbeschleunigung_02"].startswith("99.0 is out of range [")
    assert problems["cyclic[1].message"] == "no message 'ACC_6' in the database; did you mean 'ACC_06'?"
    assert problems["actuators[0].message"].startswith("ACC_02 is not in transmit")


# -- a config check passes is a config the gateway runs -----------------------------------------------------

#: The messages and signals of NASTY.
LAYOUT = {
    "Speed": ["VehicleSpeed", "Counter"],
    "Command": ["Lock", "Level"],
    "Muxed": ["Mux", "A", "B"],
    "Wide": ["Big"],
    "Started": ["Mode"],
}


def structured(table: dict[str, Any], base: Path) -> tuple[GatewayConfig | None, list[FieldProblem]]:
    """The table built as the config loader builds it, or its problems."""
    try:
        return structure(table, GatewayConfig, base_dir=base), []
    except StructureError as exc:
        return None, exc.problems


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.one_of(
        can_gateway_tables(LAYOUT, database="car.dbc", network=NETWORK),
        can_gateway_tables(LAYOUT, database="car.dbc", network=NETWORK, faults=False),
    )
)
@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_config_that_passes_check_runs_sends_and_actuates_without_a_failure(
    dbc: Path, table: dict[str, Any], autojump_clock: trio.testing.MockClock
) -> None:
    cfg, problems = structured(table, dbc.parent)
    for problem in problems:  # each at a key of the table, on one line
        assert problem.path[0] in table
        assert "\n" not in problem.message
    event("refused by the check" if cfg is None else "run")
    if cfg is None:
        return
    link = Link()
    codec = CanCodec(load_database(dbc), NETWORK, message_topics=False, codec=Codec())
    async with open_harness(ServiceSpec("gateway", gateway_on(link), cfg)) as car:  # a failure ends the test
        await trio.sleep(0.05)
        for actuator in cfg.actuators:
            car.publish(Topic(actuator.topic, float), codec.defaults(actuator.message)[actuator.signal])
        await trio.sleep(1.0)
        assert car.status()["gateway"].restarts == 0
        reports = car.samples(status_topic(NETWORK))
    sent = [frame.arbitration_id for frame in link.transport.sent]
    ids = {m.name: m.frame_id for m in codec.messages()}
    for entry in cfg.cyclic:  # about every period, and at least once
        assert sent.count(ids[entry.message]) >= min(1.0 / entry.period, 10)
    for actuator in cfg.actuators:
        assert ids[actuator.message] in sent
    assert reports[-1].value.send_errors == 0


def test_an_encode_error_of_the_codec_is_what_the_check_reports(dbc: Path) -> None:
    """The check's messages are the codec's, so they cannot disagree with what run does."""
    codec = CanCodec(load_database(dbc), NETWORK, message_topics=False, codec=Codec())
    with pytest.raises(EncodeError) as info:
        codec.encode("Speed", {"VehicleSpeed": 700.0})
    assert str(info.value) == "Speed.VehicleSpeed: 700.0 is out of range [0, 655.32] km/h"


# -- vwos check ---------------------------------------------------------------------------------------------


def test_vwos_check_prints_each_problem_of_a_gateway_config_on_one_line(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "car.dbc").write_text(NASTY)
    (tmp_path / "vwos.toml").write_text(
        config_text(
            """\
            transmit = ["Comand"]
            [[services.gw.config.cyclic]]
            message = "Speed"
            period = 0.02
            signals = { VehicleSpeed = 700.0, Counter = 99 }
            [[services.gw.config.actuators]]
            topic = "Body.Lock"
            message = "Command"
            signal = "Lock"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "vwos", "check", str(tmp_path / "vwos.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # EXIT_CONFIG, as for any config problem
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "vwos: 4 problems in the config:"
    where = f"  {tmp_path / 'vwos.toml'}: {PREFIX}"
    assert lines[1:] == [
        f"{where}transmit[0]: no message 'Comand' in the database; did you mean 'Command'?",
        f"{where}cyclic[0].signals.VehicleSpeed: 700.0 is out of range [0, 655.32] km/h",
        f"{where}cyclic[0].signals.Counter: 99.0 is out of range [0, 15]",
        f"{where}actuators[0].message: Command is not in transmit (nor sent cyclically): the gateway would "
        "refuse to send it at every sample; add it to transmit",
    ]


# -- the simulator ------------------------------------------------------------------------------------------


def test_every_wrong_message_name_of_a_simulator_config_is_reported_at_its_index(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(NASTY)
    text = """\
        [services.sim]
        plugin = "can_sim"
        [services.sim.config]
        database = "car.dbc"
        interface = "virtal"
        messages = ["Speed", "Sped", "Command", "Nope"]
        receive = ["Comand", "Command", "Muxed"]
        """
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), path=tmp_path / "vwos.toml")
    problems = {p.key_path.removeprefix("services.sim.config."): p.message for p in info.value.problems}
    assert problems == {
        "interface": "python-can has no interface 'virtal'; did you mean 'virtual'?",
        "messages[1]": "no message 'Sped' in car.dbc; did you mean 'Speed'?",
        "messages[3]": "no message 'Nope' in car.dbc",
        "receive[0]": "no message 'Comand' in car.dbc; did you mean 'Command'?",
        "receive[1]": "Command: listed in both messages and receive (an ECU sends or receives)",
    }


# -- the bus: permissions, and one gateway per network ---------------------------------------------------


def test_a_gateways_bus_names_must_be_granted_by_its_permissions(tmp_path: Path) -> None:
    body = """\
        [[services.gw.config.signals]]
        signal = "Speed.VehicleSpeed"
        topic = "Vehicle.Speed"
        [[services.gw.config.actuators]]
        topic = "Body.Lock"
        message = "Command"
        signal = "Lock"
        """
    text = config_text('transmit = ["Command"]\n' + textwrap.dedent(body))
    text = text.replace(
        'plugin = "can_gateway"\n',
        'plugin = "can_gateway"\npermissions = { publish = ["Vehicle.**"], serve = ["CAN.**"] }\n',
    )
    (tmp_path / "car.dbc").write_text(NASTY)
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=tmp_path / "vwos.toml")
    problems = {p.key_path: p.message for p in info.value.problems}
    assert problems == {
        "services.gw.permissions.publish": "it would publish CAN.nasty.Status, CAN.nasty.Speed, "
        "CAN.nasty.Command, CAN.nasty.Muxed, CAN.nasty.Wide and 1 more when it runs, which its permissions "
        "do not grant (it would be refused at start)",
        "services.gw.permissions.subscribe": "it would subscribe to Body.Lock when it runs, which its "
        "permissions do not grant (it would be refused at start)",
    }
    granted = 'publish = ["Vehicle.**", "CAN.nasty.**"], subscribe = ["Body.*"], serve = ["CAN.**"]'
    parse_config(
        text.replace(text.splitlines()[2], f"permissions = {{ {granted} }}"), path=tmp_path / "vwos.toml"
    )


@pytest.mark.usefixtures("vwos_bus_client")
async def test_a_gateway_its_permissions_do_not_grant_its_topics_fails_at_start(
    dbc: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from bus import PermissionDeniedError, Permissions

    spec = ServiceSpec(
        "gateway",
        gateway_on(Link()),
        unchecked(database=dbc),
        permissions=Permissions(publish=("Vehicle.**",)),
    )
    with pytest.raises(PermissionDeniedError, match=r"CAN\.nasty"):
        async with open_harness(spec):
            pass


def test_two_gateways_of_one_network_are_a_problem(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(NASTY)
    one = config_text("")
    two = one.replace("[services.gw]", "[services.gw2]").replace(
        "[services.gw.config]", "[services.gw2.config]"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(one + two, path=tmp_path / "vwos.toml")
    assert [(p.key_path, p.message) for p in info.value.problems] == [
        (
            "services.gw2",
            "it would serve CAN.nasty.Send, which 'gw' serves too: a method has one server (the second to "
            "start would fail)",
        )
    ]
    other = two.replace(f'network = "{NETWORK}"', 'network = "other"')
    parse_config(one + other, path=tmp_path / "vwos.toml")
