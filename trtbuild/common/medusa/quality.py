"""The base-quality record train-medusa writes next to its heads, and the drift rule `build` applies.

train-medusa stores `config.json` → `trtbuild.base_quality` in its output: on held-out text, the
(tuned) base's top-1 agreement with the original model and both perplexities, `base_changed` true
for Medusa-2 (`--joint`, the base fine-tuned with the heads). Speculative decoding is lossless
relative to the base it runs on, so a Medusa-2 base that drifted from the model the user chose is
refused unless they say it is still the one they want (`--allow-base-drift`).
"""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.common.errors import ConfigError

BASE_MIN_AGREEMENT = 0.95  # a tuned base agreeing less with its original (top-1, held-out text) drifted


def read_base_quality(medusa: Path) -> dict | None:
    """train-medusa's base-quality record for the heads at `medusa` (a directory or a head file), if any."""
    medusa = Path(medusa)
    cfg = (medusa if medusa.is_dir() else medusa.parent) / "config.json"
    try:
        quality = json.loads(cfg.read_text())["trtbuild"]["base_quality"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return quality if isinstance(quality, dict) and "top1_agreement" in quality else None


def check_base_drift(medusa: Path, allow: bool) -> str | None:
    """Raise (one line) when the heads at `medusa` come with a tuned base that drifted, unless `allow`;
    returns a note for the build's output (None when there is nothing to say)."""
    q = read_base_quality(medusa)
    if q is None or not q.get("base_changed"):
        return None
    agree = float(q["top1_agreement"])
    ppl = f"perplexity {q.get('perplexity_original')} -> {q.get('perplexity_tuned')}"
    if agree >= BASE_MIN_AGREEMENT:
        return f"Medusa-2 base: {agree:.1%} top-1 agreement with the original on held-out text, {ppl}"
    msg = (f"the Medusa-2 base of {medusa} drifted from its original: {agree:.1%} top-1 agreement on held-out "
           f"text (< {BASE_MIN_AGREEMENT:.0%}), {ppl}")
    if not allow:
        raise ConfigError(msg + "; retrain with a larger --kl-weight or smaller --base-lr, or pass --allow-base-drift")
    return msg + " (--allow-base-drift)"
