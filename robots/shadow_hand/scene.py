"""The Shadow Hand + cube scene, composed with ``mujoco.MjSpec`` from the gymnasium-robotics
MJCF at run time (the XML files are never copied into this repository).

From ``manipulate_block.xml`` (hand, defaults, tendons, actuators, meshes, textures) we drop
the block, the free-floating target block (6 needless dofs) and the floor, then add:

* ``cube``: a free 5 cm cube (density 567, as gymnasium's block) with a ``cube`` site;
* ``goal``: a mocap body with a translucent, non-colliding cube showing the goal orientation;
* visual only (:func:`_add_decor`): the camera ``overview`` (hand, cube and goal marker in view),
  a grey gradient sky instead of gymnasium's flat green, and a checker floor far below the hand
  that collides with nothing.

Without a colliding floor a dropped cube keeps falling, which the task's fall check detects; it also
spares the collision checks of 30 hand geoms against a plane. Actuators are renamed to the
joint names of :data:`robots.shadow_hand.spec.JOINT_NAMES` (``robot0:A_FFJ1`` -> ``FFJ1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from robots.shadow_hand.spec import PHYSICS_DT, hand_assets_dir

if TYPE_CHECKING:
    import mujoco

CUBE_HALF_SIZE = 0.025
#: The cube's spawn position (world frame), lying on a face 1.3 cm above the open palm: a
#: 0.1 rad wrist flexion (the reset noise) raises the palm ~1.2 cm under the cube, and a cube
#: spawned inside the palm is shot off it.
CUBE_START = np.array([1.0, 0.87, 0.18])
#: Where the cube rests on the open palm: the in-hand target position of the distance term,
#: the origin of the cube-position observation and the reference of the fall check.
CUBE_HOLD_POS = np.array([1.0, 0.87, 0.167])
#: Where the goal marker floats, beside and above the hand (visual only).
GOAL_MARKER_POS = np.array([1.0, 0.87, 0.30])
#: The ``overview`` camera: where it is and the point it looks at (hand, cube and goal marker in view).
OVERVIEW_EYE = np.array([0.71, 0.59, 0.477])
OVERVIEW_TARGET = np.array([1.0, 0.88, 0.19])
#: Height of the visual floor: lower than a dropped cube falls before the fall check ends its episode
#: (CUBE_HOLD_POS z - 0.24), so no cube is ever drawn passing through it.
FLOOR_Z = -0.15
#: Arena per env (C engine): the scene peaks at ~0.13 MB under random actions; the MJCF's
#: nstack=600000 would reserve 8 MB per env (2 GB for 256 envs).
ARENA_BYTES = 1 << 20
#: Contacts and constraint rows per world for mujoco-warp, which allocates them up front
#: (its default guess, 64 rows, overflows): peaks under random actions are 16 and 121.
NCONMAX, NJMAX = 48, 256


def build_scene(timestep: float = PHYSICS_DT) -> mujoco.MjModel:
    """Compile the hand + cube + goal-marker scene with physics step ``timestep`` (s)."""
    import mujoco

    spec = mujoco.MjSpec.from_file(str(hand_assets_dir() / "manipulate_block.xml"))
    for body in ("object", "target", "floor0"):
        spec.delete(spec.body(body))
    spec.delete(spec.geom("floor0"))
    for actuator in spec.actuators:
        actuator.name = actuator.name.removeprefix("robot0:A_")
    spec.option.timestep = timestep
    spec.nstack = -1
    spec.memory = ARENA_BYTES
    spec.nconmax, spec.njmax = NCONMAX, NJMAX

    box = mujoco.mjtGeom.mjGEOM_BOX
    size = [CUBE_HALF_SIZE] * 3
    cube = spec.worldbody.add_body(name="cube", pos=CUBE_START.tolist())
    cube.add_freejoint(name="cube")
    # condim 4 (torsional friction) as gymnasium's block: lets fingertips twist the cube.
    cube.add_geom(name="cube", type=box, size=size, density=567, condim=4, material="material:object")
    cube.add_site(name="cube", size=[0.005] * 3, rgba=[1, 0, 0, 0])
    goal = spec.worldbody.add_body(name="goal", pos=GOAL_MARKER_POS.tolist(), mocap=True)
    goal.add_geom(name="goal", type=box, size=size, contype=0, conaffinity=0, group=2, density=0,
                  material="material:target")
    _add_decor(spec)
    return spec.compile()


def _add_decor(spec: mujoco.MjSpec) -> None:
    """Camera ``overview``, a neutral sky and a floor far below the hand: visual only.

    The floor is a massless plane that collides with nothing (contype = conaffinity = 0), in its
    own body added last, so the ids of every other body and geom stay as they were; it lies lower
    than a dropped cube falls before the fall check ends the episode (0.24 m below the palm).
    """
    import mujoco

    eye, target = OVERVIEW_EYE, OVERVIEW_TARGET
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    camera = spec.worldbody.add_camera(name="overview", pos=eye.tolist())
    camera.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
    camera.alt.xyaxes = [*right, *np.cross(right, forward)]
    for texture in spec.textures:  # gymnasium's flat green sky
        if texture.type == mujoco.mjtTexture.mjTEXTURE_SKYBOX:
            texture.rgb1, texture.rgb2 = [0.55, 0.6, 0.68], [0.12, 0.13, 0.16]
    spec.add_texture(name="backdrop", type=mujoco.mjtTexture.mjTEXTURE_2D, builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
                     rgb1=[0.35, 0.35, 0.4], rgb2=[0.25, 0.25, 0.3], width=256, height=256)
    material = spec.add_material(name="backdrop", texrepeat=[10, 10])
    material.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "backdrop"
    floor = spec.worldbody.add_body(name="backdrop", pos=[CUBE_HOLD_POS[0], CUBE_HOLD_POS[1], FLOOR_Z])
    floor.add_geom(name="backdrop", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1.0, 1.0, 0.01], contype=0,
                   conaffinity=0, density=0, group=1, material="backdrop")
