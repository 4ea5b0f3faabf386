"""The statistical margin every counting masking check uses.

A check counts points (say, those only square broke) and compares the
count with what a healthy model produces by chance. Its null hypothesis
makes the count a Binomial(n, p) draw; `binomial_limit` gives the largest
count such a draw exceeds with probability at most the false-alarm rate,
exactly (no normal approximation, which undercounts the tail when n p is a
few points, as it is for the sequential rule).
"""

import math


def binomial_tail(count: int, n: int, rate: float) -> float:
    """P(X > count) for X ~ Binomial(n, rate), exactly.

    Sums the probabilities of the outcomes up to `count` in log space, so
    large n neither overflows nor underflows.
    """
    if count >= n:
        return 0.0
    if count < 0:
        return 1.0
    if rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return 1.0
    log_p, log_q = math.log(rate), math.log1p(-rate)
    log_n = math.lgamma(n + 1)
    below = 0.0
    for k in range(count + 1):
        log_pmf = (
            log_n
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * log_p
            + (n - k) * log_q
        )
        below += math.exp(log_pmf)
    return max(0.0, 1.0 - below)


def binomial_limit(n: int, rate: float, false_alarm_rate: float) -> int:
    """The smallest count a Binomial(n, rate) exceeds w.p. <= the rate given.

    A check that flags a count above this limit flags a model its null
    describes with probability at most `false_alarm_rate`. For example,
    n = 100 breakable points with a 5 % miss rate at 0.001 gives 13 (the
    mean is 5); n = 2 discordant points with rate 1/2 gives 2 (two points
    never flag).

    Args:
        n: the number of points the null draws from (>= 0).
        rate: the null's per-point probability, in [0, 1].
        false_alarm_rate: in (0, 1).

    Returns:
        An int in [0, n].
    """
    if n <= 0:
        return 0
    # The tail falls as the count grows: bisect over [0, n].
    low, high = -1, n
    while high - low > 1:
        middle = (low + high) // 2
        if binomial_tail(middle, n, rate) <= false_alarm_rate:
            high = middle
        else:
            low = middle
    return high
