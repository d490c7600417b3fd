"""Choose each row's draft for one step: maximise the batch's expected emitted tokens per second.

Each running row offers a curve of options, `[(draft_tokens, expected_accepted), ...]` starting at
(0, 0.0) (no draft: the root alone, which always emits one token): Medusa's top-k tree nodes by
estimated path probability, lookahead's verification set with or without its window. The reference
runtime pads every row to the step's widest, so a step of B rows of at most T tokens each costs
t(B * T) seconds, plus one pass of the Medusa heads when a Medusa row drafts. The governor picks one
option per row to maximise

    (B + sum_i E_i) / (t(B * T) + heads)

exactly: for every width T (and with or without the heads pass) each row's best option is the most
valuable one that fits, because within a width extra draft tokens are free; the best (T, heads) wins,
ties to the narrower step. Rows that offer no choice (they draft all they have) set a floor on T and
count in the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Curve = Sequence[tuple[int, float]]  # (draft tokens, expected accepted tokens), starting at (0, 0.0)


def allocate(curves: Sequence[Curve], step_time: Callable[[int], float], *, fixed_rows: int = 0,
             fixed_width: int = 1, fixed_emitted: float = 0.0, heads: Sequence[bool] = (),
             heads_seconds: float = 0.0) -> tuple[list[int], float]:
    """(the chosen option index per curve, expected emitted tokens per second of the whole step).

    fixed_rows / fixed_width / fixed_emitted: the step's rows that offer no choice, the widest of them
    (tokens, root included) and their expected emitted tokens; heads[i]: curve i's drafts need the
    Medusa heads pass, which costs heads_seconds once per step."""
    for c in curves:
        if not c or c[0] != (0, 0.0):
            raise ValueError(f"a curve starts at (0, 0.0), got {list(c)[:1]}")
    needs = list(heads) or [False] * len(curves)
    if len(needs) != len(curves):
        raise ValueError(f"{len(needs)} heads flags for {len(curves)} curves")
    rows = len(curves) + fixed_rows
    widths = sorted({fixed_width} | {1 + x for c in curves for x, _ in c if 1 + x > fixed_width})
    best_rate, best = -1.0, [0] * len(curves)
    for width in widths:
        for with_heads in ((False, True) if any(needs) else (False,)):
            choice = []
            for c, h in zip(curves, needs):
                fits = [i for i, (x, _) in enumerate(c) if 1 + x <= width and (with_heads or not h or x == 0)]
                choice.append(max(fits, key=lambda i: (c[i][1], -c[i][0])))
            emitted = rows + fixed_emitted + sum(c[i][1] for c, i in zip(curves, choice))
            paid = with_heads and any(h and c[i][0] > 0 for c, h, i in zip(curves, needs, choice))
            rate = emitted / (step_time(rows * width) + (heads_seconds if paid else 0.0))
            if rate > best_rate * (1 + 1e-12):
                best_rate, best = rate, choice
    return best, best_rate
