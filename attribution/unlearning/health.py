"""Is an unlearning outcome a silent no-op? `unlearning_problem(metrics)` reads the metrics an unlearn run
records (the stage's summary: `forget_loss.before`, `forget_loss.after`, optionally `forget_loss.retrained`,
`forget_loss.se`, `calibration_r2`, `datamodel_scale`) and returns one line saying what went wrong and what
to try, or None. `assay unlearn` exits non-zero with that line.

Three failures, checked in this order (the first explains the later ones):
1. The scale calibration failed: r^2 < 0 means the fitted one-parameter model predicts the calibration
   retrains' changes worse than their mean does, so the attribution scores carry no usable removal effect.
2. The fitted scale is 0: every DMM target equals the model's own output, so fine-tuning toward it
   unlearns nothing.
3. The forget loss did not move. With a retrained model measured, "moved" is measured against its gap
   (retrained - before): closing less than `min_gap_closed` (10%) of it, or moving the wrong way, is no
   unlearning. A gap within the noise says retraining itself does not change the forget loss, and then
   not moving is right. Without a retrained model the move is compared with the noise alone.
   The noise is the standard error of the forget set's mean loss (`forget_loss.se`: the per-example
   losses' standard deviation / sqrt(|F|)): a change smaller than that is no larger than what drawing
   another forget set of the same kind would change the mean by. Without it, 0.1% of the loss (the
   drift of a fine-tuning that changes nothing) stands in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

RELATIVE_NOISE = 1e-3  # fallback noise, as a share of the forget loss, when no standard error is recorded


def _number(metrics: Mapping, key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def unlearning_problem(metrics: Mapping[str, float], min_gap_closed: float = 0.1) -> str | None:
    """One line naming why an unlearning outcome is a no-op and what to try; None when it is not."""
    r2 = _number(metrics, "calibration_r2")
    if r2 is not None and r2 < 0:
        return (
            f"scale calibration failed (r^2 = {r2:.2f} < 0: the scores predict the calibration retrains' "
            "changes worse than their mean); try more --calibration-retrains or a larger "
            "--calibration-fraction, scores from another method (ekfac), or --method oracle"
        )
    scale = _number(metrics, "datamodel_scale")
    if scale is not None and scale <= 0:
        return (
            f"the datamodel scale is {scale:g}: DMM's targets equal the model's own outputs and nothing is "
            "unlearned; pass --scale (e.g. 'analytic'), or recompute the scores on this model"
        )
    before, after = _number(metrics, "forget_loss.before"), _number(metrics, "forget_loss.after")
    if before is None or after is None:
        return None
    se = _number(metrics, "forget_loss.se")
    noise = se if se is not None and se > 0 else RELATIVE_NOISE * max(abs(before), 1e-12)
    moved = after - before
    retrained = _number(metrics, "forget_loss.retrained")
    if retrained is not None and abs(retrained - before) > noise:
        closed = moved / (retrained - before)
        if closed < min_gap_closed:
            return (
                f"the forget loss did not move toward the retrained model's ({before:.4g} -> {after:.4g}, "
                f"retrained {retrained:.4g}: {100 * closed:.0f}% of the gap closed, under "
                f"{100 * min_gap_closed:.0f}%); try a larger --lr or more --epochs"
            )
        return None
    if retrained is None and abs(moved) <= noise:
        return (
            f"the forget loss did not move ({before:.4g} -> {after:.4g}, within its noise {noise:.2g}); "
            "try a larger --lr or more --epochs"
        )
    return None
