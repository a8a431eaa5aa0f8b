"""End-to-end protection of CAN messages (`services.can._e2e`): the CRCs against their catalogue check values,
each profile against published vectors, Volkswagen's MQB variant against real frames, round trips for every
protected message of the real databases, the counter checks, and hostile payloads. Pure logic: no bus."""

from __future__ import annotations

import random
import re
import time
import tomllib
from typing import Any

import cantools
import pytest
from cantools.autosar.end_to_end import compute_profile2_crc, compute_profile5_crc
from cantools.database.can import Message, Signal
from cantools.database.can.formats.arxml import AutosarEnd2EndProperties, AutosarMessageSpecifics
from conftest import MQB_DBC, SHARED, require_shared_file
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import any_can_payloads

from services.can import (
    E2E,
    E2E_PROFILES,
    E2E_REASONS,
    E2EConfigError,
    E2EProtection,
    bind_e2e,
    find_e2e_signals,
)
from services.can._e2e import _Field, crc8_h2f, crc8_sae_j1850, crc16_ccitt_false
from vwos._structure import StructureError, structure

MODEL3_DBC = SHARED / "kuksa" / "Model3CAN.dbc"

# The layouts of AUTOSAR's examples: P01/P02 with the CRC in byte 0, the counter in the low nibble of byte 1
# and (P01 nibble mode) the data id's nibble in its high nibble; P05 with its header (CRC little endian,
# then the counter) at byte 0 of an 8-byte message and at byte 8 of a 16-byte one.
LAYOUTS = """VERSION ""
BS_:
BU_: ECU
BO_ 256 P8: 8 ECU
 SG_ CRC : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ COUNTER : 8|4@1+ (1,0) [0|15] "" ECU
 SG_ NIBBLE : 12|4@1+ (1,0) [0|15] "" ECU
 SG_ DATA : 16|48@1+ (1,0) [0|0] "" ECU
BO_ 257 P5: 8 ECU
 SG_ P05_CRC : 0|16@1+ (1,0) [0|65535] "" ECU
 SG_ P05_COUNTER : 16|8@1+ (1,0) [0|255] "" ECU
 SG_ DATA : 24|40@1+ (1,0) [0|0] "" ECU
BO_ 258 P5_LONG: 16 ECU
 SG_ HEAD : 0|64@1+ (1,0) [0|0] "" ECU
 SG_ P05_CRC : 64|16@1+ (1,0) [0|65535] "" ECU
 SG_ P05_COUNTER : 80|8@1+ (1,0) [0|255] "" ECU
BO_ 264 TESLA: 8 ECU
 SG_ T_value : 0|12@1+ (1,0) [0|4095] "" ECU
 SG_ T_Counter : 52|4@1+ (1,0) [0|15] "" ECU
 SG_ T_Checksum : 56|8@1+ (1,0) [0|255] "" ECU
BO_ 265 ALIVE: 2 ECU
 SG_ value : 0|12@1+ (1,0) [0|4095] "" ECU
 SG_ Alive_BZ : 12|4@1+ (1,0) [0|15] "" ECU
BO_ 266 MOTOROLA: 8 ECU
 SG_ M_CRC : 7|16@0+ (1,0) [0|65535] "" ECU
 SG_ M_COUNTER : 19|8@0+ (1,0) [0|255] "" ECU
 SG_ M_value : 27|12@0- (1,0) [0|0] "" ECU
"""


@pytest.fixture(scope="module")
def layouts() -> Any:
    return cantools.database.load_string(LAYOUTS, strict=False)


@pytest.fixture(scope="module")
def mqb() -> Any:
    return cantools.database.load_file(require_shared_file(MQB_DBC), strict=False)


@pytest.fixture(scope="module")
def model3() -> Any:
    return cantools.database.load_file(require_shared_file(MODEL3_DBC), strict=False)


class Databases:
    """The three databases, for hypothesis tests (whose reports show their arguments: this one briefly)."""

    def __init__(self, mqb: Any, model3: Any, layouts: Any) -> None:
        self.mqb, self.model3, self.layouts = mqb, model3, layouts

    def __repr__(self) -> str:
        return "Databases(vw_mqb.dbc, Model3CAN.dbc, LAYOUTS)"


@pytest.fixture(scope="module")
def dbs(mqb: Any, model3: Any, layouts: Any) -> Databases:
    return Databases(mqb, model3, layouts)


def protect_all(protection: E2EProtection, payloads: list[bytes], counter: int = 0) -> list[bytes]:
    protector = protection.protector(counter)
    return [protector.protect(p) for p in payloads]


# -- the CRCs ----------------------------------------------------------------------------------------------


def test_crc_check_values_of_the_crc_catalogue() -> None:
    """The check values (CRC of ASCII "123456789") the CRC catalogue gives for each algorithm."""
    assert crc8_sae_j1850(b"123456789") == 0x4B  # CRC-8/SAE-J1850
    assert crc8_h2f(b"123456789") == 0xDF  # CRC-8/AUTOSAR
    assert crc16_ccitt_false(b"123456789") == 0x29B1  # CRC-16/IBM-3740, alias CCITT-FALSE


@pytest.mark.parametrize(
    ("data", "j1850", "h2f", "ccitt"),
    [  # the example table of AUTOSAR's CRC library specification
        ("00000000", 0x59, 0x12, 0x84C0),
        ("F20183", 0x37, 0xC2, 0xD374),
        ("0FAA0055", 0x79, 0xC6, 0x2023),
        ("00FF5511", 0xB8, 0x77, 0xB8F9),
        ("332255AABBCCDDEEFF", 0xCB, 0x11, 0xF53F),
        ("926B55", 0x8C, 0x33, 0x0745),
        ("FFFFFFFF", 0x74, 0x6C, 0x1D0F),
    ],
)
def test_crc_autosar_examples(data: str, j1850: int, h2f: int, ccitt: int) -> None:
    raw = bytes.fromhex(data)
    assert (crc8_sae_j1850(raw), crc8_h2f(raw), crc16_ccitt_false(raw)) == (j1850, h2f, ccitt)


# -- the profiles against published vectors -----------------------------------------------------------------
# AUTOSAR's E2E protocol examples: all-zero payloads with data id 0x123 (P01), 0x1234 (P05); P02 with an
# all-zero data id list, and with the payload 00..07 and the list 00..0F. The same values are the tests of
# autosar-e2e (a C implementation), against which this module was also compared on 60,000 random frames.


@pytest.mark.parametrize(
    ("mode", "counter0", "counter1"),
    [
        ("both", "cc00000000000000", "9101000000000000"),
        ("alt", "ce00000000000000", "0201000000000000"),
        ("low", "ce00000000000000", "9301000000000000"),
        ("nibble", "2a10000000000000", "7711000000000000"),
    ],
)
def test_p01_vectors(layouts: Any, mode: Any, counter0: str, counter1: str) -> None:
    nibble = "NIBBLE" if mode == "nibble" else None
    config = E2E(message="P8", profile="p01", data_id=[0x123], data_id_mode=mode, nibble_signal=nibble)
    protection = config.bind(layouts.get_message_by_name("P8"))
    frames = protect_all(protection, [bytes(8), bytes(8)])
    assert [f.hex() for f in frames] == [counter0, counter1]
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None, None]


def test_p02_vectors(layouts: Any) -> None:
    message = layouts.get_message_by_name("P8")
    zeros = E2E(message="P8", profile="p02", data_id=[0] * 16).bind(message)
    assert zeros.protector(1).protect(bytes(8)).hex() == "4501000000000000"
    listed = E2E(message="P8", profile="p02", data_id=list(range(16))).bind(message)
    assert listed.protector(1).protect(bytes(range(8))).hex() == "6101020304050607"
    assert listed.protector(2).protect(bytes(range(8))).hex() == "bc02020304050607"
    assert listed.checker().check(bytes.fromhex("bc02020304050607")) is None
    assert listed.checker().check(bytes.fromhex("bc01020304050607")) == "crc"


def test_p05_vectors(layouts: Any) -> None:
    short = E2E(message="P5", profile="p05", data_id=[0x1234]).bind(layouts.get_message_by_name("P5"))
    assert [f.hex() for f in protect_all(short, [bytes(8)] * 2)] == ["1cca000000000000", "cf8d010000000000"]
    # the header at byte 8: the CRC covers the bytes before it too
    long = E2E(message="P5_LONG", profile="p05", data_id=[0x1234]).bind(
        layouts.get_message_by_name("P5_LONG")
    )
    frames = protect_all(long, [bytes(16)] * 2)
    assert [f.hex() for f in frames] == [
        "00000000000000002891000000000000",
        "0000000000000000fbd6010000000000",
    ]
    checker = long.checker()
    assert [checker.check(f) for f in frames] == [None, None]
    assert checker.check(b"\x01" + frames[1][1:]) == "crc"


# Real frames of two MQB messages whose magic byte is known, recorded from cars: from opendbc's checksum tests
# (MIT licence, like the vw_mqb.dbc beside them). They are in counter order, so they pass as a sequence.
MQB_FRAMES = {
    ("LWI_01", 0x86): ["6b00bd0000000000", "ee010a0000000000", "d802a90000000000", "0303bea212000000"],
    ("Airbag_01", 0x40): ["af000080c000203e", "54010080c000201a", "54020080c0006000", "31030080c00060f2"],
}


@pytest.mark.parametrize(("name", "magic"), list(MQB_FRAMES))
def test_vw_mqb_real_frames_pass_and_are_reproduced(mqb: Any, name: str, magic: int) -> None:
    protection = E2E(message=name, profile="vw_mqb", data_id=[magic]).bind(mqb.get_message_by_name(name))
    assert (protection.crc_signal, protection.counter_signal) == ("CHECKSUM", "COUNTER")
    frames = [bytes.fromhex(f) for f in MQB_FRAMES[name, magic]]
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None] * len(frames)
    # the protector makes the same frames from the payloads with CRC and counter wiped
    wiped = [bytes([0, f[1] & 0xF0]) + f[2:] for f in frames]
    assert protect_all(protection, wiped) == frames
    # one magic byte is the list of sixteen equal ones; any other magic fails
    sixteen = E2E(message=name, profile="vw_mqb", data_id=[magic] * 16).bind(mqb.get_message_by_name(name))
    assert sixteen.checker().check(frames[0]) is None
    other = E2E(message=name, profile="vw_mqb", data_id=[magic ^ 1]).bind(mqb.get_message_by_name(name))
    assert other.checker().check(frames[0]) == "crc"


def test_tesla_checksum_is_the_sum_of_id_and_payload_bytes(layouts: Any) -> None:
    protection = E2E(message="TESLA", profile="tesla").bind(layouts.get_message_by_name("TESLA"))
    assert (protection.crc_signal, protection.counter_signal) == ("T_Checksum", "T_Counter")
    frame = protection.protector(5).protect(bytes([0x12, 0x34, 0, 0, 0, 0, 0, 0]))
    # 0x108 -> 0x08 + 0x01; the counter 5 sits in the high nibble of byte 6
    assert frame[6] == 0x50
    assert frame[7] == (0x08 + 0x01 + 0x12 + 0x34 + 0x50) & 0xFF
    assert protection.checker().check(frame) is None
    assert protection.checker().check(frame[:7] + bytes([frame[7] ^ 0x80])) == "crc"


# -- round trips on the real databases ----------------------------------------------------------------------


def mqb_protected(db: Any) -> list[tuple[Any, str | None, str | None]]:
    out = []
    for message in db.messages:
        crc, counter = find_e2e_signals(message)
        if crc is not None or counter is not None:
            out.append((message, crc, counter))
    return out


def test_find_e2e_signals_on_vw_mqb(mqb: Any) -> None:
    found = {m.name: (crc, counter) for m, crc, counter in mqb_protected(mqb)}
    assert len(found) == 48
    assert found["ESP_21"] == ("CHECKSUM", "COUNTER")
    assert found["EPB_01"] == ("EPB_01_CRC", "EPB_01_BZ")
    assert found["Kombi_01"] == (None, "Kombi_01_BZ")  # an alive counter alone
    assert found["Getriebe_11"] == ("CHECKSUM", None)  # its counter is COUNTER_DISABLED
    assert sum(crc is not None and counter is not None for crc, counter in found.values()) == 43


#: Messages of vw_mqb.dbc that cantools cannot decode at all (overlapping signals): E2E works on their bytes.
UNDECODABLE = {"PLA_01"}


def test_round_trip_every_vw_mqb_message_with_crc_and_counter(mqb: Any) -> None:
    rng = random.Random(12)
    tried = 0
    for message, crc, counter in mqb_protected(mqb):
        if crc is None or counter is None:
            continue
        magic = [rng.randrange(256) for _ in range(16)]
        protection = E2E(message=message.name, profile="vw_mqb", data_id=magic).bind(message)
        payloads = [rng.randbytes(message.length) for _ in range(40)]  # past two counter wraps
        frames = protect_all(protection, payloads, counter=rng.randrange(16))
        checker = protection.checker()
        assert [checker.check(f) for f in frames] == [None] * 40, message.name
        for frame in frames[:3] if message.name not in UNDECODABLE else ():
            decoded = message.decode(frame, decode_choices=False, scaling=False)
            assert decoded[crc] == protection.expected_crc(frame) == frame[0]
            assert decoded[counter] == frame[1] & 0x0F
        # every single-bit error outside the counter is caught by the CRC
        fresh = protection.checker()
        counter_bits = _Field(message.get_signal_by_name(counter)).bits()
        for bit in range(message.length * 8):
            if bit not in counter_bits:
                damaged = bytearray(frames[0])
                damaged[bit // 8] ^= 1 << (bit % 8)
                assert fresh.check(bytes(damaged)) == "crc", (message.name, bit)
        tried += 1
    assert tried == 43


def test_round_trip_vw_mqb_counter_only_messages(mqb: Any) -> None:
    rng = random.Random(5)
    names = []
    for message, crc, counter in mqb_protected(mqb):
        if crc is None and counter is not None:
            protection = E2E(message=message.name, profile="counter").bind(message)
            assert protection.counter_modulo == 16
            frames = protect_all(protection, [rng.randbytes(message.length) for _ in range(20)])
            checker = protection.checker()
            assert [checker.check(f) for f in frames] == [None] * 20
            assert checker.check(frames[-1]) == "counter_frozen"
            names.append(message.name)
    assert sorted(names) == ["Anhaenger_01", "Kombi_01", "Licht_hinten_01", "Waehlhebel_03"]


def test_a_counter_that_only_enters_the_crc(mqb: Any) -> None:
    """Getriebe_11's counter is named COUNTER_DISABLED (opendbc does not check its steps): named, with
    check_counter = false, it picks the magic byte and nothing else."""
    message = mqb.get_message_by_name("Getriebe_11")
    with pytest.raises(E2EConfigError, match="no signal is named like an alive counter; name one with"):
        E2E(message="Getriebe_11", profile="vw_mqb", data_id=[7]).bind(message)
    config = E2E(
        message="Getriebe_11",
        profile="vw_mqb",
        data_id=list(range(16)),
        counter_signal="COUNTER_DISABLED",
        check_counter=False,
    )
    protection = config.bind(message)
    frame = protection.protector(3).protect(bytes(8))
    checker = protection.checker()
    assert [checker.check(frame) for _ in range(3)] == [None] * 3  # repeated, not checked
    assert checker.check(bytes([frame[0], (frame[1] & 0xF0) | 4]) + frame[2:]) == "crc"


def test_round_trip_every_model3_message_with_checksum_and_counter(model3: Any) -> None:
    rng = random.Random(3)
    tried = []
    for message, crc, counter in mqb_protected(model3):
        if crc is None or counter is None or not crc.endswith("Checksum"):
            continue
        protection = E2E(message=message.name, profile="tesla").bind(message)
        assert protection.counter_signal == counter
        frames = protect_all(protection, [rng.randbytes(message.length) for _ in range(20)])
        checker = protection.checker()
        assert [checker.check(f) for f in frames] == [None] * 20, message.name
        if not message.is_multiplexed():  # a random multiplexer value may select nothing
            decoded = message.decode(frames[7], decode_choices=False, scaling=False)
            assert decoded[counter] == 7 % protection.counter_modulo
        tried.append(message.name)
    assert len(tried) == 25


# -- the counter checks ----------------------------------------------------------------------------------


def counter_frames(layouts: Any, counters: list[int], **config: Any) -> tuple[E2EProtection, list[bytes]]:
    protection = E2E(message="P8", profile="p02", data_id=list(range(16)), **config).bind(
        layouts.get_message_by_name("P8")
    )
    return protection, [protection.protector(c).protect(bytes(8)) for c in counters]


def test_counter_steps(layouts: Any) -> None:
    protection, frames = counter_frames(layouts, [14, 15, 0, 2, 2, 2, 5, 6, 10, 11])
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [
        None,  # the first is taken as it is
        None,
        None,  # 15 -> 0 wraps
        None,  # one lost: still in step (max_delta_counter = 2)
        "counter_frozen",
        "counter_frozen",  # every repeat
        "counter_jumped",  # 2 -> 5
        None,  # the jumped counter is the new reference
        "counter_jumped",
        None,
    ]


def test_max_delta_counter(layouts: Any) -> None:
    protection, frames = counter_frames(layouts, [0, 2, 3, 7, 8], max_delta_counter=1)
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None, "counter_jumped", None, "counter_jumped", None]
    protection, frames = counter_frames(layouts, [0, 5, 15, 0], max_delta_counter=15 - 1)
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None, None, None, None]


def test_a_bad_crc_leaves_the_counter_state_alone(layouts: Any) -> None:
    protection, frames = counter_frames(layouts, [3, 4, 5])
    checker = protection.checker()
    corrupt = bytes([frames[1][0] ^ 0xFF]) + frames[1][1:]
    assert [checker.check(frames[0]), checker.check(corrupt), checker.check(frames[1])] == [None, "crc", None]


def test_reset_forgets_the_last_counter(layouts: Any) -> None:
    protection, frames = counter_frames(layouts, [3, 9])
    checker = protection.checker()
    assert checker.check(frames[0]) is None
    checker.reset()
    assert checker.check(frames[1]) is None
    assert checker.check(frames[1]) == "counter_frozen"


def test_checkers_keep_their_own_state(layouts: Any) -> None:
    protection, frames = counter_frames(layouts, [1, 1])
    a, b = protection.checker(), protection.checker()
    assert [a.check(frames[0]), b.check(frames[0]), a.check(frames[1])] == [None, None, "counter_frozen"]


def test_p01_counts_to_14_and_never_sends_15(layouts: Any) -> None:
    protection = E2E(message="P8", profile="p01", data_id=[0x0F0F]).bind(layouts.get_message_by_name("P8"))
    assert protection.counter_modulo == 15
    frames = protect_all(protection, [bytes(8)] * 17, counter=13)
    assert [f[1] & 0xF for f in frames[:4]] == [13, 14, 0, 1]
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None] * 17
    fifteen = bytearray(frames[0])
    fifteen[1] = 0x0F
    fifteen[0] = protection.expected_crc(bytes(fifteen)) or 0
    assert protection.checker().check(bytes(fifteen)) == "counter_invalid"


def test_p01_nibble_mode_checks_the_nibble(layouts: Any) -> None:
    config = E2E(message="P8", profile="p01", data_id=[0x0ABC], data_id_mode="nibble", nibble_signal="NIBBLE")
    protection = config.bind(layouts.get_message_by_name("P8"))
    frame = protection.protector().protect(bytes(8))
    assert frame[1] >> 4 == 0xA
    wrong = bytearray(frame)
    wrong[1] = (wrong[1] & 0x0F) | 0xB0
    wrong[0] = protection.expected_crc(bytes(wrong)) or 0  # a CRC that fits the damaged payload
    assert protection.checker().check(frame) is None
    assert protection.checker().check(bytes(wrong)) == "crc"


# -- the protector ----------------------------------------------------------------------------------------


def test_protector_overrides_counter_and_crc_and_advances(layouts: Any) -> None:
    protection = E2E(message="P5", profile="p05", data_id=[1]).bind(layouts.get_message_by_name("P5"))
    protector = protection.protector(254)
    frames = [protector.protect(b"\xff" * 8) for _ in range(3)]
    assert [f[2] for f in frames] == [254, 255, 0]
    assert protector.counter == 1
    assert all(f[3:] == b"\xff" * 5 for f in frames)
    assert [protection.checker().check(f) for f in frames] == [None] * 3


def test_protector_refuses_a_short_payload_and_a_bad_first_counter(layouts: Any) -> None:
    protection = E2E(message="P8", profile="p01", data_id=[1]).bind(layouts.get_message_by_name("P8"))
    with pytest.raises(ValueError, match="P8: a payload of 7 bytes is too short for the message's 8 bytes"):
        protection.protector().protect(bytes(7))
    with pytest.raises(ValueError, match=r"P8: the first counter must be 0..14, not 15"):
        protection.protector(15)
    with pytest.raises(TypeError, match="must be an integer"):
        protection.protector(True)


def test_big_endian_fields(layouts: Any) -> None:
    message = layouts.get_message_by_name("MOTOROLA")
    config = E2E(
        message="MOTOROLA", profile="p05", data_id=[0x42], crc_signal="M_CRC", counter_signal="M_COUNTER"
    )
    protection = config.bind(message)
    frames = protect_all(protection, [bytes(8)] * 3, counter=7)
    for i, frame in enumerate(frames):
        decoded = message.decode(frame, decode_choices=False, scaling=False)
        assert decoded["M_COUNTER"] == 7 + i
        assert decoded["M_CRC"] == protection.expected_crc(frame)
    checker = protection.checker()
    assert [checker.check(f) for f in frames] == [None] * 3


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(min_size=16, max_size=16))
def test_fields_read_and_write_as_cantools_does(dbs: Databases, payload: bytes) -> None:
    for db in (dbs.mqb, dbs.model3, dbs.layouts):
        for message in db.messages:
            if message.name in UNDECODABLE:
                continue
            data = payload[: message.length]
            try:
                raw = message.decode(data, decode_choices=False, scaling=False, allow_truncated=True)
            except cantools.database.DecodeError:  # a multiplexer value that selects nothing
                continue
            for signal in message.signals:
                if signal.name not in raw or signal.is_float:
                    continue
                field = _Field(signal)
                value = raw[signal.name] % (1 << signal.length)  # cantools gives signed values signed
                assert field.get(data) == value, (message.name, signal.name)
                if signal.is_multiplexer:  # another value may select nothing
                    continue
                buf = bytearray(data)
                field.put(buf, value ^ 1)
                again = message.decode(bytes(buf), decode_choices=False, scaling=False, allow_truncated=True)
                assert again[signal.name] % (1 << signal.length) == value ^ 1, (message.name, signal.name)


# -- hostile payloads ------------------------------------------------------------------------------------


def every_protection(mqb: Any, model3: Any, layouts: Any) -> list[E2EProtection]:
    out = []
    for message, crc, counter in mqb_protected(mqb):
        if crc is not None and counter is not None:
            out.append(
                E2E(message=message.name, profile="vw_mqb", data_id=[message.frame_id & 0xFF]).bind(message)
            )
        elif counter is not None:
            out.append(E2E(message=message.name, profile="counter").bind(message))
    out.append(
        E2E(message="ID101RCM_inertial1", profile="tesla").bind(
            model3.get_message_by_name("ID101RCM_inertial1")
        )
    )
    p8 = layouts.get_message_by_name("P8")
    for mode in ("both", "alt", "low"):
        out.append(E2E(message="P8", profile="p01", data_id=[0xBEEF], data_id_mode=mode).bind(p8))
    out.append(
        E2E(message="P8", profile="p01", data_id=[0xEEF], data_id_mode="nibble", nibble_signal="NIBBLE").bind(
            p8
        )
    )
    out.append(
        E2E(message="P5_LONG", profile="p05", data_id=[9]).bind(layouts.get_message_by_name("P5_LONG"))
    )
    out.append(
        E2E(
            message="MOTOROLA", profile="p05", data_id=[9], crc_signal="M_CRC", counter_signal="M_COUNTER"
        ).bind(layouts.get_message_by_name("MOTOROLA"))
    )
    return out


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(any_can_payloads(), min_size=1, max_size=8))
def test_random_payloads_never_raise(dbs: Databases, payloads: list[bytes]) -> None:
    for protection in every_protection(dbs.mqb, dbs.model3, dbs.layouts):
        checker = protection.checker()
        for payload in payloads:
            for data in (payload, bytearray(payload), memoryview(payload)):
                reason = checker.check(data)
                assert reason is None or reason in E2E_REASONS
                if len(data) < protection.length:
                    assert reason == "length"


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(min_value=0, max_value=15), st.booleans()), min_size=1, max_size=40),
    max_delta=st.integers(min_value=1, max_value=15),
)
def test_counter_verdicts_follow_the_rules(
    dbs: Databases, steps: list[tuple[int, bool]], max_delta: int
) -> None:
    """Random counters, some frames damaged: each verdict is what the rules say, and a damaged frame
    changes nothing for the next one."""
    protection = E2E(message="P8", profile="p02", data_id=list(range(16)), max_delta_counter=max_delta).bind(
        dbs.layouts.get_message_by_name("P8")
    )
    checker = protection.checker()
    last: int | None = None
    for counter, damaged in steps:
        frame = protection.protector(counter).protect(bytes(8))
        if damaged:
            assert checker.check(bytes([frame[0] ^ 0x5A]) + frame[1:]) == "crc"
            continue
        expected = None
        if last is not None:
            delta = (counter - last) % 16
            expected = "counter_frozen" if delta == 0 else "counter_jumped" if delta > max_delta else None
        assert checker.check(frame) == expected
        last = counter


def test_a_huge_payload_costs_no_more_than_the_message(layouts: Any) -> None:
    protection = E2E(message="P8", profile="p02", data_id=[1] * 16).bind(layouts.get_message_by_name("P8"))
    huge = protection.protector().protect(bytes(8)) + bytes(16 * 1024 * 1024)
    checker = protection.checker()
    start = time.perf_counter()
    assert [checker.check(huge) for _ in range(1000)] == [None] + ["counter_frozen"] * 999
    assert time.perf_counter() - start < 1.0  # the CRC covers the message's 8 bytes, not the 16 MiB


def test_e2e_reasons_and_profiles() -> None:
    assert E2E_REASONS == ("length", "crc", "counter_invalid", "counter_frozen", "counter_jumped")
    assert E2E_PROFILES == ("p01", "p02", "vw_mqb", "p05", "tesla", "counter")


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"profile": "p04"}, "must be one of 'p01', 'p02', 'vw_mqb', 'p05', 'tesla', 'counter', not 'p04'"),
        ({"profile": "p01", "data_id": [1, 2]}, r"profile 'p01' takes 1 value \(the 16-bit data id\), got 2"),
        (
            {"profile": "p01", "data_id": 0x123},
            r"must be an array of integers \(\[0x123\] for one\), not 291",
        ),
        ({"profile": "vw_mqb", "data_id": ["x"]}, r"\[0\] must be an integer, not 'x'"),
        ({"profile": "p01", "data_id": [0x10000]}, r"\[0\] 0x10000 is out of range 0..0xffff"),
        ({"profile": "p02", "data_id": [1, 2]}, r"takes 16 values \(the data id list, one byte per counter"),
        ({"profile": "p02", "data_id": [256] * 16}, r"\[0\] 0x100 is out of range 0..0xff"),
        ({"profile": "vw_mqb", "data_id": [1, 2]}, r"takes 1 or 16 values \(the message's magic byte"),
        ({"profile": "vw_mqb", "data_id": [True]}, r"\[0\] must be an integer, not True"),
        ({"profile": "tesla", "data_id": [1]}, "profile 'tesla' takes no data id"),
        ({"profile": "p02", "data_id": [0] * 16, "data_id_mode": "alt"}, "is for profile 'p01' only"),
        ({"profile": "p01", "data_id": [1], "data_id_mode": "nibble"}, "'nibble' needs the signal"),
        ({"profile": "p01", "data_id": [0x1000], "data_id_mode": "nibble", "nibble_signal": "N"}, "0..0xfff"),
        ({"profile": "p01", "data_id": [1], "nibble_signal": "N"}, "is for data_id_mode 'nibble' only"),
        ({"profile": "counter", "crc_signal": "X"}, "profile 'counter' has no CRC"),
        ({"profile": "counter", "max_delta_counter": 0}, "must be an integer of at least 1, not 0"),
        ({"profile": "counter", "counter_signal": ""}, "must be a signal name of the message"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        E2E(message="M", **kwargs)


def test_an_e2e_table_from_toml() -> None:
    text = """
    [[e2e]]
    message = "ESP_21"
    profile = "vw_mqb"
    data_id = [0xB4, 0xEF, 0xF8, 0x49, 0x1E, 0xE5, 0xC2, 0xC0, 0x97, 0x19, 0x3C, 0xC9, 0xF1, 0x98, 0xD6, 0x61]

    [[e2e]]
    message = "Kombi_01"
    profile = "counter"
    max_delta_counter = 1

    [[e2e]]
    message = "EPB_01"
    profile = "p02"
    data_id = [1, 2]
    crc_signal = 5
    """
    tables = tomllib.loads(text)["e2e"]
    built = [structure(t, E2E) for t in tables[:2]]
    assert built[0].data_id[:2] == (0xB4, 0xEF)
    assert built[1] == E2E(message="Kombi_01", profile="counter", max_delta_counter=1)
    with pytest.raises(StructureError) as info:
        structure(tables, tuple[E2E, ...])
    assert sorted(str(p) for p in info.value.problems) == [
        "[2].crc_signal: expected a string, got the integer 5",
        "[2].data_id: profile 'p02' takes 16 values (the data id list, one byte per counter value), got 2",
    ]


P02 = {"profile": "p02", "data_id": [0] * 16}


@pytest.mark.parametrize(
    ("message", "config", "error"),
    [
        ("P8", {**P02, "crc_signal": "CRK"}, "crc_signal: P8 has no signal 'CRK'; did you mean 'CRC'?"),
        ("P8", {"profile": "p05", "data_id": [1]}, "crc_signal: P8.CRC has 8 bits; profile 'p05' needs 16"),
        ("P8", {**P02, "crc_signal": "DATA"}, "crc_signal: P8.DATA has 48 bits; profile 'p02' needs 8"),
        ("P8", {**P02, "counter_signal": "CRC", "crc_signal": "NIBBLE"}, "counter_signal: P8.CRC has 8 bits"),
        (
            "P8",
            {"profile": "counter", "counter_signal": "COUNTER", "max_delta_counter": 16},
            "max_delta_counter: 16 is not less than the 16 counter values",
        ),
        (
            "P8",
            {"profile": "p01", "data_id": [1], "data_id_mode": "nibble", "nibble_signal": "COUNTER"},
            "nibble_signal: P8.COUNTER overlaps COUNTER",
        ),
        (
            "P8",
            {"profile": "p01", "data_id": [1], "data_id_mode": "nibble", "nibble_signal": "DATA"},
            "48 bits, not 4",
        ),
        ("ALIVE", P02, "crc_signal: ALIVE: no signal is named like a CRC; name one with crc_signal"),
        (
            "P8",
            {"profile": "p01"},
            "data_id: P8: profile 'p01' needs the 16-bit data id; the database gives none",
        ),
        (
            "ALIVE",
            {**P02, "crc_signal": "value"},
            "crc_signal: ALIVE.value has 12 bits; profile 'p02' needs 8",
        ),
        ("P5", {"profile": "counter", "counter_signal": "DATA"}, "P5.DATA has 40 bits, more than 16"),
    ],
)
def test_bind_reports_what_does_not_fit(
    layouts: Any, message: str, config: dict[str, Any], error: str
) -> None:
    with pytest.raises(E2EConfigError, match=re.escape(error)):
        E2E(message=message, **config).bind(layouts.get_message_by_name(message))


def test_bind_refuses_fields_off_whole_bytes_multiplexed_and_ambiguous() -> None:
    db: Any = cantools.database.load_string(
        """VERSION ""
BS_:
BU_: ECU
BO_ 300 SKEW: 8 ECU
 SG_ SKEW_CRC : 4|8@1+ (1,0) [0|255] "" ECU
 SG_ SKEW_BZ : 12|4@1+ (1,0) [0|15] "" ECU
BO_ 301 MUX: 8 ECU
 SG_ MUX_SEL M : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ MUX_CRC m1 : 8|8@1+ (1,0) [0|255] "" ECU
 SG_ MUX_BZ : 16|4@1+ (1,0) [0|15] "" ECU
BO_ 302 TWO: 8 ECU
 SG_ A_CRC : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ B_CRC : 8|8@1+ (1,0) [0|255] "" ECU
 SG_ A_Counter : 16|4@1+ (1,0) [0|15] "" ECU
 SG_ C_Counter : 20|4@1+ (1,0) [0|15] "" ECU
BO_ 303 SHORT: 1 ECU
 SG_ S_CRC : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ S_BZ : 8|4@1+ (1,0) [0|15] "" ECU
""",
        strict=False,
    )
    with pytest.raises(E2EConfigError, match=r"SKEW\.SKEW_CRC does not lie on whole bytes"):
        E2E(message="SKEW", profile="vw_mqb", data_id=[1]).bind(db.get_message_by_name("SKEW"))
    mux = db.get_message_by_name("MUX")
    assert find_e2e_signals(mux) == (None, "MUX_BZ")
    with pytest.raises(E2EConfigError, match=r"MUX\.MUX_CRC is multiplexed; E2E fields cannot be"):
        E2E(message="MUX", profile="vw_mqb", data_id=[1], crc_signal="MUX_CRC").bind(mux)
    two = db.get_message_by_name("TWO")
    assert find_e2e_signals(two) == (None, None)
    with pytest.raises(E2EConfigError) as info:
        E2E(message="TWO", profile="vw_mqb", data_id=[1]).bind(two)
    assert [p[0] for p in info.value.problems] == [("crc_signal",), ("counter_signal",)]
    assert "several signals look like a CRC (A_CRC, B_CRC); name one with crc_signal" in str(info.value)
    # naming the CRC pairs the counter with the same prefix
    assert E2E(
        message="TWO", profile="vw_mqb", data_id=[1], crc_signal="A_CRC", counter_signal="A_Counter"
    ).bind(two)
    with pytest.raises(E2EConfigError, match=r"SHORT\.S_BZ ends beyond the message's 1 bytes"):
        E2E(message="SHORT", profile="vw_mqb", data_id=[1]).bind(db.get_message_by_name("SHORT"))


def arxml_like_message(category: str, data_ids: list[int], *, sqc_start: int = 8, crc_length: int = 8) -> Any:
    """A message as cantools loads it from an ARXML file with end-to-end protection properties."""
    e2e = AutosarEnd2EndProperties()
    e2e.category, e2e.data_ids, e2e.payload_length = category, data_ids, 8
    autosar = AutosarMessageSpecifics()
    autosar.e2e = e2e
    signals = [
        Signal("Pdu_CRC", start=0, length=crc_length),
        Signal("Pdu_SQC", start=sqc_start, length=8 if crc_length == 16 else 4),
        Signal("Pdu_Data", start=32, length=32),
    ]
    return Message(frame_id=0x42, name="Pdu", length=8, signals=signals, autosar_specifics=autosar)


def test_data_ids_default_to_the_databases() -> None:
    message = arxml_like_message("Profile2", list(range(123, 139)))
    protection = E2E(message="Pdu", profile="p02").bind(message)
    assert protection.data_id == tuple(range(123, 139))
    assert (protection.crc_signal, protection.counter_signal) == ("Pdu_CRC", "Pdu_SQC")
    # the config's own data id wins
    assert E2E(message="Pdu", profile="p02", data_id=[7] * 16).bind(message).data_id == (7,) * 16
    with pytest.raises(
        E2EConfigError, match=re.escape("data_id: Pdu: profile 'p05' takes 1 value (the 16-bit")
    ):
        E2E(message="Pdu", profile="p05").bind(
            arxml_like_message("Profile5", [1, 2], sqc_start=16, crc_length=16)
        )


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=8, max_size=8), ids=st.lists(st.integers(0, 255), min_size=16, max_size=16))
def test_profiles_2_and_5_agree_with_cantools_own_functions(payload: bytes, ids: list[int]) -> None:
    """cantools has P2 and P5 CRCs too (fixed layouts, ~6 us a frame: too slow for the hot path): the
    same CRCs as here."""
    p2 = arxml_like_message("Profile2", ids)
    assert E2E(message="Pdu", profile="p02").bind(p2).expected_crc(payload) == compute_profile2_crc(
        payload, p2
    )
    p5 = arxml_like_message("Profile5", [ids[0] << 8 | ids[1]], sqc_start=16, crc_length=16)
    assert E2E(message="Pdu", profile="p05").bind(p5).expected_crc(payload) == compute_profile5_crc(
        payload, p5
    )


def test_find_e2e_signals_pairs_counters_with_their_checksum(model3: Any) -> None:
    found = {m.name: (crc, counter) for m, crc, counter in mqb_protected(model3)}
    assert found["ID2B9DAS_control"] == ("DAS_controlChecksum", "DAS_controlCounter")
    assert found["ID249SCCMLeftStalk"] == ("SCCM_leftStalkCrc", "SCCM_leftStalkCounter")
    assert found["ID239DAS_lanes"] == (None, "DAS_lanesCounter")


def test_bind_e2e_lists_every_problem_at_its_index(mqb: Any) -> None:
    configs = [
        E2E(message="ESP_21", profile="vw_mqb", data_id=[1]),
        E2E(message="ESP_2l", profile="vw_mqb", data_id=[1]),
        E2E(message="ESP_21", profile="vw_mqb", data_id=[2]),
        E2E(message="Kombi_01", profile="vw_mqb", data_id=[3]),
        E2E(message="LWI_01", profile="p05", data_id=[3]),
    ]
    with pytest.raises(E2EConfigError) as info:
        bind_e2e(configs, mqb)
    assert [path for path, _ in info.value.problems] == [
        (1, "message"),
        (2, "message"),
        (3, "crc_signal"),
        (4, "crc_signal"),
        (4, "counter_signal"),
    ]
    text = str(info.value)
    assert "[1].message: no message 'ESP_2l' in the database; did you mean 'ESP_21'?" in text
    assert "[2].message: a second E2E config for ESP_21" in text
    assert "[4].counter_signal: LWI_01.COUNTER has 4 bits; profile 'p05' needs 8" in text
    bound = bind_e2e(configs[:1], mqb)
    assert list(bound) == ["ESP_21"]
    assert (
        repr(bound["ESP_21"])
        == "E2EProtection('ESP_21', profile='vw_mqb', crc='CHECKSUM', counter='COUNTER')"
    )
