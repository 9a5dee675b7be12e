"""Read and validate the MABe layout: metadata csv, long-format tracking parquet, annotation parquet."""

from __future__ import annotations

# ----------------------------------------------------------------------------- vocabulary

SELF_ACTIONS: tuple[str, ...] = (
    "biteobject", "climb", "dig", "exploreobject", "freeze", "genitalgroom", "huddle", "rear",
    "rest", "run", "selfgroom",
)
PAIR_ACTIONS: tuple[str, ...] = (
    "allogroom", "approach", "attack", "attemptmount", "avoid", "chase", "chaseattack", "defend",
    "disengage", "dominance", "dominancegroom", "dominancemount", "ejaculate", "escape", "flinch",
    "follow", "intromit", "mount", "reciprocalsniff", "shepherd", "sniff", "sniffbody", "sniffface",
    "sniffgenital", "submit", "tussle",
)
ACTIONS: tuple[str, ...] = tuple(sorted(SELF_ACTIONS + PAIR_ACTIONS))  # 37, the label axis everywhere
ACTION_INDEX: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}

HEADPIECE_PARTS: tuple[str, ...] = tuple(
    f"headpiece_{a}{b}{c}" for a in ("bottom", "top") for b in ("back", "front") for c in ("left", "right")
)
BODYPARTS: tuple[str, ...] = tuple(sorted((
    "body_center", "ear_left", "ear_right", "head", "hip_left", "hip_right", "lateral_left",
    "lateral_right", "neck", "nose", "spine_1", "spine_2", "tail_base", "tail_middle_1",
    "tail_middle_2", "tail_midpoint", "tail_tip",
) + HEADPIECE_PARTS))  # the 25 names real videos use

# 18 slots: every non-headpiece name keeps its own slot; the 8 headpiece markers (a head-mounted
# device tracked by some labs) collapse into one "headpiece" slot, their mean.
DEFAULT_SLOTS: tuple[str, ...] = tuple(p for p in BODYPARTS if not p.startswith("headpiece_")) + ("headpiece",)
BODYPART_SYNONYMS: dict[str, str] = {p: ("headpiece" if p.startswith("headpiece_") else p) for p in BODYPARTS}

MAX_MICE = 4
