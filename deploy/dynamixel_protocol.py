"""Dynamixel Protocol 2.0 facts shared by the D'Claw backend and the bus emulator.

Control table (X series: XM430-W350 / XH430, the D'Claw's servos), unit conversions, and the
packet layer (CRC-16, byte stuffing, instruction/status packets) written from the ROBOTIS
Protocol 2.0 specification. The backend talks through ``dynamixel_sdk``; this packet code is the
emulator's own, independent implementation, so the two check each other byte for byte.

Packet: ``FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAMS... | CRC_L CRC_H`` where LEN counts
INST + PARAMS + CRC (after stuffing) and the CRC-16 (polynomial 0x8005, initial value 0, no
reflection) covers every byte before it. Status packets use INST 0x55 followed by an ERROR
byte. Byte stuffing: wherever ``FF FF FD`` appears from INST on, an extra ``FD`` follows it.
"""

from __future__ import annotations

import math

import numpy as np

# --- control table (X series, Protocol 2.0) -------------------------------------------
ADDR_MODEL_NUMBER = 0       # 2 bytes
ADDR_FIRMWARE_VERSION = 6   # 1
ADDR_ID = 7                 # 1
ADDR_BAUD_RATE = 8          # 1
ADDR_OPERATING_MODE = 11    # 1: 3 = position control, 4 = extended position
ADDR_MAX_POSITION_LIMIT = 48  # 4
ADDR_MIN_POSITION_LIMIT = 52  # 4
ADDR_TORQUE_ENABLE = 64     # 1
ADDR_LED = 65               # 1
ADDR_STATUS_RETURN_LEVEL = 68  # 1
ADDR_HARDWARE_ERROR = 70    # 1
ADDR_PROFILE_VELOCITY = 112  # 4
ADDR_GOAL_POSITION = 116    # 4
ADDR_REALTIME_TICK = 120    # 2, ms counter 0..32767
ADDR_MOVING = 122           # 1
ADDR_PRESENT_CURRENT = 126  # 2
ADDR_PRESENT_VELOCITY = 128  # 4, signed, 0.229 rev/min
ADDR_PRESENT_POSITION = 132  # 4, signed ticks
ADDR_PRESENT_VOLTAGE = 144  # 2, 0.1 V
ADDR_PRESENT_TEMPERATURE = 146  # 1, deg C
CONTROL_TABLE_SIZE = 147
EEPROM_END = 64             # registers below are EEPROM: writable only with torque off

#: The block the backend sync-reads every step: realtime tick .. present position (inclusive).
STATE_BLOCK_ADDR = ADDR_REALTIME_TICK
STATE_BLOCK_LEN = ADDR_PRESENT_POSITION + 4 - ADDR_REALTIME_TICK

MODEL_XM430_W350 = 1020
OPERATING_MODE_POSITION = 3
OPERATING_MODE_EXTENDED_POSITION = 4

#: Hardware error status bits (register 70).
HARDWARE_ERROR_BITS = {0: "input voltage", 2: "overheating", 3: "motor encoder", 4: "electrical shock", 5: "overload"}

# --- units ---------------------------------------------------------------------------
TICKS_PER_REV = 4096
CENTER_TICKS = 2048
RAD_PER_TICK = 2 * math.pi / TICKS_PER_REV
#: Present velocity unit: 0.229 rev/min.
RAD_S_PER_VELOCITY_UNIT = 0.229 * 2 * math.pi / 60


def rad_to_ticks(rad):
    """Joint angle (rad, 0 at the servo's centre) -> goal position ticks (rounded, 0..4095)."""
    return np.clip(np.rint(CENTER_TICKS + np.asarray(rad) / RAD_PER_TICK), 0, TICKS_PER_REV - 1).astype(np.int64)


def ticks_to_rad(ticks):
    """Position ticks (signed) -> rad relative to the centre (2048)."""
    return (np.asarray(ticks, dtype=np.float64) - CENTER_TICKS) * RAD_PER_TICK


def describe_hardware_error(bits: int) -> str:
    """'overload, overheating' for the set bits of register 70."""
    names = [name for bit, name in HARDWARE_ERROR_BITS.items() if bits & (1 << bit)]
    unknown = bits & ~sum(1 << bit for bit in HARDWARE_ERROR_BITS)
    if unknown:
        names.append(f"unknown bits 0x{unknown:02x}")
    return ", ".join(names) or "none"


def to_signed32(value: int) -> int:
    """Two's complement of a 4-byte register value."""
    return value - (1 << 32) if value & 0x80000000 else value


# --- packets -------------------------------------------------------------------------
HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE = 0x01, 0x02, 0x03
INST_REBOOT = 0x08
INST_STATUS = 0x55
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83
INST_FAST_SYNC_READ = 0x8A
#: Status error field: bit 7 = hardware alert; low bits = the instruction's error number.
ERROR_ALERT = 0x80
ERR_RESULT_FAIL, ERR_INSTRUCTION, ERR_CRC, ERR_DATA_RANGE, ERR_DATA_LENGTH, ERR_DATA_LIMIT, ERR_ACCESS = range(1, 8)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16 of Protocol 2.0 (polynomial 0x8005, init 0, MSB first)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every ``FF FF FD`` in ``body`` (INST + PARAMS)."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and out[-3:-1] == b"\xff\xff":
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    """Remove the 0xFD that :func:`stuff` inserted."""
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if body[i] == 0xFD and out[-3:-1] == b"\xff\xff" and i + 1 < len(body) and body[i + 1] == 0xFD:
            i += 1  # skip the stuffed copy
        i += 1
    return bytes(out)


def build_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A complete instruction packet (or a status packet: instruction 0x55, params[0] = error)."""
    body = stuff(bytes([instruction]) + bytes(params))
    length = len(body) + 2
    packet = HEADER + bytes([servo_id, length & 0xFF, length >> 8]) + body
    crc = crc16(packet)
    return packet + bytes([crc & 0xFF, crc >> 8])


def build_status(servo_id: int, error: int, params: bytes = b"") -> bytes:
    """A status packet from ``servo_id``."""
    return build_packet(servo_id, INST_STATUS, bytes([error]) + bytes(params))


class PacketParser:
    """Incremental parser of a byte stream into packets ``(id, instruction, params, crc_ok)``.

    Garbage before a header is skipped, as a servo does. ``params`` are unstuffed.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes, bool]]:
        self.buffer.extend(data)
        packets = []
        while True:
            start = self.buffer.find(HEADER)
            if start < 0:
                del self.buffer[:max(0, len(self.buffer) - 3)]  # keep a possible partial header
                return packets
            del self.buffer[:start]
            if len(self.buffer) < 7:
                return packets
            length = self.buffer[5] | (self.buffer[6] << 8)
            if length < 3:  # INST + CRC at least; a corrupt length: resynchronise after this header
                del self.buffer[:4]
                continue
            total = 7 + length
            if len(self.buffer) < total:
                return packets
            raw = bytes(self.buffer[:total])
            del self.buffer[:total]
            crc_ok = crc16(raw[:-2]) == (raw[-2] | (raw[-1] << 8))
            body = unstuff(raw[7:-2])
            packets.append((raw[4], body[0], body[1:], crc_ok))
