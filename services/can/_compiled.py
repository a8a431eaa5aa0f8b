"""One decoder per CAN message, compiled once when the codec is built: the receive path's hot loop.

`compile_decoder` writes the source of a function that takes a frame's payload and returns what
`CanCodec.decode` makes of it, without cantools on the way: the payload read once as an integer
(``int.from_bytes``, little-endian for Intel signals, big-endian for Motorola ones), each signal's raw value
cut out of it with a shift and a mask (sign-extended where signed, its bits read as an IEEE number where
floating point), then checked and scaled by the very steps of the message's plan (see ``_codec._Plan``),
written out per signal instead of looped over. The source holds only names this module makes (``r3``,
``S3``) and integers it computed; every number taken from the database (scales, offsets, bounds, the raw
values that are not available) is bound as a name in the function's namespace, never written as text.

Messages whose layout it does not cover (a multiplexer inside a page, say) get None: the codec keeps its
general path for them. The codec checks each compiled decoder against that path on sample payloads before
using it (see ``_codec._Route.compile``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from bus import NotAvailable

#: How the bits of a floating-point signal of each length read as a number (big-endian bit order, as
#: cantools' layouts read them).
_FLOATS: Final = {16: struct.Struct(">e"), 32: struct.Struct(">f"), 64: struct.Struct(">d")}

#: A compiled decoder: payload and the codec's counters [out of range, not available, unknown
#: multiplexer] to the decode result (see `compile_decoder`).
Decoder = Callable[[Any, list[int]], Any]


def _big_start(start: int) -> int:
    """A Motorola signal's most significant bit, counted from the first byte's top bit (network order)."""
    return 8 * (start // 8) + (7 - start % 8)


def _extract(signal: Any, length: int, i: int) -> tuple[str, str] | None:
    """The expression of a signal's raw value (``v`` the payload as a little-endian integer, ``b`` as a
    big-endian one) and which of them it reads; None for a signal that does not fit the payload."""
    bits = int(signal.length)
    if bits <= 0:
        return None
    if signal.byte_order == "big_endian":
        word = "b"
        shift = 8 * length - (_big_start(int(signal.start)) + bits)
    else:
        word = "v"
        shift = int(signal.start)
    if shift < 0 or shift + bits > 8 * length:
        return None
    mask = (1 << bits) - 1
    if shift // 8 == (shift + bits - 1) // 8:  # inside one byte: that byte alone, a small int
        byte = shift // 8 if word == "v" else length - 1 - shift // 8
        word = "data"
        field = f"data[{byte}]"
        if shift % 8:
            field = f"({field} >> {shift % 8})"
        if shift % 8 + bits < 8:
            field = f"{field} & {mask}"
    else:
        field = f"({word} >> {shift}) & {mask}" if shift else f"{word} & {mask}"
    if signal.is_float:
        if bits not in _FLOATS:
            return None
        return f"F{i}(({field}).to_bytes({bits // 8}, 'big'))[0]", word
    if signal.is_signed:
        sign = 1 << (bits - 1)
        return f"((({field}) ^ {sign}) - {sign})", word
    return field, word


def _steps(plan: Any) -> dict[int, tuple[str, tuple[Any, ...]]]:
    """The plan's step of each signal that has one, by field index: (kind, the step's numbers)."""
    steps: dict[int, tuple[str, tuple[Any, ...]]] = {}
    for kind in ("scaled", "guarded", "checked", "clamped", "floats"):
        for step in getattr(plan, kind):
            steps[step[0]] = (kind, tuple(step[1:]))
    return steps


def _unbounded(lo: float, hi: float) -> bool:
    return lo == -float("inf") and hi == float("inf")


def _work(i: int, kind: str, numbers: tuple[Any, ...], ns: dict[str, Any], pad: str) -> list[str]:
    """The lines that check and scale raw value ``r{i}`` as its plan step says (see ``CanCodec.decode``'s
    general path, which does the same per kind)."""
    r = f"r{i}"
    lines: list[str] = []
    if kind == "scaled":
        scale, offset = numbers
        ns[f"S{i}"], ns[f"O{i}"] = scale, offset
        return [f"{pad}{r} = {r} * S{i} + O{i}"]
    if kind == "floats":
        scale, offset, vmin, vmax = numbers
        ns[f"S{i}"], ns[f"O{i}"], ns[f"A{i}"], ns[f"B{i}"] = scale, offset, vmin, vmax
        return [
            f"{pad}if {r} != {r}:",
            f"{pad}    {r} = NA",
            f"{pad}    stats[1] += 1",
            f"{pad}else:",
            f"{pad}    {r} = {r} * S{i} + O{i}",
            f"{pad}    if not A{i} <= {r} <= B{i}:",
            f"{pad}        {r} = OOR",
            f"{pad}        stats[0] += 1",
        ]
    if kind == "guarded":
        lo, hi, na = numbers
        scale = offset = vmin = vmax = None
    elif kind == "checked":
        scale, offset, lo, hi, na = numbers
        vmin = vmax = None
    else:  # clamped
        scale, offset, lo, hi, vmin, vmax, na = numbers
    ns[f"L{i}"], ns[f"H{i}"] = lo, hi
    ranged = not _unbounded(lo, hi)
    opener = "if"
    if na:
        ns[f"N{i}"] = na
        lines += [f"{pad}if {r} in N{i}:", f"{pad}    {r} = NA", f"{pad}    stats[1] += 1"]
        opener = "elif"
    if kind == "guarded":
        if ranged:
            lines += [
                f"{pad}{opener} not L{i} <= {r} <= H{i}:",
                f"{pad}    {r} = OOR",
                f"{pad}    stats[0] += 1",
            ]
        return lines
    ns[f"S{i}"], ns[f"O{i}"] = scale, offset
    if ranged:
        lines.append(f"{pad}{opener} L{i} <= {r} <= H{i}:")
    elif na:
        lines.append(f"{pad}else:")
    inner = pad + "    " if ranged or na else pad
    if kind == "checked":
        lines.append(f"{inner}{r} = {r} * S{i} + O{i}")
    else:
        ns[f"A{i}"], ns[f"B{i}"] = vmin, vmax
        lines += [
            f"{inner}{r} = {r} * S{i} + O{i}",
            # the scaled value of a raw value in range is in range, never a rounding error outside
            f"{inner}{r} = B{i} if {r} > B{i} else A{i} if {r} < A{i} else {r}",
        ]
    if ranged:
        lines += [f"{pad}else:", f"{pad}    {r} = OOR", f"{pad}    stats[0] += 1"]
    return lines


def _slots(record: Any, count: int) -> list[Callable[[Any, Any], None]] | None:
    """The setters of a record class's fields, in order, if its ``__init__`` does nothing but set them
    (an attrs class with slots, ``count`` fields all set by ``__init__``, no validator, converter or
    ``__attrs_pre_init__`` / ``__attrs_post_init__``); else None."""
    if not attrs.has(record) or "__slots__" not in record.__dict__:
        return None
    fields = attrs.fields(record)
    if (
        len(fields) != count
        or hasattr(record, "__attrs_pre_init__")
        or hasattr(record, "__attrs_post_init__")
    ):
        return None
    setters = []
    for field in fields:
        slot = record.__dict__.get(field.name)
        if field.validator is not None or field.converter is not None or not field.init or slot is None:
            return None
        setters.append(slot.__set__)
    return setters


def compile_decoder(
    message: Any,
    plan: Any,
    *,
    pages: tuple[str, Mapping[int, Sequence[str]]] | None,
    record: Callable[..., Any] | None,
    topic: Any,
    name: str,
    plain_record: bool = False,
) -> Decoder | None:
    """A function ``decode(data, stats)`` for frames of ``message`` (a cantools message) whose payload has
    the database's length: the signals' values in field order as a list, with ``plan``'s steps done
    (``plan`` a ``_codec._Plan`` of the message). With a ``record`` class and a ``topic``, it returns
    ``[(topic, record(r0, r1, ...))]`` instead: all that `CanCodec.decode` returns for a message that has
    no mapped signals. ``plain_record`` says the record class is one the codec made (a frozen slotted
    attrs class whose ``__init__`` only sets its fields): the decoder then sets the fields itself, through
    the slots (what ``__init__`` does, with less work per field).

    ``pages`` is (multiplexer name, signal names by multiplexer value) for a message with one multiplexer
    whose pages hold no multiplexer: a signal of no page of the frame's multiplexer value is None, and a
    value of no page counts in ``stats[2]``. ``stats[0]`` and ``stats[1]`` count values out of range and
    not available. ``name`` names the message in tracebacks (the code's file name).

    None where the message's layout is not one this covers: the codec's general path decodes it.
    """
    length = int(message.length)
    signals = list(message.signals)
    ns: dict[str, Any] = {"NA": NotAvailable("not_available"), "OOR": NotAvailable("out_of_range")}
    steps = _steps(plan)
    expressions: list[tuple[str, str]] = []
    for i, signal in enumerate(signals):
        expression = _extract(signal, length, i)
        if expression is None:
            return None
        if signal.is_float:
            ns[f"F{i}"] = _FLOATS[int(signal.length)].unpack
        expressions.append(expression)
    index = {s.name: i for i, s in enumerate(signals)}
    mux: int | None = None
    page_of: dict[int, frozenset[int]] = {}
    if pages is not None:
        mux_name, branches = pages
        mux = index[mux_name]
        for value, members in branches.items():
            for member in members:
                j = index[member]
                page_of[j] = page_of.get(j, frozenset()) | {value}
        ns["KNOWN"] = frozenset(branches)
    elif any(s.multiplexer_signal is not None or s.is_multiplexer for s in signals):
        return None
    body: list[str] = []
    words = {word for _, word in expressions}
    if "v" in words:
        body.append("    v = from_bytes(data, 'little')")
    if "b" in words:
        body.append("    b = from_bytes(data, 'big')")
    order = list(range(len(signals)))
    if mux is not None:  # the multiplexer first: the other signals depend on it
        order.remove(mux)
        order.insert(0, mux)
        body.append(f"    m = {expressions[mux][0]}")
        body.append("    if m not in KNOWN:")
        body.append("        stats[2] += 1")
    for i in order:
        expression = expressions[i]
        step = steps.get(i)
        if i in page_of:
            ns[f"P{i}"] = page_of[i]
            body.append(f"    if m in P{i}:")
            body.append(f"        r{i} = {expression[0]}")
            if step is not None:
                body += _work(i, *step, ns, "        ")
            body.append("    else:")
            body.append(f"        r{i} = None")
            continue
        if mux is not None and signals[i].multiplexer_signal is not None:
            body.append(f"    r{i} = None")  # on no page the database knows
            continue
        body.append(f"    r{i} = m" if i == mux else f"    r{i} = {expression[0]}")
        if step is not None:
            body += _work(i, *step, ns, "    ")
    fields = ", ".join(f"r{i}" for i in range(len(signals)))
    if record is not None and topic is not None:
        ns["RECORD"], ns["TOPIC"] = record, topic
        slots = _slots(record, len(signals)) if plain_record else None
        if slots is None:
            body.append(f"    return [(TOPIC, RECORD({fields}))]")
        else:
            ns["NEW"] = object.__new__
            body.append("    o = NEW(RECORD)")
            for i, slot in enumerate(slots):
                ns[f"W{i}"] = slot
                body.append(f"    W{i}(o, r{i})")
            body.append("    return [(TOPIC, o)]")
    else:
        body.append(f"    return [{fields}]")
    ns["from_bytes"] = int.from_bytes
    source = "def decode(data, stats):\n" + "\n".join(body) + "\n"
    code = compile(source, f"<CAN decoder of {name}>", "exec")
    exec(code, ns)  # the source holds only names made here and integers computed here: see the module doc
    decode: Decoder = ns["decode"]
    return decode
