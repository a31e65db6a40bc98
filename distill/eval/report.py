"""Plain-text rendering of an evaluation summary for the terminal."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """A small table: per region Dice and HD95 (mean ± std, median) over ``n_cases`` cases."""
    lines = [
        f"{summary['n_cases']} cases",
        f"{'region':<7}{'Dice mean±std':>18}{'median':>9}{'HD95 mm mean':>15}{'median':>9}",
    ]
    for region in summary["regions"]:
        stats = summary["per_region"][region]
        dice, hd = stats.get("dice") or {}, stats.get("hd95") or {}
        dice_ms = f"{_fmt(dice.get('mean'), 3)}±{_fmt(dice.get('std'), 3)}"
        lines.append(
            f"{region:<7}{dice_ms:>18}{_fmt(dice.get('median'), 3):>9}"
            f"{_fmt(hd.get('mean'), 2):>15}{_fmt(hd.get('median'), 2):>9}"
        )
    return "\n".join(lines)
