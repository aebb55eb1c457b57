"""D'Claw hardware backend: nine Dynamixel X-series servos plus the valve's servo, via dynamixel-sdk.

Bus: Protocol 2.0 at 1 Mbaud (U2D2 adapter). Every control step is one GroupSyncRead of the block
realtime tick (120) .. present position (132, 4 bytes; present velocity 128 on the way) from the
nine finger servos and the valve servo, and one GroupSyncWrite of goal position (116, 4 bytes)
to the fingers. Angles: ``ticks = 2048 + sign * (rad + offset) * 4096 / (2 pi)``, with each
servo's direction sign from the robot spec (``RobotSpec.hardware["joint_signs"]``) and its zero
offset from a calibration (``deploy.run --calibration``, fitted by ``deploy.calibrate``; 0 without
one): the angle a servo reports less its offset is the joint's physical angle.

Safety, in order of the life cycle:

* ``open``: the port must exist and open; every servo must answer a ping, report no hardware
  error and be in position mode. Before torque is enabled each goal is set to the present
  position, so enabling never jumps. The valve servo's torque stays off (it is a sensor).
* ``reset``: the fingers move to the default pose slowly (``reset_speed`` rad/s ramp), then must
  be within ``reset_tolerance`` of it before ``reset_timeout`` s, or the run stops.
* every read checks each status packet's alert bit (-> register 70 names the error), answers
  (-> silent servo), CRCs (one retry), and the realtime tick (unchanged tick = stale data).
* ``hold`` sets each goal to the present position; ``close`` switches the torque off on every
  servo (one broadcast SyncWrite, then per-servo writes to confirm) and is run from a
  ``finally`` by :mod:`deploy.run`, with SIGINT/SIGTERM/SIGHUP turned into exceptions.

Setting up a real adapter: set the FTDI latency timer to 1 ms
(``echo 1 | sudo tee /sys/bus/usb-serial/devices/ttyUSB0/latency_timer``), or each read waits up
to 16 ms; the backend warns when it finds it higher.
"""

from __future__ import annotations

import math
import os
import select
import sys
import termios
import time
from pathlib import Path

import numpy as np
import serial
from dynamixel_sdk import COMM_SUCCESS, GroupSyncRead, GroupSyncWrite, PacketHandler, PortHandler

from deploy import dynamixel_protocol as dxl
from deploy.backends.base import Backend, ResetResult
from deploy.errors import HardwareFault
from robots.dclaw.spec import SERVO_IDS, SPEC, VALVE_SERVO_ID
from toolkit.contract.robot import RobotSpec
from toolkit.contract.task import Task

#: Attempts of each ping and register read while opening the bus. Opening is not time-critical,
#: while one reply lost there (a servo's power-up, a host that was busy past the SDK's ~35 ms
#: timeout) would refuse the whole run; a servo that is really absent costs 3 timeouts (~0.1 s).
OPEN_ATTEMPTS = 3
#: What a lost or broken port raises inside pyserial/dynamixel_sdk (termios.error is no OSError).
BUS_ERRORS = (serial.SerialException, OSError, termios.error)


class WaitingPortHandler(PortHandler):
    """dynamixel-sdk's PortHandler, except that a read with nothing to read waits in ``select``
    (up to the packet's remaining timeout, at most 2 ms at a time) instead of returning at once.

    The SDK polls ``readPort`` in a tight loop until a status packet is complete. Polling burns a
    core for the whole bus transaction and, under SCHED_FIFO, can starve the USB/serial
    processing (or an emulator process) it is waiting for; sleeping in ``select`` wakes as soon
    as bytes arrive, so latency is unchanged.
    """

    def readPort(self, length):  # noqa: N802 - the SDK's method name
        if self.ser.in_waiting == 0:
            remaining_ms = self.packet_timeout - self.getTimeSinceStart()
            if remaining_ms > 0:
                select.select([self.ser.fileno()], [], [], min(remaining_ms, 2.0) * 1e-3)
        return self.ser.read(length)


class DClawBackend(Backend):
    """The real D'Claw (or the :mod:`deploy.dynamixel_emulator`) on a serial port.

    Args:
        task: the D'Claw task (its robot spec gives joint order, limits and default pose).
        port: serial device (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, or an emulator's pty).
        baud: bus baud rate (the servos' register 8 must agree).
        control_dt: the control period; the reset ramp runs at this rate.
        servo_ids: Dynamixel ID per joint, in the spec's joint order.
        valve_id: ID of the valve's servo (read only, torque off); None: no valve.
        reset_speed: speed of the ramp to the default pose (rad/s).
        reset_tolerance: max |joint - default| accepted after the reset (rad).
        reset_timeout: seconds the reset may take.
        retries: extra attempts of a failed sync read (corrupt or missing packets).
    """

    name = "dclaw"

    def __init__(self, task: Task, port: str, baud: int = 1_000_000, control_dt: float = 0.1,
                 servo_ids=SERVO_IDS, valve_id: int | None = VALVE_SERVO_ID, reset_speed: float = 0.6,
                 reset_tolerance: float = 0.08, reset_timeout: float = 10.0, retries: int = 1,
                 joint_offsets=None, joint_signs=None) -> None:
        super().__init__(task)
        if len(servo_ids) != SPEC.num_joints:
            raise ValueError(f"{len(servo_ids)} servo IDs for the D'Claw's {SPEC.num_joints} joints")
        j = SPEC.num_joints
        self.joint_offsets = np.zeros(j) if joint_offsets is None else np.asarray(joint_offsets, dtype=np.float64)
        self.joint_signs = np.asarray(SPEC.hardware["joint_signs"] if joint_signs is None else joint_signs,
                                      dtype=np.float64)
        self.valve_sign = float(SPEC.hardware["valve_sign"])
        if self.joint_offsets.shape != (j,) or not np.isfinite(self.joint_offsets).all():
            raise ValueError(f"joint_offsets must be {j} finite angles (rad), got {self.joint_offsets.tolist()}")
        if self.joint_signs.shape != (j,) or not np.all(np.abs(self.joint_signs) == 1):
            raise ValueError(f"joint_signs must be {j} values of +1 or -1, got {self.joint_signs.tolist()}")
        self.port_name, self.baud, self.control_dt = port, baud, control_dt
        self.servo_ids = tuple(int(i) for i in servo_ids)
        self.valve_id = valve_id
        self.all_ids = self.servo_ids + ((valve_id,) if valve_id is not None else ())
        self.reset_speed, self.reset_tolerance, self.reset_timeout = reset_speed, reset_tolerance, reset_timeout
        self.retries = retries
        self._names = dict(zip(self.servo_ids, SPEC.joint_names, strict=True))
        if valve_id is not None:
            self._names[valve_id] = "valve"
        self.port: PortHandler | None = None
        self.packets = PacketHandler(2.0)
        self._torque_on = False
        self._last_ticks: dict[int, int] = {}
        self._last_positions: np.ndarray | None = None
        self.stale_servos: list[int] = []
        self.torque_off_unconfirmed: list[int] = []
        self._task_model = None

    @property
    def robot(self) -> RobotSpec:
        """Always the D'Claw: a policy for another robot is refused against this."""
        return SPEC

    # --- life cycle -----------------------------------------------------------------
    def open(self) -> None:
        if self.port is not None:
            return
        if not os.path.exists(self.port_name):
            raise HardwareFault(f"serial port {self.port_name} does not exist: is the D'Claw's USB adapter (U2D2) "
                                "plugged in? List candidates with: ls /dev/ttyUSB* /dev/serial/by-id/")
        port = WaitingPortHandler(self.port_name)
        try:
            port.openPort()
        except BUS_ERRORS as error:
            raise HardwareFault(f"cannot open serial port {self.port_name}: {error}. Is another program using it? "
                                "Is your user in the 'dialout' group?") from None
        self.port = port
        if not port.setBaudRate(self.baud):
            raise HardwareFault(f"baud rate {self.baud} is not supported by dynamixel-sdk; the D'Claw uses 1000000")
        self._warn_latency_timer()
        attempts = max(1 + self.retries, OPEN_ATTEMPTS)
        missing = [i for i in self.all_ids if self._ping(i, attempts) is None]
        if missing:
            raise HardwareFault(f"servos {self._describe(missing)} do not answer on {self.port_name} at {self.baud} "
                                "baud: check the 12 V supply, the daisy-chain cables and the servo IDs/baud rate")
        for servo_id in self.all_ids:
            self._check_hardware_error(servo_id)
        for servo_id in self.servo_ids:
            mode = self._read(servo_id, dxl.ADDR_OPERATING_MODE, 1, attempts)
            if mode not in (dxl.OPERATING_MODE_POSITION, dxl.OPERATING_MODE_EXTENDED_POSITION):
                raise HardwareFault(f"servo {self._describe([servo_id])} is in operating mode {mode}, not position "
                                    "control (3): set register 11 with Dynamixel Wizard, torque off")
        self._reader = GroupSyncRead(port, self.packets, dxl.STATE_BLOCK_ADDR, dxl.STATE_BLOCK_LEN)
        for servo_id in self.all_ids:
            self._reader.addParam(servo_id)
        self._writer = GroupSyncWrite(port, self.packets, dxl.ADDR_GOAL_POSITION, 4)
        for servo_id in self.servo_ids:
            self._writer.addParam(servo_id, [0, 0, 0, 0])
        if self.valve_id is not None:
            self._write1(self.valve_id, dxl.ADDR_TORQUE_ENABLE, 0)
        # Enabling torque drives to the stored goal: make that the present position first.
        readings, _ = self.read()
        self._send_goals(readings["joint_pos"][0])
        for servo_id in self.servo_ids:
            self._write1(servo_id, dxl.ADDR_TORQUE_ENABLE, 1)
        self._torque_on = True

    def close(self) -> None:
        """Torque off on every servo (broadcast, then confirmed one by one); never raises."""
        port = self.port
        if port is None:
            return
        self.port = None
        unconfirmed = []
        try:
            # An exception (fault, Ctrl-C) may have left a transaction half done: the SDK's busy flag
            # would make every packet below fail with COMM_PORT_BUSY, and stale bytes would confuse them.
            port.is_using = False
            port.clearPort()
            torque_off = GroupSyncWrite(port, self.packets, dxl.ADDR_TORQUE_ENABLE, 1)
            for servo_id in self.all_ids:
                torque_off.addParam(servo_id, [0])
            torque_off.txPacket()  # one packet reaches every servo, even those that cannot answer
            for servo_id in self.all_ids:
                for _ in range(2):
                    result, _ = self.packets.write1ByteTxRx(port, servo_id, dxl.ADDR_TORQUE_ENABLE, 0)
                    if result == COMM_SUCCESS:
                        break
                else:
                    unconfirmed.append(servo_id)
        except (*BUS_ERRORS, TypeError) as error:
            print(f"deploy: cannot reach the bus to switch the torque off ({error}); the servos keep their last "
                  "goal until powered off", file=sys.stderr)
            unconfirmed = list(self.all_ids)
        finally:
            try:
                port.closePort()
            except (*BUS_ERRORS, AttributeError):
                pass
        self._torque_on = False
        self.torque_off_unconfirmed = unconfirmed
        if unconfirmed:
            print(f"deploy: torque-off not confirmed by servos {self._describe(unconfirmed)} (a broadcast torque-off "
                  "was sent); check them before touching the robot", file=sys.stderr)

    def hold(self) -> None:
        """Goal := last measured position, so nothing keeps moving; best effort."""
        if self.port is None or self._last_positions is None or not self._torque_on:
            return
        try:
            self._send_goals(self._last_positions)
        except (HardwareFault, *BUS_ERRORS):
            pass

    # --- control step ---------------------------------------------------------------
    def read(self) -> tuple[dict[str, np.ndarray], bool]:
        raw = self._sync_read()
        ticks = {i: int.from_bytes(raw[i][0:2], "little") for i in self.all_ids}
        position = {i: dxl.to_signed32(int.from_bytes(raw[i][12:16], "little")) for i in self.all_ids}
        velocity = {i: dxl.to_signed32(int.from_bytes(raw[i][8:12], "little")) for i in self.all_ids}
        self.stale_servos = [i for i in self.all_ids if self._last_ticks.get(i) == ticks[i]]
        fresh = bool(self._last_ticks) and not self.stale_servos
        self._last_ticks = ticks
        joints = self.joint_signs * dxl.ticks_to_rad([position[i] for i in self.servo_ids]) - self.joint_offsets
        self._last_positions = joints
        velocities = np.array([velocity[i] for i in self.servo_ids], dtype=np.float64)
        readings = {
            "joint_pos": joints[None, :],
            "joint_vel": (self.joint_signs * velocities * dxl.RAD_S_PER_VELOCITY_UNIT)[None, :],
        }
        if self.valve_id is not None:
            valve = self.valve_sign * float(dxl.ticks_to_rad(position[self.valve_id]))
            readings["valve_angle"] = np.array([[(valve + math.pi) % (2 * math.pi) - math.pi]])
        return readings, fresh

    def describe_stale(self) -> str:
        return f"servos {self._describe(self.stale_servos)} report an unchanged realtime tick"

    def write(self, joint_targets: np.ndarray) -> None:
        self._send_goals(joint_targets)

    def reset(self, rand) -> ResetResult:
        """Ramp to the default pose at ``reset_speed``, check it is reached, draw the task state."""
        robot = self.robot
        target = robot.default_pose
        readings, _ = self.read()
        start = readings["joint_pos"][0]
        distance = float(np.max(np.abs(target - start)))
        ramp_steps = max(1, math.ceil(distance / (self.reset_speed * self.control_dt)))
        deadline = time.monotonic() + self.reset_timeout
        for step in range(1, ramp_steps + 1):
            # Not clipped to the joint limits: a finger found outside them must come back slowly
            # along the ramp, not jump to the nearest limit.
            goal = start + (target - start) * step / ramp_steps
            self._send_goals(goal)
            time.sleep(self.control_dt)
            self.read()  # surfaces faults during the move
            if time.monotonic() > deadline:
                break
        while True:
            readings, _ = self.read()
            error = np.abs(readings["joint_pos"][0] - target)
            if np.all(error <= self.reset_tolerance):
                break
            if time.monotonic() > deadline:
                worst = [f"{robot.joint_names[j]} off by {error[j]:.2f} rad" for j in np.flatnonzero(
                    error > self.reset_tolerance)]
                raise HardwareFault(f"reset: the default pose was not reached within {self.reset_timeout:g} s "
                                    f"({', '.join(worst)}; tolerance {self.reset_tolerance} rad): is a finger blocked, "
                                    "or a servo overloaded?")
            time.sleep(self.control_dt)
        task_state = self._draw_task_state(readings, rand)
        return ResetResult(task_state=task_state, joint_targets=target.copy())

    # --- task state on hardware -------------------------------------------------------
    def _draw_task_state(self, readings: dict[str, np.ndarray], rand) -> dict[str, np.ndarray]:
        """The task's own reset distribution, drawn on a scratch simulator state.

        The valve cannot be set on hardware, so a goal drawn relative to the scratch valve angle
        is re-anchored on the measured one: goal = measured + (drawn goal - drawn valve), which
        keeps the training distribution of goal offsets.
        """
        import mujoco  # only for the task's model indices (no simulation)

        from deploy.backends.sim import DataView

        if self._task_model is None:
            model = self.task.build_model()
            self.task.bind(model)
            self._task_model = model
        view = DataView(mujoco.MjData(self._task_model))
        task_state = self.task.write_reset(view, np.zeros(1, dtype=np.int64), rand)
        task_state = {k: np.array(v, dtype=np.float64) for k, v in task_state.items()}
        if "goal_angle" in task_state and "valve_angle" in readings:
            drawn = np.array(self.task.read(view)["valve_angle"], dtype=np.float64)
            offset = task_state["goal_angle"] - drawn
            task_state["goal_angle"] = (readings["valve_angle"] + offset + math.pi) % (2 * math.pi) - math.pi
        return task_state

    # --- bus helpers -------------------------------------------------------------------
    def _sync_read(self) -> dict[int, bytes]:
        """One GroupSyncRead of the state block; per-servo status errors are checked here."""
        port = self._require_port()
        failure = ""
        for _ in range(1 + self.retries):
            try:
                result = self._reader.txPacket()
                if result != COMM_SUCCESS:
                    raise HardwareFault(f"sending the sync read failed: {self.packets.getTxRxResult(result)}")
                data, alerts = {}, []
                for servo_id in self.all_ids:
                    payload, result, error = self.packets.readRx(port, servo_id, dxl.STATE_BLOCK_LEN)
                    if result != COMM_SUCCESS:
                        failure = (f"servo {self._describe([servo_id])} did not answer the sync read "
                                   f"({self.packets.getTxRxResult(result)})")
                        break
                    if error & dxl.ERROR_ALERT:
                        alerts.append(servo_id)
                    data[servo_id] = bytes(payload)
                else:
                    for servo_id in alerts:
                        self._check_hardware_error(servo_id)
                    return data
            except BUS_ERRORS as error:
                raise HardwareFault(f"lost the serial port {self.port_name} ({error}): was the adapter unplugged?"
                                    ) from None
            port.clearPort()  # drop the rest of a broken answer before retrying
        raise HardwareFault(f"{failure} after {1 + self.retries} attempts on {self.port_name}: check its cable and "
                            "power; a corrupt packet means noise or a baud-rate mismatch")

    def _send_goals(self, joint_targets: np.ndarray) -> None:
        port = self._require_port()
        ticks = dxl.rad_to_ticks(self.joint_signs * (np.asarray(joint_targets) + self.joint_offsets))
        for servo_id, value in zip(self.servo_ids, ticks, strict=True):
            self._writer.changeParam(servo_id, list(int(value).to_bytes(4, "little")))
        try:
            result = self._writer.txPacket()
        except BUS_ERRORS as error:
            raise HardwareFault(f"lost the serial port {self.port_name} ({error}): was the adapter unplugged?"
                                ) from None
        if result != COMM_SUCCESS:
            raise HardwareFault(f"sending goal positions failed on {port.getPortName()}: "
                                f"{self.packets.getTxRxResult(result)}")

    def _ping(self, servo_id: int, attempts: int | None = None) -> int | None:
        port = self._require_port()
        for _ in range(attempts or 1 + self.retries):
            try:
                model, result, _ = self.packets.ping(port, servo_id)
            except BUS_ERRORS as error:
                raise HardwareFault(f"lost the serial port {self.port_name} ({error})") from None
            if result == COMM_SUCCESS:
                return model
        return None

    def _read(self, servo_id: int, address: int, length: int, attempts: int | None = None) -> int:
        port = self._require_port()
        for _ in range(attempts or 1 + self.retries):
            try:
                data, result, _ = self.packets.readTxRx(port, servo_id, address, length)
            except BUS_ERRORS as error:
                raise HardwareFault(f"lost the serial port {self.port_name} ({error})") from None
            if result == COMM_SUCCESS:
                return int.from_bytes(bytes(data), "little")
        raise HardwareFault(f"servo {self._describe([servo_id])} did not answer a read of register {address}: "
                            f"{self.packets.getTxRxResult(result)}")

    def _write1(self, servo_id: int, address: int, value: int) -> None:
        port = self._require_port()
        try:
            result, error = self.packets.write1ByteTxRx(port, servo_id, address, value)
        except BUS_ERRORS as exc:
            raise HardwareFault(f"lost the serial port {self.port_name} ({exc})") from None
        if result != COMM_SUCCESS:
            raise HardwareFault(f"servo {self._describe([servo_id])} did not confirm writing register {address}: "
                                f"{self.packets.getTxRxResult(result)}")
        if error & ~dxl.ERROR_ALERT:
            raise HardwareFault(f"servo {self._describe([servo_id])} refused writing {value} to register {address}: "
                                f"{self.packets.getRxPacketError(error)}")
        if error & dxl.ERROR_ALERT:
            self._check_hardware_error(servo_id)

    def _check_hardware_error(self, servo_id: int) -> None:
        bits = self._read(servo_id, dxl.ADDR_HARDWARE_ERROR, 1)
        if bits:
            raise HardwareFault(f"servo {self._describe([servo_id])} reports hardware error 0x{bits:02x} "
                                f"({dxl.describe_hardware_error(bits)}); it has switched its torque off. Remove the "
                                "cause, then power-cycle or reboot the servo (Dynamixel Wizard)")

    def _require_port(self) -> PortHandler:
        if self.port is None:
            raise HardwareFault("the D'Claw backend is not open (or was closed after a fault)")
        return self.port

    def _describe(self, ids) -> str:
        return ", ".join(f"{i} ({self._names.get(i, '?')})" for i in ids)

    def _warn_latency_timer(self) -> None:
        device = Path(os.path.realpath(self.port_name)).name
        timer = Path(f"/sys/bus/usb-serial/devices/{device}/latency_timer")
        try:
            value = int(timer.read_text())
        except (OSError, ValueError):
            return
        if value > 1:
            print(f"deploy: warning: {timer} is {value} ms; every bus read can wait that long. Set it to 1: "
                  f"echo 1 | sudo tee {timer}", file=sys.stderr)

    def info(self) -> dict:
        return {"backend": self.name, "port": self.port_name, "baud": self.baud, "servo_ids": list(self.servo_ids),
                "valve_id": self.valve_id, "reset_speed": self.reset_speed,
                "reset_tolerance": self.reset_tolerance, "reset_timeout": self.reset_timeout,
                "joint_offsets": self.joint_offsets.tolist(), "joint_signs": self.joint_signs.tolist()}
