"""A Dynamixel Protocol 2.0 bus on a pseudo-terminal, for dry runs of the D'Claw backend.

    python -m deploy.dynamixel_emulator                      # prints the pty path, e.g. /dev/pts/7
    python -m deploy.run --policy policy.onnx --backend dclaw --port /dev/pts/7 --log dry.h5
    python -m deploy.dynamixel_emulator --fault no-reply:21@5  # servo 21 falls silent after 5 s

The emulator owns the master side of a pty (``os.openpty``); the backend opens the slave path
through ``dynamixel_sdk.PortHandler`` exactly as it opens ``/dev/ttyUSB0``. A background thread
reads the byte stream, parses Protocol 2.0 instruction packets (header, CRC-16, byte stuffing:
:mod:`deploy.dynamixel_protocol`) and answers like a chain of X-series servos: PING, READ, WRITE,
SYNC_READ, SYNC_WRITE and REBOOT (FAST_SYNC_READ and BULK_* are answered with an instruction
error / ignored when broadcast: the backend does not use them).

Each servo has a control table (:mod:`deploy.dynamixel_protocol` addresses) and a motor model:
with torque on, the position approaches the goal as a first-order system with time constant
``time_constant`` and speed limit ``max_speed`` (rad/s); the realtime tick counts milliseconds.
Servos listed in ``passive_ids`` (the valve) start with torque off and stay where they are put
(:meth:`DynamixelEmulator.set_position`).

In-process use (the tests) shares the interpreter with the code under test: anything that holds
the GIL for tens of milliseconds (a full garbage collection of a large heap) freezes the emulated
servos past the SDK's ~35 ms reply timeout. Run it as its own process (the command line) for dry
runs; the tests switch the collector off while it serves.

Injectable faults (methods, or ``--fault KIND[:ID][@SECONDS]`` on the command line: now or
SECONDS after start; e.g. ``no-reply:21@5``, ``unplug@3``, ``unplug``):
``no-reply`` (the servo stops sending status packets but still obeys broadcasts),
``drop-reply`` (it drops its next status packet only, as line noise would), ``bad-crc`` (its
status packets carry a wrong CRC), ``hardware-error`` (register 70 = overload, alert bit in every
status, torque off, as a real servo's shutdown), ``frozen`` (its present position, velocity and
realtime tick stop updating), ``blocked`` (the joint is held where it is, as by an obstacle,
while the servo keeps answering), and ``unplug`` (the whole bus disappears; no ID). Conditions
that are not faults: :meth:`DynamixelEmulator.set_operating_mode` (register 11, e.g. a servo left
in velocity mode) and ``reply_latency`` (status packets sent that long after the instruction, as
through a USB adapter with a high latency timer; ``--reply-latency-ms``).
"""

from __future__ import annotations

import math
import os
import re
import select
import sys
import threading
import time
import tty
from dataclasses import dataclass, field

from deploy import dynamixel_protocol as dxl


@dataclass
class _Servo:
    """One servo: control table bytes plus the motor state the registers are derived from."""

    servo_id: int
    table: bytearray
    position: float  # ticks
    velocity: float = 0.0  # ticks/s
    silent: bool = False
    bad_crc: bool = False
    frozen: bool = False
    blocked: bool = False
    drop_next: int = 0  # status packets still to drop (one-shot noise)
    dropped: int = 0
    reply_count: int = 0
    writes: list = field(default_factory=list)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.table[address:address + length])

    def set_register(self, address: int, length: int, value: int) -> None:
        self.table[address:address + length] = (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")

    def register(self, address: int, length: int, signed: bool = False) -> int:
        value = int.from_bytes(self.table[address:address + length], "little")
        return dxl.to_signed32(value) if signed and length == 4 else value


class DynamixelEmulator:
    """A chain of emulated X-series servos behind a pty (see the module docstring).

    Args:
        ids: servo IDs on the bus.
        passive_ids: servos that start with torque off and are moved only by :meth:`set_position`.
        positions: initial angle (rad) per ID (default 0 = centre, 2048 ticks).
        max_speed: speed limit of the motor model (rad/s).
        time_constant: first-order time constant of the motor model (s).
        model_number: what PING and register 0 report (1020: XM430-W350).
        rt_priority: SCHED_FIFO priority of the bus thread (0: normal; ignored where not
            permitted). Real servos answer within microseconds whatever the host's load; an
            emulator thread starved by a loaded machine would miss the SDK's ~35 ms timeouts.
        reply_latency: seconds between an instruction and its status packets (0: at once), as
            an FTDI adapter whose latency timer is not set to 1 ms delays every answer.
    """

    def __init__(self, ids, passive_ids=(), positions: dict[int, float] | None = None, max_speed: float = 5.0,
                 time_constant: float = 0.05, model_number: int = dxl.MODEL_XM430_W350, rt_priority: int = 0,
                 reply_latency: float = 0.0) -> None:
        self.rt_priority = rt_priority
        self.reply_latency = reply_latency
        self.max_speed_ticks = max_speed / dxl.RAD_PER_TICK
        self.time_constant = time_constant
        self.passive_ids = set(passive_ids)
        self._lock = threading.RLock()  # fault actions may run inside a packet's handling
        self._start = time.perf_counter()
        self.servos: dict[int, _Servo] = {}
        positions = positions or {}
        for servo_id in [*ids, *passive_ids]:
            ticks = float(dxl.CENTER_TICKS + positions.get(servo_id, 0.0) / dxl.RAD_PER_TICK)
            servo = _Servo(servo_id, bytearray(dxl.CONTROL_TABLE_SIZE), ticks)
            servo.set_register(dxl.ADDR_MODEL_NUMBER, 2, model_number)
            servo.set_register(dxl.ADDR_FIRMWARE_VERSION, 1, 46)
            servo.set_register(dxl.ADDR_ID, 1, servo_id)
            servo.set_register(dxl.ADDR_BAUD_RATE, 1, 3)  # 3 = 1 Mbaud
            servo.set_register(dxl.ADDR_OPERATING_MODE, 1, dxl.OPERATING_MODE_POSITION)
            servo.set_register(dxl.ADDR_MAX_POSITION_LIMIT, 4, dxl.TICKS_PER_REV - 1)
            servo.set_register(dxl.ADDR_MIN_POSITION_LIMIT, 4, 0)
            servo.set_register(dxl.ADDR_STATUS_RETURN_LEVEL, 1, 2)
            servo.set_register(dxl.ADDR_GOAL_POSITION, 4, round(ticks))
            servo.set_register(dxl.ADDR_PRESENT_VOLTAGE, 2, 120)
            servo.set_register(dxl.ADDR_PRESENT_TEMPERATURE, 1, 35)
            self.servos[servo_id] = servo
        self._last_update = time.perf_counter()
        self._refresh_registers(self._last_update)
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation: a byte pipe
        self.path = os.ttyname(self._slave)
        self.packets = 0
        self.crc_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parser = dxl.PacketParser()
        self._timers: list[threading.Timer] = []
        self.goal_writes = 0  # SYNC_WRITEs of goal positions seen
        self._due: list[tuple[int, object]] = []  # (goal_writes threshold, fault action)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> DynamixelEmulator:
        self._thread = threading.Thread(target=self._serve, name="dynamixel-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._close_fds()

    def __enter__(self) -> DynamixelEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- inspection and scripting ----------------------------------------------------
    def torque(self, servo_id: int) -> bool:
        with self._lock:
            return bool(self.servos[servo_id].register(dxl.ADDR_TORQUE_ENABLE, 1))

    def position(self, servo_id: int) -> float:
        """Present angle (rad) of a servo."""
        with self._lock:
            self._update(time.perf_counter())
            return float(dxl.ticks_to_rad(self.servos[servo_id].position))

    def goal(self, servo_id: int) -> float:
        with self._lock:
            return float(dxl.ticks_to_rad(self.servos[servo_id].register(dxl.ADDR_GOAL_POSITION, 4, signed=True)))

    def set_position(self, servo_id: int, rad: float, velocity_ticks: float = 0.0) -> None:
        """Put a servo at an angle (e.g. the valve turned by hand)."""
        with self._lock:
            self._update(time.perf_counter())
            servo = self.servos[servo_id]
            servo.position = dxl.CENTER_TICKS + rad / dxl.RAD_PER_TICK
            servo.velocity = velocity_ticks
            self._refresh_registers(time.perf_counter(), force=True)

    def goal_history(self, servo_id: int) -> list[int]:
        """Every goal position (ticks) written to a servo, in order."""
        with self._lock:
            return list(self.servos[servo_id].writes)

    def set_operating_mode(self, servo_id: int, mode: int) -> None:
        """Register 11 (3 = position, 4 = extended position, 1 = velocity, 16 = PWM), as a servo
        configured for another robot would be found."""
        with self._lock:
            self.servos[servo_id].set_register(dxl.ADDR_OPERATING_MODE, 1, mode)

    def dropped_replies(self, servo_id: int) -> int:
        """Status packets of a servo dropped by :meth:`drop_replies` so far."""
        with self._lock:
            return self.servos[servo_id].dropped

    # --- faults ---------------------------------------------------------------------
    FAULTS = ("no-reply", "drop-reply", "bad-crc", "hardware-error", "frozen", "blocked", "unplug")

    def inject(self, kind: str, servo_id: int | None = None, after: float = 0.0, after_writes: int = 0) -> None:
        """Inject a fault (:attr:`FAULTS`; every kind but ``unplug`` names a servo).

        Now, or ``after`` seconds, or once ``after_writes`` goal-position SYNC_WRITEs have been
        received (a trigger tied to control steps, independent of start-up time)."""
        actions = {"no-reply": self.silence, "drop-reply": self.drop_replies, "bad-crc": self.corrupt_crc,
                   "hardware-error": self.hardware_error, "frozen": self.freeze, "blocked": self.block,
                   "unplug": self.unplug}
        if kind not in actions:
            raise ValueError(f"unknown fault '{kind}'; choose from {', '.join(self.FAULTS)}")
        if kind == "unplug" and servo_id is not None:
            raise ValueError(f"fault 'unplug' removes the whole bus and takes no servo ID (got {servo_id}): "
                             "write unplug or unplug@SECONDS")
        if kind != "unplug" and servo_id not in self.servos:
            raise ValueError(f"fault '{kind}' needs a servo ID on the bus {sorted(self.servos)}, got {servo_id}: "
                             f"write {kind}:ID or {kind}:ID@SECONDS")
        action = actions[kind] if kind == "unplug" else (lambda: actions[kind](servo_id))
        if after_writes > 0:
            self.at_goal_write(after_writes, action)
        elif after <= 0:
            action()
        else:
            timer = threading.Timer(after, action)
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def at_goal_write(self, count: int, action) -> None:
        """Call ``action()`` (on the emulator thread) when the ``count``-th goal SYNC_WRITE arrives."""
        with self._lock:
            self._due.append((count, action))

    def silence(self, servo_id: int) -> None:
        """The servo stops answering (it still executes instructions, broadcasts included)."""
        with self._lock:
            self.servos[servo_id].silent = True

    def drop_replies(self, servo_id: int, count: int = 1) -> None:
        """The servo's next ``count`` status packets are lost (it executes the instructions)."""
        with self._lock:
            self.servos[servo_id].drop_next += count

    def block(self, servo_id: int) -> None:
        """The joint is held where it is (an obstacle): goals are accepted, the position stays."""
        with self._lock:
            self._update(time.perf_counter())
            self.servos[servo_id].blocked = True

    def corrupt_crc(self, servo_id: int) -> None:
        """The servo's status packets carry a wrong CRC."""
        with self._lock:
            self.servos[servo_id].bad_crc = True

    def hardware_error(self, servo_id: int, bits: int = 1 << 5) -> None:
        """Hardware error status (default: overload); like a real servo, torque switches off."""
        with self._lock:
            servo = self.servos[servo_id]
            servo.set_register(dxl.ADDR_HARDWARE_ERROR, 1, bits)
            servo.set_register(dxl.ADDR_TORQUE_ENABLE, 1, 0)

    def freeze(self, servo_id: int) -> None:
        """The servo's reported state (position, velocity, realtime tick) stops updating."""
        with self._lock:
            self.servos[servo_id].frozen = True

    def unplug(self) -> None:
        """The adapter disappears: the pty closes and the port reports I/O errors."""
        self._stop.set()
        self._close_fds()

    # --- the bus --------------------------------------------------------------------
    def _close_fds(self) -> None:
        with self._lock:
            for name in ("master", "_slave"):
                fd = getattr(self, name)
                if fd is not None and fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                    setattr(self, name, -1)

    def _serve(self) -> None:
        if self.rt_priority > 0 and hasattr(os, "sched_setscheduler"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))
            except OSError:
                pass
        while not self._stop.is_set():
            master = self.master
            if master < 0:
                return
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(master, 4096)
            except (OSError, ValueError):  # closed by unplug()/stop()
                return
            for servo_id, instruction, params, crc_ok in self._parser.feed(data):
                replies = self._handle(servo_id, instruction, params, crc_ok)
                if replies and self.reply_latency > 0:
                    time.sleep(self.reply_latency)
                if replies and self.master >= 0:
                    try:
                        os.write(self.master, b"".join(replies))
                    except OSError:
                        return

    def _handle(self, servo_id: int, instruction: int, params: bytes, crc_ok: bool) -> list[bytes]:
        with self._lock:
            now = time.perf_counter()
            self._update(now)
            self.packets += 1
            if not crc_ok:
                self.crc_errors += 1
                return self._reply(servo_id, dxl.ERR_CRC) if servo_id in self.servos else []
            if instruction == dxl.INST_SYNC_WRITE:
                self._sync_write(params)
                if params[:2] == bytes([dxl.ADDR_GOAL_POSITION, 0]):
                    self.goal_writes += 1
                    for due in [d for d in self._due if d[0] <= self.goal_writes]:
                        self._due.remove(due)
                        due[1]()
                return []
            if instruction == dxl.INST_SYNC_READ:
                return self._sync_read(params)
            if servo_id == dxl.BROADCAST_ID or servo_id not in self.servos:
                return []  # other broadcasts (FAST_SYNC_READ, BULK_*) are not supported
            servo = self.servos[servo_id]
            if instruction == dxl.INST_PING:
                return self._reply(servo_id, 0, servo.read(dxl.ADDR_MODEL_NUMBER, 2) +
                                   servo.read(dxl.ADDR_FIRMWARE_VERSION, 1))
            if instruction == dxl.INST_READ:
                if len(params) != 4:
                    return self._reply(servo_id, dxl.ERR_DATA_LENGTH)
                address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
                if address + length > dxl.CONTROL_TABLE_SIZE:
                    return self._reply(servo_id, dxl.ERR_ACCESS)
                return self._reply(servo_id, 0, servo.read(address, length))
            if instruction == dxl.INST_WRITE:
                if len(params) < 3:
                    return self._reply(servo_id, dxl.ERR_DATA_LENGTH)
                error = self._write(servo, params[0] | params[1] << 8, params[2:])
                return self._reply(servo_id, error)
            if instruction == dxl.INST_REBOOT:
                servo.set_register(dxl.ADDR_HARDWARE_ERROR, 1, 0)
                servo.set_register(dxl.ADDR_TORQUE_ENABLE, 1, 0)
                return self._reply(servo_id, 0)
            return self._reply(servo_id, dxl.ERR_INSTRUCTION)

    def _sync_read(self, params: bytes) -> list[bytes]:
        address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
        replies = []
        for servo_id in params[4:]:  # servos answer in the order listed
            servo = self.servos.get(servo_id)
            if servo is not None:
                replies += self._reply(servo_id, 0, servo.read(address, length))
        return replies

    def _sync_write(self, params: bytes) -> None:
        address, length = params[0] | params[1] << 8, params[2] | params[3] << 8
        body = params[4:]
        for start in range(0, len(body) - length, length + 1):
            servo = self.servos.get(body[start])
            if servo is not None:
                self._write(servo, address, body[start + 1:start + 1 + length])

    def _write(self, servo: _Servo, address: int, data: bytes) -> int:
        if address + len(data) > dxl.CONTROL_TABLE_SIZE:
            return dxl.ERR_ACCESS
        torque = servo.register(dxl.ADDR_TORQUE_ENABLE, 1)
        if address < dxl.EEPROM_END and torque:
            return dxl.ERR_ACCESS  # EEPROM is locked while the torque is on
        if address <= dxl.ADDR_TORQUE_ENABLE < address + len(data) and data[dxl.ADDR_TORQUE_ENABLE - address] \
                and servo.register(dxl.ADDR_HARDWARE_ERROR, 1):
            return dxl.ERR_RESULT_FAIL  # a servo in shutdown needs a reboot before torque can come back
        if address == dxl.ADDR_GOAL_POSITION and len(data) == 4:
            goal = dxl.to_signed32(int.from_bytes(data, "little"))
            low = servo.register(dxl.ADDR_MIN_POSITION_LIMIT, 4)
            high = servo.register(dxl.ADDR_MAX_POSITION_LIMIT, 4)
            if not low <= goal <= high:
                return dxl.ERR_DATA_LIMIT
            servo.writes.append(goal)
        servo.table[address:address + len(data)] = data
        return 0

    def _reply(self, servo_id: int, error: int, params: bytes = b"") -> list[bytes]:
        servo = self.servos[servo_id]
        if servo.silent:
            return []
        if servo.drop_next:
            servo.drop_next -= 1
            servo.dropped += 1
            return []
        if servo.register(dxl.ADDR_HARDWARE_ERROR, 1):
            error |= dxl.ERROR_ALERT
        packet = dxl.build_status(servo_id, error, params)
        if servo.bad_crc:
            packet = packet[:-2] + bytes([packet[-2] ^ 0x5A, packet[-1]])
        servo.reply_count += 1
        return [packet]

    # --- motor model ----------------------------------------------------------------
    def _update(self, now: float) -> None:
        """Advance every motor to ``now`` (1 ms sub-steps) and refresh the present-value registers."""
        elapsed = now - self._last_update
        if elapsed <= 0:
            return
        self._last_update = now
        steps = max(1, math.ceil(elapsed / 1e-3))
        dt = elapsed / steps
        for servo in self.servos.values():
            if not servo.register(dxl.ADDR_TORQUE_ENABLE, 1) or servo.blocked:
                servo.velocity = 0.0
                continue
            goal = servo.register(dxl.ADDR_GOAL_POSITION, 4, signed=True)
            for _ in range(steps):
                velocity = (goal - servo.position) / self.time_constant
                velocity = max(-self.max_speed_ticks, min(self.max_speed_ticks, velocity))
                servo.position += velocity * dt
            servo.velocity = velocity
        self._refresh_registers(now)

    def _refresh_registers(self, now: float, force: bool = False) -> None:
        tick = int((now - self._start) * 1000) % 32768
        for servo in self.servos.values():
            if servo.frozen and not force:
                continue
            servo.set_register(dxl.ADDR_REALTIME_TICK, 2, tick)
            servo.set_register(dxl.ADDR_PRESENT_POSITION, 4, round(servo.position))
            units = round(servo.velocity * dxl.RAD_PER_TICK / dxl.RAD_S_PER_VELOCITY_UNIT)
            servo.set_register(dxl.ADDR_PRESENT_VELOCITY, 4, units)
            servo.set_register(dxl.ADDR_MOVING, 1, int(abs(units) > 1))


# --- command line -------------------------------------------------------------------
_FAULT_SYNTAX = re.compile(r"(?P<kind>[a-z-]+)(?::(?P<servo>\d*))?(?:@(?P<after>\d+(?:\.\d*)?|\.\d+))?")


def parse_fault(text: str) -> tuple[str, int | None, float]:
    """``KIND[:ID][@SECONDS]`` -> (kind, servo ID or None, seconds; 0: now). ``unplug@3`` and
    ``unplug:@3`` are the same; the kind and ID are checked by :meth:`DynamixelEmulator.inject`."""
    match = _FAULT_SYNTAX.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"cannot parse '{text}': write KIND, KIND:ID, KIND@SECONDS or KIND:ID@SECONDS "
                         f"(e.g. no-reply:21@5, unplug@3) with KIND one of {', '.join(DynamixelEmulator.FAULTS)}")
    servo, after = match["servo"], match["after"]
    return match["kind"], int(servo) if servo else None, float(after) if after else 0.0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from robots.dclaw.spec import DEFAULT_POSE, SERVO_IDS, VALVE_SERVO_ID

    parser = argparse.ArgumentParser(prog="python -m deploy.dynamixel_emulator", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, nargs="+", default=list(SERVO_IDS), help="servo IDs (default: D'Claw)")
    parser.add_argument("--valve-id", type=int, default=VALVE_SERVO_ID, help="passive servo (torque off); -1: none")
    parser.add_argument("--max-speed", type=float, default=5.0, help="motor speed limit, rad/s")
    parser.add_argument("--rt-priority", type=int, default=60, help="SCHED_FIFO priority of the bus thread (0: off)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND[:ID][@SECONDS]",
                        help="inject a fault, now or SECONDS after start (repeatable): no-reply, drop-reply, "
                             "bad-crc, hardware-error, frozen, blocked (with a servo ID: no-reply:21@5), unplug (no "
                             "ID: unplug@3)")
    parser.add_argument("--reply-latency-ms", type=float, default=0.0,
                        help="delay every status packet this long (an adapter whose latency timer is not 1 ms)")
    args = parser.parse_args(argv)
    start = dict(zip(SERVO_IDS, DEFAULT_POSE.tolist(), strict=True)) if list(args.ids) == list(SERVO_IDS) else {}
    passive = () if args.valve_id < 0 else (args.valve_id,)
    emulator = DynamixelEmulator(args.ids, passive, positions=start, max_speed=args.max_speed,
                                 rt_priority=args.rt_priority, reply_latency=args.reply_latency_ms * 1e-3)
    for text in args.fault:
        try:
            emulator.inject(*parse_fault(text))
        except ValueError as error:
            emulator.stop()
            parser.error(f"--fault {text}: {error}")
    emulator.start()
    print(emulator.path, flush=True)
    print(f"emulating servos {sorted(emulator.servos)} on {emulator.path}; Ctrl-C to stop", file=sys.stderr)
    try:
        while emulator._thread.is_alive():
            emulator._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
