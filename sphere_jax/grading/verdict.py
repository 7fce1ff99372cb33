"""The result of one answer check."""

from __future__ import annotations

from dataclasses import dataclass

REASONS = ("equal", "not_equal", "unparsable", "timed_out")


@dataclass(frozen=True)
class Verdict:
    """Whether a prediction equals its gold answer, and why.

    Attributes:
        equal: True only when `reason` is "equal".
        reason: One of "equal", "not_equal", "unparsable" (the gold answer or the prediction
            could not be read as math, and their normalised texts differ) and "timed_out" (the
            check ran past its deadline or its memory limit; it counts as not equal).
    """

    equal: bool
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"invalid verdict reason {self.reason!r}; expected one of {REASONS}")
        if self.equal != (self.reason == "equal"):
            raise ValueError(f"verdict with reason {self.reason!r} cannot have equal={self.equal}")


EQUAL = Verdict(True, "equal")
NOT_EQUAL = Verdict(False, "not_equal")
UNPARSABLE = Verdict(False, "unparsable")
TIMED_OUT = Verdict(False, "timed_out")
