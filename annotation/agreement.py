"""Inter-annotator agreement and the final-label rule.

Agreement is Krippendorff's alpha for nominal data over unit labels (for LFM
trajectories a unit is a step and the label is productive yes/no). Units with
fewer than two labels carry no information about agreement and are left out;
"unsure" counts as a missing label. Alpha is 1 for perfect agreement, 0 for
agreement at chance level, negative for systematic disagreement, and None when
there is nothing to compare (or every label is the same value, where alpha is undefined
by its formula: we report observed agreement 1.0 in that case as alpha = 1.0).

The final label of a unit: adjudicated if a reviewer decided it, else the
unanimous label, else the strict-majority label; a tie stays unresolved and
puts the item in the disagreement queue.
"""

from collections import Counter
from collections.abc import Iterable
from typing import Any


class AlphaAccumulator:
    """Streams units into the coincidence matrix so a project's alpha needs constant memory."""

    def __init__(self):
        self.coincidence: Counter = Counter()
        self.pairable = 0

    def add_unit(self, labels: Iterable[Any]) -> None:
        values = [v for v in labels if v is not None]
        m = len(values)
        if m < 2:
            return
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                if pairs:
                    self.coincidence[(c, k)] += pairs / (m - 1)
        self.pairable += m

    def alpha(self) -> float | None:
        n = sum(self.coincidence.values())
        if n <= 1:
            return None
        marg: Counter = Counter()
        for (c, _k), v in self.coincidence.items():
            marg[c] += v
        observed = sum(v for (c, k), v in self.coincidence.items() if c != k)
        expected = sum(marg[c] * marg[k] for c in marg for k in marg if c != k) / (n - 1)
        if expected == 0:
            return 1.0 if observed == 0 else None
        return 1.0 - observed / expected


def krippendorff_alpha(units: Iterable[Iterable[Any]]) -> float | None:
    acc = AlphaAccumulator()
    for u in units:
        acc.add_unit(u)
    return acc.alpha()


def percent_agreement(units: Iterable[Iterable[Any]]) -> float | None:
    """Share of units (with two or more labels) on which every label is the same."""
    total = agreed = 0
    for u in units:
        values = [v for v in u if v is not None]
        if len(values) < 2:
            continue
        total += 1
        agreed += len(set(values)) == 1
    return agreed / total if total else None


def resolve_unit(labels: list[Any]) -> tuple[Any, str | None]:
    """(label, method) for one unit from its answers' labels; (None, None) when unresolved."""
    values = [v for v in labels if v is not None]
    if not values:
        return None, None
    counts = Counter(values).most_common()
    if len(counts) == 1:
        return counts[0][0], "unanimous"
    (top, n_top), (_second, n_second) = counts[0], counts[1]
    if n_top > n_second and n_top * 2 > len(values):
        return top, "majority"
    return None, None
