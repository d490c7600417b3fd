"""Choose each row's draft size for one step: maximise the batch's expected emitted tokens per second.

Each running row offers a curve of options, `[(extra_tokens, expected_extra_emitted), ...]`, from
(0, 0.0) (no draft: the root alone, which always emits one token) upwards: Medusa's top-k tree nodes by
estimated path probability, lookahead's (w, n, g) below the engine's. With a step over T tokens costing
t(T) seconds, the governor picks one option per row to maximise

    sum_i (1 + E_i) / t(sum_i (1 + k_i))

Curves are first reduced to their upper concave hull (an option under the hull is never worth taking
alone); the increments of all rows are then taken in order of expected tokens per extra token, and
the best prefix of that order by the objective is the choice. For concave curves with unit steps
(Medusa's node-by-node tree) this is exact: every prefix is the best allocation of its token total,
and the objective is evaluated at every total.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Curve = Sequence[tuple[int, float]]  # (extra tokens, expected extra emitted), starting at (0, 0.0)


def hull(curve: Curve) -> list[int]:
    """Indices of `curve` on its upper concave hull, from option 0 (which must be (0, 0.0))."""
    if not curve or curve[0] != (0, 0.0):
        raise ValueError(f"a curve starts at (0, 0.0), got {list(curve)[:1]}")
    pts = sorted(range(len(curve)), key=lambda i: (curve[i][0], -curve[i][1]))
    keep: list[int] = []
    for i in pts:
        if keep and curve[i][0] == curve[keep[-1]][0]:
            continue  # same cost, lower or equal value (sorted)
        if keep and curve[i][1] <= curve[keep[-1]][1]:
            continue  # costs more, gives no more
        while len(keep) >= 2:
            (x1, y1), (x2, y2), (x3, y3) = curve[keep[-2]], curve[keep[-1]], curve[i]
            if (y2 - y1) * (x3 - x2) <= (y3 - y2) * (x2 - x1):  # the middle point is not above the chord
                keep.pop()
            else:
                break
        keep.append(i)
    return keep


def allocate(curves: Sequence[Curve], step_time: Callable[[int], float], fixed_tokens: int = 0,
             fixed_emitted: float = 0.0) -> tuple[list[int], float]:
    """(the chosen option index per row, expected emitted tokens per second of the whole step).
    fixed_tokens / fixed_emitted: the step's rows that offer no choice (their tokens and expected
    emitted tokens count in the objective, whatever is chosen)."""
    hulls = [hull(c) for c in curves]
    steps = []  # (gain per token, row, position on its hull)
    for r, (c, h) in enumerate(zip(curves, hulls)):
        for j in range(1, len(h)):
            dx, dy = c[h[j]][0] - c[h[j - 1]][0], c[h[j]][1] - c[h[j - 1]][1]
            steps.append((dy / dx, -r, j))
    steps.sort(reverse=True)  # concave hulls: each row's steps come in order
    pos = [0] * len(curves)
    tokens = len(curves) + fixed_tokens
    emitted = len(curves) + fixed_emitted
    best_rate, best = emitted / step_time(tokens), list(pos)
    for _, neg_r, j in steps:
        r = -neg_r
        c, h = curves[r], hulls[r]
        tokens += c[h[j]][0] - c[h[j - 1]][0]
        emitted += c[h[j]][1] - c[h[j - 1]][1]
        pos[r] = j
        rate = emitted / step_time(tokens)
        if rate > best_rate:
            best_rate, best = rate, list(pos)
    return [h[p] for h, p in zip(hulls, best)], best_rate
