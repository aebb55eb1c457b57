"""An asymmetric-critic variant of D'Claw turn, registered by tests only: the critic also sees
the valve velocity, the actor's observation is unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from array_api_compat import array_namespace

from robots.dclaw.turn import OBS_LAYOUT, TurnTask
from toolkit.contract.obs_layout import ObsLayout

NAME = "test-asymmetric-turn"
CRITIC_LAYOUT = ObsLayout(OBS_LAYOUT.fields + (("valve_vel", 1),))


@dataclass
class AsymmetricTurnTask(TurnTask):
    """TurnTask whose critic observation appends the (privileged) valve velocity."""

    name = NAME

    @property
    def critic_obs_layout(self) -> ObsLayout:
        return CRITIC_LAYOUT

    def privileged(self, sim) -> dict:
        return {"valve_vel": sim.qvel[:, self._valve_dof:self._valve_dof + 1]}

    def critic_observe(self, readings, task_state, joint_targets, last_action, privileged):
        xp = array_namespace(readings["joint_pos"])
        obs = self.observe(readings, task_state, joint_targets, last_action)
        return xp.concat([obs, xp.astype(privileged["valve_vel"], obs.dtype)], axis=-1)
