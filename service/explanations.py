"""Explaining one (user, item) score by expert and by modality.

MAGNET's item embedding is e_i = c_i + sum_e g_ie * x_ie (a base vector plus a gated
mix of modality-role experts), so the served score splits exactly:

    score = e_u . e_i = e_u . c_i  +  sum_e g_ie * (e_u . x_ie)
                        ^ base        ^ contribution of expert e

The score is computed by `service.search.score_items`, the same function /recommend
ranks with, so both endpoints report the identical number. The parts are computed
in float64 from the same float32 arrays; what remains between their sum and the
score is float32 rounding of e_i (the bundle loader checks the identity holds to
1e-4), and it is folded into ``base`` so the parts add up to the score exactly.

Modality shares (the rule): a dominant expert's contribution belongs to its
modality; a balanced or complementary expert's is split evenly among the modalities
it involves (the ones its ``modality`` names, "a+b", or, when it names none, every
modality the model's dominant experts cover; "multimodal" if the model names none).
Shares are absolute contributions per modality normalised to sum to 1; the base
(collaborative) part is not a modality and is left out. With no experts, or all
contributions zero, ``modalities`` is empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.bundle import Bundle, ExpertInfo
from service.search import score_items


def expert_modalities(experts: tuple[ExpertInfo, ...]) -> list[list[str]]:
    """Which modalities each expert's contribution is attributed to (see module docstring)."""
    named = sorted({e.modality for e in experts if e.role == "dominant" and e.modality})
    out: list[list[str]] = []
    for e in experts:
        if e.modality:
            out.append([m for m in e.modality.split("+") if m] or [e.modality])
        else:
            out.append(named or ["multimodal"])
    return out


def _reason(score: float, base: float, experts: list[dict[str, Any]], top: str,
            modalities: dict[str, float], model: str) -> str:
    if not experts:
        return f"Score {score:.3f} comes from collaborative signal alone (the {model} model has no modality experts)."
    top_e = next((e for e in experts if e["name"] == top), None)
    if top_e is None or not modalities:
        return f"Score {score:.3f} comes from the collaborative base ({base:+.3f}); no expert adds to it."
    ranked = sorted(modalities.items(), key=lambda kv: (-kv[1], kv[0]))
    if ranked[0][1] >= 0.6 or len(ranked) == 1:
        evidence = f"mostly {ranked[0][0]} evidence ({ranked[0][1]:.0%} of the expert signal)"
    else:
        evidence = f"a blend of {ranked[0][0]} and {ranked[1][0]} evidence"
    who = f"{top_e['role']} {top_e['modality']} expert" if top_e["modality"] else f"{top_e['role']} expert"
    return (f"Score {score:.3f}: {evidence}, led by the {who} '{top}' ({top_e['contribution']:+.3f}), "
            f"on a collaborative base of {base:+.3f}.")


def explain_pair(bundle: Bundle, e_u: np.ndarray, item: int, *,
                 attribution: list[list[str]] | None = None) -> dict[str, Any]:
    """Score decomposition of user vector `e_u` (a trained row of user_emb, or a folded-in
    vector: the one /recommend ranks with) and internal item index `item`; JSON-ready,
    without ids or cache flag. ``cold`` says whether the item was embedded from content
    alone (`magnet add-items`)."""
    score = float(score_items(e_u, bundle.item_emb, np.array([item]))[0])
    u64 = e_u.astype(np.float64)
    base = float(bundle.item_base[item].astype(np.float64) @ u64)
    gates = bundle.item_gates[item].astype(np.float64)
    dots = bundle.item_experts[item].astype(np.float64) @ u64 if gates.size else np.zeros(0)
    contributions = gates * dots
    base += score - (base + float(contributions.sum()))  # fold float32 rounding of e_i into base

    attribution = attribution if attribution is not None else expert_modalities(bundle.experts)
    experts = []
    shares: dict[str, float] = {}
    for e, g, c, mods in zip(bundle.experts, gates, contributions, attribution):
        experts.append({"name": e.name, "role": e.role, "modality": e.modality,
                        "weight": float(g), "contribution": float(c) + 0.0})  # + 0.0: no "-0.0"
        for m in mods:
            shares[m] = shares.get(m, 0.0) + abs(float(c)) / len(mods)
    total = sum(shares.values())
    modalities = {m: v / total for m, v in sorted(shares.items())} if total > 0 else {}

    active = [x for x in experts if x["weight"] > 0]
    top = max(active, key=lambda x: x["contribution"])["name"] if active else "base"
    return {
        "score": score,
        "base": base,
        "experts": experts,
        "modalities": modalities,
        "top_expert": top,
        "reason": _reason(score, base, experts, top, modalities, bundle.model),
        "cold": bundle.is_cold(item),
    }
