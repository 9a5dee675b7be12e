"""The vocabulary of the MABe data, one home for each fact: actions, body parts and slots, mice,
and the columns of every file (metadata, tracking, annotation, solution, submission).

See ../shared/docs/mabe-format.md for the format these names come from. Every stage imports them from
here (``mabe.data`` re-exports them); nothing here reads a file.
"""

from __future__ import annotations

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

MOUSE_FIELDS: tuple[str, ...] = ("strain", "color", "sex", "id", "age", "condition")
METADATA_COLUMNS: tuple[str, ...] = (
    "lab_id", "video_id",
    *(f"mouse{m}_{f}" for m in range(1, MAX_MICE + 1) for f in MOUSE_FIELDS),
    "frames_per_second", "video_duration_sec", "pix_per_cm_approx", "video_width_pix", "video_height_pix",
    "arena_width_cm", "arena_height_cm", "arena_shape", "arena_type", "body_parts_tracked",
    "behaviors_labeled", "tracking_method",
)  # the 38 columns of train.csv / test.csv, in file order
POSITIVE_COLUMNS: tuple[str, ...] = ("frames_per_second", "pix_per_cm_approx", "video_width_pix", "video_height_pix")
NUMERIC_COLUMNS: tuple[str, ...] = ("video_duration_sec", "arena_width_cm", "arena_height_cm")  # NaN allowed
TRACKING_COLUMNS: tuple[str, ...] = ("video_frame", "mouse_id", "bodypart", "x", "y")
ANNOTATION_COLUMNS: tuple[str, ...] = ("agent_id", "target_id", "action", "start_frame", "stop_frame")
MAX_FRAMES = 20_000_000  # a video_frame beyond this is corruption, not a video (~185 h at 30 fps)

SOLUTION_COLUMNS: tuple[str, ...] = (
    "lab_id", "video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame", "behaviors_labeled",
)  # the metric's solution frame: annotations joined with their video's labelled behaviours
INTERVAL_COLUMNS: tuple[str, ...] = ("video_id", *ANNOTATION_COLUMNS)  # one predicted interval
SUBMISSION_COLUMNS: tuple[str, ...] = ("row_id", *INTERVAL_COLUMNS)  # the submission CSV, in file order
