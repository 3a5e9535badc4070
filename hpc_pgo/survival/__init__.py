"""Survival math: Cox partial likelihood, concordance, the 15-split protocol, KM plots.

Conventions: theta = log hazard (higher = worse); time >= 0; event 1 = death observed,
0 = censored.

- ``cox``: ``cox_nll`` (Breslow, O(N log N)), ``breslow_log_risk``, ``check_survival``.
- ``concordance``: ``concordance`` (Harrell's C by lifelines; the sign flip lives there).
- ``protocol``: ``read_predictions``, ``patient_hazards``, ``fold_cindex``,
  ``summarize_cindex``, ``summarize_folds``.
- ``paired``: ``paired_difference`` (two configurations on the same splits, fold by fold).
- ``km``: ``km_split``, ``risk_groups`` (folds -> one group per unique patient), ``logrank_p``,
  ``plot_km`` (import ``hpc_pgo.survival.km``; it loads matplotlib).
- ``heatmaps``: ``draw_run`` (attention-MIL weights of fold_<k>/attention.csv painted over slide
  thumbnails; import ``hpc_pgo.survival.heatmaps``; it loads openslide and matplotlib).
"""

from hpc_pgo.survival.concordance import concordance
from hpc_pgo.survival.cox import breslow_log_risk, check_survival, cox_nll
from hpc_pgo.survival.protocol import (
    PREDICTION_COLUMNS,
    cindex_summary,
    fold_cindex,
    patient_hazards,
    read_predictions,
    summarize_cindex,
    summarize_folds,
    validate_predictions,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "breslow_log_risk",
    "check_survival",
    "concordance",
    "cox_nll",
    "fold_cindex",
    "patient_hazards",
    "read_predictions",
    "cindex_summary",
    "summarize_cindex",
    "summarize_folds",
    "validate_predictions",
]
