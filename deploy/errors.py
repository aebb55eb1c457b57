"""Errors that stop a deployment run, and the process exit status each one maps to.

Every stop the runner can take on purpose has its own exit status, so that scripts and CI can
tell a refused model from a hardware fault without parsing text:

====  ====================  ===========================================================
code  name                  meaning
====  ====================  ===========================================================
0     OK                    every requested episode ran to its end (success or not)
1     (uncaught)            an internal error: a bug, with Python's traceback
2     USAGE                 bad command line (tyro/argparse convention)
3     POLICY_MISMATCH       the ONNX file is unreadable or does not match the backend's
                            robot/task (robot name, joints, obs layout, rates); nothing moved
4     HARDWARE_FAULT        serial port missing or lost, a servo not answering, corrupt
                            packets, a servo's hardware error status, stale sensor data,
                            reset pose not reached
5     NON_FINITE            an observation or action contained NaN/inf (or the policy
                            failed to produce an action); the robot was stopped (hold, then
                            torque off) before the value was used
6     WATCHDOG_OVERRUN      too many consecutive control-loop deadline overruns
7     LOG_FAILED            the HDF5 log could not be written (disk full, permissions)
130   INTERRUPTED           Ctrl-C (SIGINT); 143 for SIGTERM, 129 for SIGHUP
====  ====================  ===========================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses of ``python -m deploy.run`` (see the module docstring)."""

    OK = 0
    USAGE = 2
    POLICY_MISMATCH = 3
    HARDWARE_FAULT = 4
    NON_FINITE = 5
    WATCHDOG_OVERRUN = 6
    LOG_FAILED = 7
    INTERRUPTED = 130


class DeployError(RuntimeError):
    """A deliberate stop of a deployment run; ``exit_code`` is the process status."""

    exit_code: ExitCode = ExitCode.HARDWARE_FAULT


class PolicyMismatchError(DeployError):
    """The policy cannot drive this backend (refused before any motion)."""

    exit_code = ExitCode.POLICY_MISMATCH


class HardwareFault(DeployError):
    """The robot or its bus misbehaved: missing port, silent servo, corrupt packets, servo
    hardware error, reset pose not reached."""

    exit_code = ExitCode.HARDWARE_FAULT


class StaleSensorData(HardwareFault):
    """Sensor readings stopped updating (same device timestamp for several reads)."""


class NonFiniteError(DeployError):
    """An observation or action was NaN/inf."""

    exit_code = ExitCode.NON_FINITE


class WatchdogOverrun(DeployError):
    """The control loop missed its deadline too many times in a row."""

    exit_code = ExitCode.WATCHDOG_OVERRUN


class LogError(DeployError):
    """The HDF5 writer failed; a run is not continued unlogged."""

    exit_code = ExitCode.LOG_FAILED


class Interrupted(DeployError):
    """A termination signal arrived (SIGINT/SIGTERM/SIGHUP)."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        # Shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM).
        self.exit_code = 128 + signum


class StopSignalGate:
    """Where a stop signal's :class:`Interrupted` is raised: at once, or, inside ``with
    STOP_SIGNAL_GATE:``, when the block ends. The runner logs a step's row and counts the step
    inside one, so an episode's recorded outcome counts every row it logged. (Masking the signal
    would not do: another thread, such as the log queue's feeder, receives it and Python then runs
    the handler in the main thread anyway.)"""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    def interrupt(self, signum: int) -> None:
        """The signal handler's body (deploy.run installs it)."""
        if self.deferring:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def __enter__(self) -> None:
        self.deferring = True

    def __exit__(self, kind, error, trace) -> None:
        self.deferring = False
        signum, self.pending = self.pending, None
        if signum is not None and kind is None:
            raise Interrupted(signum)


#: Signal handlers are process-wide, and so is their gate.
STOP_SIGNAL_GATE = StopSignalGate()
