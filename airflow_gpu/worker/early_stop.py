"""When to stop ALS before ``--iterations``: the training loss has stopped improving.

ALS lowers its loss every iteration, but after a few the steps get so small that the
ranking no longer changes: on the demo's data the loss moves by less than 0.1% per
iteration from about iteration 8 of 15, and precision@10 stays put while the second half
of the training time buys nothing (benchmarks/README.md, "Early stopping").

The rule: stop once the loss improved by less than ``tolerance`` (relative to the previous
iteration's loss) for ``patience`` iterations in a row. A single small step is not enough,
because ALS sometimes crawls for one iteration and then drops again; a loss that rises is
"no improvement" too. ``fit`` in train.py stops implicit's loop by raising from its
per-iteration callback: both implicit's CPU and GPU ALS update their factor matrices in
place, so the model then holds the factors of the last finished iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

# Relative improvement below which an iteration counts as "no progress", and how many of those
# in a row end training. Chosen on the demo's data (benchmarks/early_stop.py).
DEFAULT_TOLERANCE = 1e-3
DEFAULT_PATIENCE = 2

REACHED_MAXIMUM = "reached --iterations"
NO_LOSS = "ran --iterations: no loss computed (--no-loss), so nothing to watch"
OFF = "ran --iterations: early stopping off"


@dataclass
class LossPlateau:
    tolerance: float = DEFAULT_TOLERANCE
    patience: int = DEFAULT_PATIENCE
    _previous: float | None = None
    _flat: int = 0

    def update(self, loss: float | None) -> str | None:
        """Feed one iteration's loss; a reason to stop, or None to go on."""
        if loss is None:
            return None
        previous, self._previous = self._previous, loss
        if previous is None:
            return None
        improvement = (previous - loss) / abs(previous) if previous else 0.0
        self._flat = self._flat + 1 if improvement < self.tolerance else 0
        if self._flat >= self.patience:
            return (
                f"converged: the loss improved by less than {self.tolerance:g} (relative) for "
                f"{self.patience} iterations in a row"
            )
        return None
