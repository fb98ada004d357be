"""The risk limits, applied in code to every advice after the stage answers (pure).

* ``cap_position``: one advice sizes at most ``risk.max_position_size_pct``;
* ``allocate``: over the cycle's advice, best score first, at most ``risk.max_positions``
  positions and ``risk.max_total_exposure_pct`` in total; what does not fit is cut (to zero if
  need be) and says which limit cut it in ``limited_by``.

A model never decides how much risk the cycle takes: these functions do.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.config import Risk
from runner.models import AdviceAnswer

POSITION = "max_position_size_pct"
EXPOSURE = "max_total_exposure_pct"
POSITIONS = "max_positions"


def _cut(answer: AdviceAnswer, size: float, limit: str) -> AdviceAnswer:
    limited = [*answer.limited_by, limit] if limit not in answer.limited_by else list(answer.limited_by)
    return answer.model_copy(update={"position_size_pct": round(size, 4), "limited_by": limited})


def cap_position(answer: AdviceAnswer, risk: Risk) -> AdviceAnswer:
    """The advice with its size cut to the largest one position may take."""
    if answer.position_size_pct > risk.max_position_size_pct:
        return _cut(answer, risk.max_position_size_pct, POSITION)
    return answer


def allocate(items: Iterable[tuple[str, float, AdviceAnswer]], risk: Risk) -> dict[str, AdviceAnswer]:
    """``(symbol, score, advice)`` -> symbol -> advice within the cycle's limits.

    Best score first (ties by symbol, so the result does not depend on finishing order); a
    HOLD or a zero size takes no room.
    """
    out: dict[str, AdviceAnswer] = {}
    used, positions = 0.0, 0
    for symbol, _, answer in sorted(items, key=lambda item: (-item[1], item[0])):
        answer = cap_position(answer, risk)
        size = answer.position_size_pct
        if answer.action == "HOLD" or size <= 0:
            out[symbol] = answer
            continue
        if positions >= risk.max_positions:
            answer = _cut(answer, 0.0, POSITIONS)
        elif used + size > risk.max_total_exposure_pct + 1e-9:
            answer = _cut(answer, max(0.0, risk.max_total_exposure_pct - used), EXPOSURE)
        if answer.position_size_pct > 0:
            positions += 1
            used += answer.position_size_pct
        out[symbol] = answer
    return out


def exposure(answers: Iterable[AdviceAnswer]) -> float:
    """The total size of the positions advised, in percent."""
    return round(sum(a.position_size_pct for a in answers if a.action != "HOLD"), 4)
