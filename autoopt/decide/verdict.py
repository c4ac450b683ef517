"""The paired verdict: is config A better than config B, on the seeds both ran?

Confirmation trains every config on the same seeds, so the comparison is paired: per seed,
the signed difference ``A - B`` (``B - A`` for a minimized metric; positive always means A is
better), then the mean and a Student-t 95% interval over the seeds.

Differences are judged on what was measured, never on float noise:

- an accuracy-like metric is a count of correct validation examples. Each value is turned
  back into its count (``round(metric * n_val)``), so two configs with the same count on a
  seed differ by exactly 0, whatever float32 made of the fraction;
- any other metric (RMSE) is a float32 reduction, good to about 6 significant digits: a
  difference within ``REL_TOL`` of the values' magnitude is 0.

An interval is never narrower than the evidence allows. Accuracy moves in steps of one example,
so two seeds that are each 2 examples behind have a standard deviation of 0, which is no
evidence of anything. The standard deviation of the differences is therefore floored at one
example's worth (``1 / n_val``), what the metric can resolve, and at the seed-to-seed noise of
the other pairs in the same comparison (``Noise``: each other config's paired differences against
a common reference, their standard deviation over seeds; the lower quartile of those, so a pair
is never taken as steadier than the steadiest quarter of the pairs beside it, while one erratic
config does not widen every interval). A floor only widens: a pair noisier than it keeps its own
spread.

The verdict is ``better`` when the whole interval is above 0, ``worse`` when it is below,
``tie`` otherwise, and always when every difference is 0 or there is one seed: one seed
decides nothing.

>>> p = paired([0.95, 0.96, 0.97], [0.94, 0.95, 0.96], "maximize", n_val=1000)
>>> p.deltas, p.verdict
((0.01, 0.01, 0.01), 'better')
>>> paired([0.9450, 0.9450], [0.9475, 0.9475], "maximize", n_val=800).verdict  # 2 examples behind, twice
'tie'
>>> paired([0.9716, 0.9733], [0.97160001, 0.97329999], "maximize", n_val=2400).verdict
'tie'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autoopt.base.direction import sign
from autoopt.evidence import Paired

REL_TOL = 1e-6  # float32 carries ~7 significant digits; a reduction over a split loses about one


def resolution(n_val: int | None) -> float | None:
    """The smallest difference an accuracy on ``n_val`` examples can show (one example), or None
    for a metric without counts."""
    return 1.0 / n_val if n_val else None


def signed_deltas(a: Sequence[float | None], b: Sequence[float | None], direction: str, *,
                  n_val: int | None = None) -> list[float]:
    """Per seed, A's metric minus B's, signed so that positive means A is better; seeds where
    either run did not finish are left out. With ``n_val`` (an accuracy on that many
    examples), the difference of correct counts over ``n_val``; otherwise a difference within
    ``REL_TOL`` of the values is 0."""
    s = sign(direction)
    out = []
    for x, y in zip(a, b, strict=True):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if n_val:
            out.append(s * (round(x * n_val) - round(y * n_val)) / n_val)
            continue
        d = s * (x - y)
        out.append(0.0 if abs(d) <= REL_TOL * max(abs(x), abs(y)) else d)
    return out


@dataclass(frozen=True)
class Noise:
    """The seed-to-seed noise of a paired difference, as the pairs of one comparison show it: the
    lower quartile of their standard deviations over seeds, and how many pairs it was read from."""

    sd: float
    pairs: int

    @classmethod
    def pooled(cls, groups: Iterable[Sequence[float]]) -> Noise | None:
        """The noise of ``groups`` (each pair's differences over its seeds), or None when no pair
        has two seeds.

        >>> n = Noise.pooled([[0.01, 0.03], [0.0, 0.0, 0.03], [0.1, 0.5], [0.2]])
        >>> round(n.sd, 4), n.pairs
        (0.0157, 3)
        """
        sds = sorted(statistics.stdev(g) for g in groups if len(g) >= 2)
        if not sds:
            return None
        return cls(statistics.quantiles(sds, n=4, method="inclusive")[0] if len(sds) > 1 else sds[0], len(sds))


def interval(deltas: Sequence[float], *, noise: Noise | None = None,
             floor: float = 0.0) -> tuple[float, tuple[float, float] | None]:
    """The mean of ``deltas`` and its two-sided 95% t-interval (None with fewer than two); the
    standard deviation never under ``floor`` nor under ``noise`` (the other pairs').

    >>> mean, ci = interval([1.0, 2.0, 3.0])
    >>> mean, [round(v, 3) for v in ci]
    (2.0, [-0.484, 4.484])
    >>> interval([-0.0025, -0.0025])[1]  # identical deltas, nothing known of the noise: no width
    (-0.0025, -0.0025)
    >>> [round(v, 4) for v in interval([-0.0025, -0.0025], floor=1 / 800)[1]]  # one example of 800
    [-0.0137, 0.0087]
    >>> [round(v, 4) for v in interval([-0.0025, -0.0025, -0.0025], noise=Noise(0.003, 6))[1]]
    [-0.01, 0.005]
    """
    mean = statistics.fmean(deltas)
    n = len(deltas)
    if n < 2:
        return mean, None
    sd = max(statistics.stdev(deltas), floor, noise.sd if noise is not None else 0.0)
    from scipy import stats  # here, not at the top: importing scipy.stats takes about a second

    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, (round(mean - half, 12), round(mean + half, 12))


def decide(deltas: Sequence[float], ci95: tuple[float, float] | None) -> str:
    """``better`` when the interval lies above 0, ``worse`` below, ``tie`` otherwise; equal
    measurements on every seed are a tie, and so is one seed (no interval: it decides nothing)."""
    if all(d == 0 for d in deltas) or ci95 is None:
        return "tie"
    if ci95[0] > 0:
        return "better"
    if ci95[1] < 0:
        return "worse"
    return "tie"


def paired(a: Sequence[float | None], b: Sequence[float | None], direction: str, *,
           n_val: int | None = None, noise: Noise | None = None) -> Paired:
    """The paired comparison of A against B over their common seeds (``Paired``): ``deltas`` (per
    seed, positive = A better), ``mean``, ``ci95`` (None with one seed), ``verdict``
    (``better|tie|worse``, None when no seed finished for both), ``n`` and ``resolution`` (one
    example's worth of the metric, None without counts). ``noise``: the seed-to-seed noise of the
    other pairs of the comparison (``Noise.pooled``): a floor of the spread."""
    deltas = signed_deltas(a, b, direction, n_val=n_val)
    if not deltas:
        return Paired(n=0, resolution=resolution(n_val))
    mean, ci95 = interval(deltas, noise=noise, floor=resolution(n_val) or 0.0)
    return Paired(deltas=tuple(deltas), mean=mean, ci95=ci95, verdict=decide(deltas, ci95), n=len(deltas),
                  resolution=resolution(n_val))
