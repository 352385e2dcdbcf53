"""Progress of a planned multi-phase job: the phase, its ETA and the overall ETA, printed every few seconds.

A ``Progress`` holds the planned phases (a key, a label, the estimated seconds and, for a training run, its directory
and step count). It observes a ``Study`` (``start(key)`` / ``finish(key)`` around each timed step) and prints from a
background thread. A training phase's fraction done is read from its ``metrics.jsonl`` (the last logged step), any
other phase's from its elapsed time over its estimate. The overall ETA is the current phase's ETA plus the estimates
of the phases still to come, scaled by how far the finished phases ran over or under their estimates.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PRINT_EVERY_S = 15.0
# The finished phases' actual/estimated time ratio, applied to the later phases, is kept in these bounds: one phase
# hit by a burst of load should not make the forecast swing wildly.
SLOWDOWN_BOUNDS = (0.5, 3.0)


@dataclass
class Phase:
    key: str
    label: str
    estimate_s: float
    run_dir: Path | None = None  # training phases: where metrics.jsonl grows
    steps: int = 0
    started: float | None = None
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    def fraction(self) -> float | None:
        """Fraction done by the training steps logged so far (None when not a training phase or nothing logged)."""
        if self.run_dir is None or not self.steps:
            return None
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            return None
        step = 0
        for line in metrics.read_text().splitlines()[-20:]:
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (json.JSONDecodeError, ValueError, TypeError):
                continue
        return min(1.0, step / self.steps) if step else None


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    phases: list[Phase]
    name: str = "demo"
    print_every_s: float = PRINT_EVERY_S
    stream: object = field(default_factory=lambda: sys.stdout)  # where the lines go, even if stdout is redirected
    started: float = field(default_factory=time.perf_counter)
    _current: Phase | None = None
    _printed: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._by_key = {p.key: p for p in self.phases}

    # -- the Study observer interface ---------------------------------------------------------------------------------

    def start(self, key: str) -> None:
        phase = self._by_key.get(key)
        if phase is None:  # a parent step ("pretrain") or one the plan did not foresee
            return
        phase.started, self._current = time.perf_counter(), phase
        self.report()

    def finish(self, key: str) -> None:
        phase = self._by_key.get(key)
        if phase is not None and phase.started is not None:
            phase.finished = time.perf_counter()
            if self._current is phase:
                self._current = None

    # -- forecast --------------------------------------------------------------------------------------------------

    def slowdown(self) -> float:
        done = [p for p in self.phases if p.finished is not None]
        estimated = sum(p.estimate_s for p in done)
        if not estimated:
            return 1.0
        low, high = SLOWDOWN_BOUNDS
        return min(high, max(low, sum(p.elapsed_s for p in done) / estimated))

    def phase_eta_s(self, phase: Phase) -> float:
        fraction = phase.fraction()
        if fraction:  # from the measured pace of this very phase
            return phase.elapsed_s * (1 - fraction) / fraction
        return max(0.0, phase.estimate_s * self.slowdown() - phase.elapsed_s)

    def eta_s(self) -> float:
        """Seconds until the last planned phase ends."""
        # The phases after the latest one to start: on a resumed run the finished ones before it never start again.
        begun = [i for i, p in enumerate(self.phases) if p.started is not None]
        pending = self.phases[begun[-1] + 1 if begun else 0:]
        current = self.phase_eta_s(self._current) if self._current is not None else 0.0
        return current + self.slowdown() * sum(p.estimate_s for p in pending)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        total = f"overall ETA {clock(self.eta_s())} (elapsed {clock(elapsed)})"
        phase = self._current
        if phase is None:
            return f"[{self.name}] {total}"
        number = self.phases.index(phase) + 1
        fraction = phase.fraction()
        done = f"{100 * fraction:.0f}% " if fraction is not None else ""
        return (f"[{self.name}] phase {number}/{len(self.phases)} {phase.label}: {done}"
                f"phase ETA {clock(self.phase_eta_s(phase))} · {total}")

    def report(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._printed = time.perf_counter()

    # -- the printing thread ------------------------------------------------------------------------------------------

    def __enter__(self) -> "Progress":
        def loop() -> None:
            while not self._stop.wait(self.print_every_s / 3):
                recent = time.perf_counter() - self._printed < self.print_every_s  # a phase start just printed
                if self._current is not None and not recent:
                    self.report()

        self._thread = threading.Thread(target=loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> list[dict[str, float | str]]:
        """Estimated and actual seconds of every phase (for the results file)."""
        return [{"phase": p.key, "label": p.label, "estimated_s": round(p.estimate_s, 1),
                 "actual_s": round(p.elapsed_s, 1) if p.started is not None else None} for p in self.phases]
