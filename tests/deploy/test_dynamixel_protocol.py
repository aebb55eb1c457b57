"""Protocol 2.0 packet layer (CRC, stuffing, parsing) and the emulator's byte-level answers."""

from __future__ import annotations

import os
import select
import time

import numpy as np
import pytest

from deploy import dynamixel_protocol as dxl
from deploy.dynamixel_emulator import DynamixelEmulator, parse_fault
from deploy.dynamixel_emulator import main as emulator_main


def test_packets_match_the_specification_examples():
    # ROBOTIS e-manual, Protocol 2.0: PING to ID 1 and READ of 4 bytes at 132 from ID 1.
    assert dxl.build_packet(1, dxl.INST_PING).hex(" ") == "ff ff fd 00 01 03 00 01 19 4e"
    assert dxl.build_packet(1, dxl.INST_READ, bytes([0x84, 0, 4, 0])).hex(" ") == \
        "ff ff fd 00 01 07 00 02 84 00 04 00 1d 15"


def test_byte_stuffing_round_trips_and_matches_the_sdk():
    from dynamixel_sdk import PacketHandler

    sdk = PacketHandler(2.0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        body = bytes(rng.choice([0xFF, 0xFD, 0x00, 0x55], size=rng.integers(1, 24)).tolist())
        stuffed = dxl.stuff(body)
        assert dxl.unstuff(stuffed) == body
        # No header lookalike survives: every FF FF FD is followed by the stuffed FD.
        assert all(stuffed[i + 3:i + 4] == b"\xfd" for i in range(len(stuffed)) if stuffed[i:i + 3] == b"\xff\xff\xfd")
        packet = [0xFF, 0xFF, 0xFD, 0, 1, (len(body) + 2) & 0xFF, 0, *body, 0, 0]
        assert bytes(sdk.addStuffing(list(packet))[7:7 + len(stuffed)]) == stuffed
        assert dxl.crc16(bytes(packet[:-2])) == sdk.updateCRC(0, packet, len(packet) - 2)


def test_parser_skips_garbage_reassembles_fragments_and_flags_bad_crc():
    good = dxl.build_packet(7, dxl.INST_WRITE, bytes([116, 0]) + (253).to_bytes(4, "little") + b"\xff\xff\xfd")
    bad = bytearray(dxl.build_packet(8, dxl.INST_PING))
    bad[-1] ^= 0xFF
    stream = b"\x00\xff\x12" + good + bytes(bad)
    parser = dxl.PacketParser()
    packets = [p for i in range(0, len(stream), 5) for p in parser.feed(stream[i:i + 5])]
    assert packets == [(7, dxl.INST_WRITE, bytes([116, 0]) + (253).to_bytes(4, "little") + b"\xff\xff\xfd", True),
                       (8, dxl.INST_PING, b"", False)]


def test_angle_conversion_is_centred_and_clipped():
    assert dxl.rad_to_ticks(0.0) == 2048
    assert dxl.rad_to_ticks(np.pi / 2) == 3072
    assert dxl.rad_to_ticks(-10.0) == 0 and dxl.rad_to_ticks(10.0) == 4095
    assert dxl.ticks_to_rad(1024) == pytest.approx(-np.pi / 2)
    assert dxl.describe_hardware_error(0b100100) == "overheating, overload"


def _transact(emu: DynamixelEmulator, fd: int, packet: bytes, expect: int, raw: bytearray | None = None) -> list:
    os.write(fd, packet)
    parser, packets, deadline = dxl.PacketParser(), [], time.monotonic() + 10.0  # a hang guard: replies end it
    while len(packets) < expect and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            data = os.read(fd, 4096)
            if raw is not None:
                raw.extend(data)
            packets += parser.feed(data)
    return packets


def test_emulator_answers_reads_with_stuffed_status_and_models_the_motor():
    with DynamixelEmulator([1, 2], positions={1: 0.0}) as emu:
        fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
        try:
            # A position whose bytes are FF FF FD 00 forces stuffing in the status packet.
            emu.set_position(2, float(dxl.ticks_to_rad(0x00FDFFFF)))
            read = dxl.build_packet(dxl.BROADCAST_ID, dxl.INST_SYNC_READ, bytes([128, 0, 8, 0, 2, 1]))
            raw = bytearray()
            (a, b) = _transact(emu, fd, read, 2, raw)
            assert b"\xff\xff\xfd\xfd\x00" in raw  # stuffed on the wire
            assert (a[0], b[0]) == (2, 1) and a[3] and b[3]  # answered in the requested order, CRC ok
            assert a[2] == b"\x00" + bytes(4) + b"\xff\xff\xfd\x00"  # error 0, velocity 0, position unstuffed
            write = dxl.build_packet(1, dxl.INST_WRITE, bytes([64, 0, 1]))
            assert _transact(emu, fd, write, 1)[0][:3] == (1, dxl.INST_STATUS, b"\x00")
            goal = dxl.build_packet(dxl.BROADCAST_ID, dxl.INST_SYNC_WRITE,
                                    bytes([116, 0, 4, 0, 1]) + (2048 + 512).to_bytes(4, "little"))
            os.write(fd, goal)
            deadline = time.monotonic() + 10.0  # the emulated servo moves there in about 0.2 s
            while abs(emu.position(1) - np.pi / 4) > 0.01 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert emu.position(1) == pytest.approx(np.pi / 4, abs=0.01)
            eeprom = dxl.build_packet(1, dxl.INST_WRITE, bytes([11, 0, 4]))  # EEPROM, torque on
            assert _transact(emu, fd, eeprom, 1)[0][2] == bytes([dxl.ERR_ACCESS])
        finally:
            os.close(fd)


@pytest.mark.parametrize("text, parsed", [
    ("unplug@3", ("unplug", None, 3.0)), ("unplug:@3", ("unplug", None, 3.0)), ("unplug", ("unplug", None, 0.0)),
    ("no-reply:21@5", ("no-reply", 21, 5.0)), ("bad-crc:21", ("bad-crc", 21, 0.0)),
    ("frozen:32@0.25", ("frozen", 32, 0.25)), ("drop-reply:10@.5", ("drop-reply", 10, 0.5)),
])
def test_fault_specs_in_every_form_the_help_shows(text, parsed):
    assert parse_fault(text) == parsed


def test_bad_fault_specs_are_refused_naming_the_fix(capsys):
    for text in ("no-reply:x", "no-reply:21@soon", "unplug@", "@3", "no-reply:21@5@6"):
        with pytest.raises(ValueError, match="write KIND, KIND:ID, KIND@SECONDS or KIND:ID@SECONDS"):
            parse_fault(text)
    with DynamixelEmulator([21]) as emu:
        with pytest.raises(ValueError, match="unknown fault 'melt'; choose from no-reply, drop-reply"):
            emu.inject(*parse_fault("melt:21"))
        with pytest.raises(ValueError, match=r"'no-reply' needs a servo ID on the bus \[21\].*no-reply:ID@SECONDS"):
            emu.inject(*parse_fault("no-reply@5"))
        with pytest.raises(ValueError, match="'unplug' removes the whole bus and takes no servo ID"):
            emu.inject(*parse_fault("unplug:21@3"))
    with pytest.raises(SystemExit) as exited:  # the command line: a usage error, before serving
        emulator_main(["--fault", "unplug:21"])
    assert exited.value.code == 2 and "--fault unplug:21: fault 'unplug' removes" in capsys.readouterr().err
