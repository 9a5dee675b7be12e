#!/usr/bin/env python
"""Deliberate breaks and the tests that must catch them (issue 16): apply each break to the source,
run its tests, expect a failure, put the source back. Prints a markdown table for docs/testing.md.

    PYTHONPATH=$PWD/src:$PWD/tests python scripts/breaks.py            # every break
    PYTHONPATH=$PWD/src:$PWD/tests python scripts/breaks.py smoothing  # the breaks whose id contains it

A break whose text is no longer in the source (the code moved) is reported as "stale", not run:
update its file / old text after a refactor. The source file is restored in a ``finally``, even on
Ctrl-C. Not for CI: it runs the training tests once per break (minutes).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Break:
    id: str
    behaviour: str
    file: str
    old: str
    new: str
    tests: list[str]


TB = "tests/integration/test_train_behaviour.py::"
BREAKS = [
    Break("warmup-skipped", "linear warmup", "src/mabe/train.py",
          "            self.schedule.before_step(p.step)\n            step(b, group_size=group_size, last=last)",
          "            step(b, group_size=group_size, last=last)",
          [TB + "test_lr_ramps_linearly_over_the_first_epoch_then_holds_the_base_lr[1]"]),
    Break("warmup-in-epochs", "linear warmup", "src/mabe/train.py",
          "tc.lr * scale, round(tc.warmup_epochs * steps_per_epoch), tc)", "tc.lr * scale, round(tc.warmup_epochs), tc)",
          [TB + "test_lr_ramps_linearly_over_the_first_epoch_then_holds_the_base_lr"]),
    Break("class-weight-none", "class / positive weights", "src/mabe/training/losses.py",
          'loss = scene_loss(logits, b["y"], class_weight, label_smoothing)',
          'loss = scene_loss(logits, b["y"], None, label_smoothing)',
          [TB + "test_scene_step_loss_is_the_class_weighted_cross_entropy"]),
    Break("pos-weight-none", "class / positive weights", "src/mabe/training/losses.py",
          "pos_weight=pos_weight, reduction=\"none\"", "pos_weight=None, reduction=\"none\"",
          [TB + "test_pair_step_loss_is_the_pos_weighted_bce_over_labelled_cells",
           "tests/unit/training/test_losses.py::test_pair_loss_is_the_hand_written_pos_weighted_bce"]),
    Break("mixup-mask", "mixup mask", "src/mabe/training/losses.py",
          "y[perm].float(), mask & mask[perm]", "y[perm].float(), mask",
          [TB + "test_mixup_loss_counts_only_cells_labelled_in_both_windows"]),
    Break("early-stop-gt", "early stopping", "src/mabe/train.py",
          "since_best >= tc.early_stopping_patience", "since_best > tc.early_stopping_patience",
          [TB + "test_flat_f1_with_patience_1_stops_after_exactly_two_epochs"]),
    Break("resume-best", "exact resume", "src/mabe/training/progress.py",
          "best_f1=float(state[ckpt.BEST_METRIC_KEY]), best_epoch=int(state[ckpt.BEST_EPOCH_KEY]),",
          "best_f1=-1.0, best_epoch=0,",
          [TB + "test_resume_keeps_the_best_epoch_best_checkpoint_and_final_metrics"]),
    Break("augment-untouched", "augmentation", "src/mabe/training/augment.py",
          "    return dict(batch, x=x), mix", '    return dict(batch, x=batch["x"].float()), None',
          ["tests/unit/training/test_augment.py::test_noise_has_the_configured_spread_on_valid_frames_and_none_on_padding",
           "tests/unit/training/test_augment.py::test_mixup_is_the_convex_combination_with_a_permutation_of_the_batch"]),
    Break("jitter-zero", "augmentation", "src/mabe/training/batches.py",
          "self.weights,\n                                  self.cfg.augment.temporal_jitter)",
          "self.weights,\n                                  0)",
          ["tests/unit/training/test_augment.py::test_epoch_batches_carry_the_configured_temporal_jitter"]),
    Break("eval-shift-2", "augmentation (frame alignment)", "src/mabe/evaluate.py",
          "b = ts.batch(arrays, w, length)",
          "b = ts.batch(arrays, w, length, torch.full_like(w[:, 0], 2))",
          ["tests/unit/training/test_augment.py::test_predictions_line_up_with_the_frames_they_were_computed_from"]),
    # The step counts the streak in one place for both paths; this break is in the accumulation
    # path only (the group's last micro-batch), so [2] must catch it on its own.
    Break("streak-accum", "non-finite streak (grad_accum > 1)", "src/mabe/training/step.py",
          "        self._count_step(finite)\n        self._restore_buffers(finite)",
          "        bad = (~finite).to(torch.int64)\n        self.n_steps.add_(1)\n        self.skipped.add_(bad)\n"
          "        self.streak.add_(bad)\n        torch.maximum(self.worst, self.streak, out=self.worst)\n"
          "        self._restore_buffers(finite)",
          [TB + "test_non_consecutive_nonfinite_steps_do_not_add_up_to_a_streak[2]"]),
    Break("streak-step", "non-finite streak (grad_accum 1, the step's counter)", "src/mabe/training/step.py",
          "self.streak.add_(1).mul_(bad)", "self.streak.add_(bad)",
          [TB + "test_non_consecutive_nonfinite_steps_do_not_add_up_to_a_streak[1]"]),
    Break("norm-from-val", "normalisation on train only", "src/mabe/training/data.py",
          "stats = stats if stats is not None else track_stats(train_ts)",
          "stats = stats if stats is not None else track_stats(val_ts)",
          [TB + "test_normalisation_statistics_come_from_the_training_videos_only"]),
    Break("norm-not-per-batch", "normalisation of per-batch features", "src/mabe/postracks.py",
          'shift=shift, norm=arrays.get("norm"))', "shift=shift, norm=None)",
          ["tests/unit/training/test_train_data.py::test_in_memory_tracks_give_the_batches_of_the_per_batch_ones"]),
    Break("old-layout-kept", "old cache layout rebuilt", "src/mabe/prepare.py",
          'return f"videos {reason} (e.g. {folder})" if reason and reason.startswith(OLD_LAYOUT) else None',
          "return None",
          ["tests/integration/test_cache_damage.py::test_a_cache_of_the_old_float32_layout_is_named_and_rebuilt"]),
    Break("fit-on-submitted", "thresholds fitted on validation", "src/mabe/submit.py",
          "val = predictions.load(fit)", "val = predictions.load(args.predictions)",
          ["tests/unit/test_postprocess_behaviour.py::test_submit_fits_thresholds_on_the_validation_predictions_not_the_submitted_ones"]),
    Break("no-smoothing", "smoothing", "src/mabe/postprocess.py",
          "code = decide(smooth(probs, window), thr)", "code = decide(probs, thr)",
          ["tests/unit/test_postprocess_behaviour.py::test_smoothing_bridges_a_one_frame_dip_and_drops_a_one_frame_spike"]),
    Break("overlap-per-row", "overlap rule", "src/mabe/submit.py",
          'action = pd.factorize(sub["action"])[0]', "action = np.arange(n)",
          ["tests/unit/test_postprocess_behaviour.py::test_the_same_action_may_overlap_itself_but_two_actions_may_not_share_a_frame"]),
    Break("storage-ignored", "storage dtype", "src/mabe/training/batches.py",
          "DeviceStore(ts, device, cfg.train.storage_dtype,", 'DeviceStore(ts, device, "auto",',
          [TB + "test_the_trainer_stores_features_in_the_configured_dtype"]),
    Break("stream-error-dtype", "storage dtype", "src/mabe/training/batches.py",
          "d = (src.to(self.dtype).float() - src).abs()", "d = (src.to(torch.float16).float() - src).abs()",
          ["tests/unit/training/test_storage_dtype.py::test_reported_error_is_the_round_trip_through_the_stored_dtype"]),
    Break("acc-per-frame", "feature units", "src/mabe/features.py",
          "    acc = time_derivative(vel, fps)\n    body_length", "    acc = time_derivative(vel, 1.0)\n    body_length",
          ["tests/unit/test_feature_units.py::test_a_known_acceleration_reads_in_cm_per_s2"]),
    Break("split-swapped", "validation split", "src/mabe/evaluate.py",
          'return va if split == "val" else tr', 'return tr if split == "val" else va',
          [TB + "test_evaluation_reads_the_runs_validation_videos_disjoint_from_training"]),
    Break("cv-folds-ignored", "k-fold validation (mabe cv)", "src/mabe/training/data.py",
          "run_split(index, w.val_fraction, w.split_seed, w.folds, w.fold)", "run_split(index, w.val_fraction, w.split_seed)",
          ["tests/integration/test_cv.py::test_oof_covers_every_video_once_and_no_fold_saw_its_oof_videos"]),
    Break("cv-fold-trains-on-all", "k-fold validation (mabe cv)", "src/mabe/windows.py",
          "return np.sort(ids[f != fold]), np.sort(ids[f == fold])", "return np.sort(ids), np.sort(ids[f == fold])",
          ["tests/unit/test_windows.py::test_run_split_k_fold_validates_on_its_fold_and_trains_on_the_rest"]),
]


def run_tests(tests: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def check(b: Break) -> str:
    path = ROOT / b.file
    original = path.read_text()
    if original.count(b.old) != 1:
        return "stale"
    try:
        path.write_text(original.replace(b.old, b.new))
        broken = run_tests(b.tests)
    finally:
        path.write_text(original)
    if broken == 0:
        return "NOT CAUGHT"
    return "caught" if run_tests(b.tests) == 0 else "caught, but fails on clean code too"


def main(argv: list[str]) -> int:
    chosen = [b for b in BREAKS if not argv or any(a in b.id for a in argv)]
    print("| break | behaviour | test(s) | result |\n|---|---|---|---|")
    bad = 0
    for b in chosen:
        t0 = time.perf_counter()
        result = check(b)
        bad += result != "caught"
        names = ", ".join(f"`{t.split('::')[-1]}`" for t in b.tests)
        print(f"| `{b.id}` | {b.behaviour} | {names} | {result} ({time.perf_counter() - t0:.0f}s) |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
