"""The demo cohort: a documented generative model of patients with omics, H&E-like ROIs and survival.

`write_demo_cohort(out_dir)` writes a complete cohort that `pgo-shards build` reads through the
`cohort.yaml` it writes beside the data. Everything is drawn from one seed; the same arguments give
byte-identical files.

Files (in out_dir)
------------------
- ``clinical.csv``: patient, time (months), event (1 = death observed, 0 = censored)
- ``omics.csv``: patient, ``<GENE>_cnv`` (GISTIC-like integers -2..2), ``<GENE>_mut`` (0/1),
  ``<GENE>_rnaseq`` (non-negative TPM-like expression, log-normal)
- ``rois/<patient>_<k>.png``: RGB H&E-like regions of interest, k = 0 .. rois_per_patient-1
- ``truth.csv``: patient, theta (true log hazard), theta_omics, theta_image (its two parts),
  omics_score, image_score (the standardised latent scores), event_time, censor_time (months;
  ``inf`` when censoring = 0)
- ``cohort.yaml``: the cohort spec (survival, omics groups cnv/mut/rna, images kind rois,
  random splits 15 x 80/20 seeded with `seed`), written last
- with rna_model="cells" only: ``cells.h5ad``, the labelled single-cell atlas (X: CSR float32
  UMI counts, obs["cell_type"] categorical, obs["donor"], var_names the RNA gene symbols),
  ``cell_types.yaml``, its label map for ``pgo-shards cells`` (every type its own class), and in
  truth.csv the columns theta_cells (the fractions' part of theta), cell_score (that part before
  cell_strength) and fraction_<type> (each patient's true cell-type fractions, summing to 1)

Names: patients are ``DEMO-0001`` ... (4 digits, more above 9999 patients; no underscore, so
the spec's patient_regex ``^(?P<patient>.+?)_`` maps ``DEMO-0001_1.png`` to ``DEMO-0001``).
Genes are synthetic symbols ``G0001``, ``G0002``, ...; CNV covers G0001..G{n_cnv}, mutations
G0001..G{n_mut}, RNA G0001..G{n_rna} (the same symbol in two modalities is the same gene, driven
by the same program). They match no real gene vocabulary: a real scGPT checkpoint's vocab will
not know them (the tests' tiny checkpoint can).

Generative model
----------------
Latent genomic factors ("programs"), K = 4::

    z_i ~ N(0, I_K)

Every feature j of each modality is tied to one program p_j (drawn uniformly) with loading
a_j = s_j * U(0.6, 1.2), s_j = +-1, for a random 50% of features ("drivers"); a_j = 0 otherwise.
With e ~ N(0, 1) independent noise::

    CNV:  c_ij = a_j z_{i,p_j} + 0.8 e_ij,     cnv_ij = digitize(c_ij, [-2, -0.9, 0.9, 2]) - 2
    mut:  P(mut_ij = 1) = sigmoid(b_j + 1.5 a_j z_{i,p_j}),   b_j ~ U(logit 0.03, logit 0.2)
    RNA:  l_ij = mu_j + a_j z_{i,p_j} + 0.5 e_ij,  mu_j ~ N(2.5, 1),  rnaseq_ij = exp(l_ij) > 0

The omics part of the risk (unit variance by construction, program 4 carries no risk)::

    g_i = beta . z_i / |beta|,   beta = (1.0, -0.8, 0.6, 0.0)

Latent image factor u_i ~ N(0, 1), independent of z. ROI k of patient i, with eta ~ N(0, 1)::

    nuclei density  d_ik = 5.5 exp(0.35 u_i + 0.15 eta_ik)   per 1000 px^2
    nuclei count    n_ik ~ Poisson(d_ik * S^2 / 1000)          (S = image_size, px)
    nucleus radius  r_ikn = 3.0 exp(0.15 u_i + 0.05 eta'_ik + 0.15 nu_ikn) px
    shape           ellipse, axis ratio U(0.6, 1), angle U(0, pi), centre uniform

so higher-risk patients have denser, larger nuclei (as in high-grade tumours). The pixel scale is
fixed: a larger image_size is a larger field of view, not a magnification. image_contrast = c
(default 1) multiplies both risk slopes, 0.35 c u_i and 0.15 c u_i: how visible u is in the
pixels (0: not at all; the hazard still depends on u, so no image can recover that part).

True log hazard (higher = worse)::

    theta_i = genomic_strength * sat(g_i) + image_strength * u_i
    sat(g) = g                       genomic_saturation = None (default)
    sat(g) = s tanh(g / s)           genomic_saturation = s > 0

Saturation keeps the omics ranking (tanh is increasing) but bounds the omics part by
+-genomic_strength * s: beyond |g| ~ s more genomic evidence adds little risk, and the image part
decides among the patients the omics put at the extremes. truth.csv's theta_omics is
genomic_strength * sat(g_i).

`make demo` uses ``--patients 200 --rois 1 --genomic-strength 1.5 --genomic-saturation 1.0
--image-strength 0.8`` (chosen on other seeds; configs/README.md "The demo preset"): the omics
are the strong, easily learnt modality (a few latent programs behind many features, learnt by a
linear-like SNN in a few steps), the images carry an independent, complementary part that a CNN
trained from scratch has to find in the nuclei. The defaults are 150 x 2 ROIs, strengths 1.0 / 0.6,
no saturation, contrast 1.

Survival: Weibull proportional hazards with shape k and baseline scale lambda0 = 60 months,
h(t | theta) = (k / lambda0) (t / lambda0)^(k-1) exp(theta), drawn by inversion with
V ~ U(0, 1)::

    T_i = lambda0 exp(-theta_i / k) (-log V_i)^(1/k)

Censoring is independent of each patient's risk and event time: C_i = E_i / r, E_i ~ Exp(1)
drawn on their own, so C_i ~ Exponential(rate r). The one cohort-wide rate r is set so that
exactly round(censoring * N) patients are censored (patient i is censored iff r > E_i / T_i; r is
the geometric mean of the two sorted ratios E/T around that count), which keeps the censored
fraction on target in a cohort of 150. Observed: time_i = min(T_i, C_i), event_i = 1[T_i <= C_i].

Randomness is split into independent streams (model parameters, latents, images, survival), so
changing image_size or rois_per_patient leaves the omics, truth and clinical tables unchanged.

Cells behind the bulk (rna_model="cells")
-----------------------------------------
``pgo-shards demo --rna cells [--cell-types T] [--cell-strength s] [--atlas-cells-per-type n]``.
The RNA group becomes what bulk RNA-seq measures, a mixture of cells; CNV, mutations, images,
the latents and the streams above stay exactly as in the default model (a fifth, own stream
drives the cells). T cell types (default 10, 8..17; the paper's atlas has 17) are the first T
of CELL_TYPES: tumour_proliferative, CD8_T, tumour_epithelial, CD4_T, macrophage, fibroblast,
endothelial, B, NK, monocyte, Treg, plasma, dendritic, pericyte, mast, neutrophil,
normal_epithelial, each with a base share pi_t and an RNA content per cell c_t (CELL_TYPES).

Expression programs, over the RNA genes G0001..G{n_rna} (cell_type_programs)::

    L_tj = b_j + m_tj + 0.3 e_tj        b_j ~ N(0, 1), e ~ N(0, 1)
    m_tj = U(1.5, 3) if j is a marker of t; -2 if j marks another type; 0 otherwise
    (markers: 40% of the genes, at least 3 per type, dealt to the types in turn)
    P_itj = softmax_j(L_tj + 1[t tumour] 0.7 a_j z_{i,p_j})

so tumour cells (tumour_proliferative, tumour_epithelial) carry the patient's genomic programs
(a_j, p_j: the gene's loading and program, the same as in the CNV); other types do not.

Fractions and bulk counts (simulate_fractions, simulate_bulk)::

    f_i ~ Dirichlet(alpha_i),  alpha_it = 30 pi_t exp(0.5 xi_it),  xi ~ N(0, 1)
    w_it = f_it c_t / sum_s f_is c_s                  (the share of the RNA from type t)
    y_ij ~ Poisson(B_i sum_t w_it P_itj g_ij),  B_i = 2e5 exp(0.3 e_i),  g_ij ~ Gamma(25, 1/25)

i.e. negative binomial counts (dispersion 0.04: 20% biological variation) around a library size
that varies between samples; the omics table holds y as integers (``G0001_rnaseq``...).

The fractions' part of the risk (fraction_risk), with cell_strength s (default 1)::

    theta_i = genomic_strength sat(g_i) + image_strength u_i + s c_i
    c_i = 4.0 (f_i,tumour_proliferative - pi) - 6.0 (f_i,CD8_T - pi)

a proliferative tumour is harmful, cytotoxic T-cell infiltration protective; c has sd ~0.6 with
the default 10 types, the fractions are independent of z and u: information only the RNA
carries, and only as far as the fractions can be read from a bulk (CD8 T cells are small and
~4% of the RNA: the hardest to see, as in real tumours).

The atlas (simulate_atlas): atlas_cells_per_type cells of each type (default 200), in random
order, from 6 atlas donors with latents of their own (so no cell is a patient's, and the atlas
does not change with the cohort's size). Cell c: library L_c = 400 c_t exp(0.35 e_c) UMIs, counts
x_cj ~ Poisson(L_c P_tj g_cj), g ~ Gamma(2, 1/2): sparse (~40-50% zeros), overdispersed.
`pgo-shards cells --h5ad cells.h5ad --label-col cell_type --label-map cell_types.yaml` reads it
as it is; `pgo-shards fit-scgpt --h5ad cells.h5ad` fits a tiny scGPT on it
(hpc_pgo.models.scgpt_fit). Without --cohort-dir, `pgo-shards demo` moves the two atlas files to
``<out>-atlas/`` beside the shard set and prints where.
Whether scGPT embeddings of these bulks carry the fractions, and after how many fitting steps,
is measured by benchmarks/cell_fractions.py (its docstring has the figures).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw, ImageFilter

from hpc_pgo.atomic import write_bytes
from hpc_pgo.errors import PgoError, check_options

log = logging.getLogger(__name__)

PATIENT_PREFIX = "DEMO-"
N_PROGRAMS = 4
RISK_WEIGHTS = np.array([1.0, -0.8, 0.6, 0.0])  # beta: program 4 varies the omics without risk
DRIVER_FRACTION = 0.5
BASELINE_SCALE_MONTHS = 60.0  # lambda0

# ROI appearance (see the module docstring for the formulas these constants enter).
NUCLEI_PER_1000PX2 = 5.5
DENSITY_RISK_SLOPE = 0.35
DENSITY_ROI_NOISE = 0.15
NUCLEUS_RADIUS_PX = 3.0
RADIUS_RISK_SLOPE = 0.15
RADIUS_ROI_NOISE = 0.05
RADIUS_NUCLEUS_NOISE = 0.15
STROMA_RGB = np.array([236.0, 178.0, 208.0])  # eosin pink
NUCLEUS_RGB = np.array([88.0, 46.0, 138.0])  # haematoxylin purple
FIBER_RGB = np.array([214.0, 128.0, 170.0])
_ELLIPSE_VERTICES = 16

# The cell-mixture RNA model (rna_model="cells"; module docstring, "Cells behind the bulk").
RNA_MODELS = ("programs", "cells")
# (name, base composition weight pi_t before normalising, RNA content per cell c_t), in the
# order the first n_cell_types are taken: the harmful tumour type and the protective infiltrating
# type come first, so every n_cell_types >= MIN_CELL_TYPES has both.
CELL_TYPES = (
    ("tumour_proliferative", 0.15, 1.6),
    ("CD8_T", 0.08, 0.5),
    ("tumour_epithelial", 0.25, 1.4),
    ("CD4_T", 0.08, 0.5),
    ("macrophage", 0.10, 1.2),
    ("fibroblast", 0.10, 1.0),
    ("endothelial", 0.07, 0.9),
    ("B", 0.04, 0.6),
    ("NK", 0.03, 0.6),
    ("monocyte", 0.04, 1.0),
    ("Treg", 0.02, 0.5),
    ("plasma", 0.02, 1.5),
    ("dendritic", 0.01, 1.0),
    ("pericyte", 0.02, 0.9),
    ("mast", 0.01, 1.0),
    ("neutrophil", 0.02, 0.4),
    ("normal_epithelial", 0.06, 1.2),
)
MIN_CELL_TYPES = 8
TUMOUR_TYPES = ("tumour_proliferative", "tumour_epithelial")
# w_t: the log hazard per unit fraction above the mean composition (before cell_strength)
FRACTION_RISK = {"tumour_proliferative": 4.0, "CD8_T": -6.0}
FRACTION_CONCENTRATION = 30.0  # A: Dirichlet concentration (total)
FRACTION_SPREAD = 0.5  # sd of the patient-specific log concentration of each type
MARKER_FRACTION = 0.4  # genes that are the marker of one cell type (at least 3 per type)
MARKER_ELSEWHERE = 2.0  # how much lower (log) a marker is in the types it does not mark
TUMOUR_STATE_SLOPE = 0.7  # the genomic programs' effect on tumour cells' log expression
BULK_READS = 200_000.0  # median bulk library size over the demo genes
BULK_DISPERSION = 0.04  # negative binomial dispersion of bulk counts (CV 0.2)
CELL_UMIS = 400.0  # median UMIs per cell (RNA content 1) over the demo genes
CELL_DISPERSION = 0.5  # negative binomial dispersion of single-cell counts
ATLAS_DONORS = 6
ATLAS_FILE = "cells.h5ad"
LABEL_MAP_FILE = "cell_types.yaml"

_DEMO_ROI_NAME = re.compile(r"^DEMO-\d+_\d+\.png$")


def write_demo_cohort(
    out_dir: Path,
    *,
    n_patients: int = 150,
    rois_per_patient: int = 2,
    image_size: int = 96,
    n_cnv: int = 60,
    n_mut: int = 20,
    n_rna: int = 120,
    genomic_strength: float = 1.0,
    image_strength: float = 0.6,
    genomic_saturation: float | None = None,
    image_contrast: float = 1.0,
    weibull_shape: float = 1.2,
    censoring: float = 0.35,
    seed: int = 0,
    rna_model: str = "programs",
    n_cell_types: int | None = None,
    cell_strength: float | None = None,
    atlas_cells_per_type: int | None = None,
) -> Path:
    """Simulate the demo cohort into out_dir and return the path of its cohort.yaml.

    Defaults: 150 patients x 2 ROIs of 96 x 96 px, 60 CNV + 20 mutation + 120 RNA features, the
    genomic signal stronger than the image one (1.0 vs 0.6 on standardised scores), linear (no
    genomic_saturation), image_contrast 1, Weibull shape 1.2, ~35% censored, RNA from the latent
    programs (rna_model "programs"). rna_model "cells" makes the RNA bulk counts of a mixture of
    cell types (n_cell_types, default 10), adds cell_strength (default 1) times the fractions'
    risk to the log hazard and writes the single-cell atlas (atlas_cells_per_type cells of each
    type, default 200) and its label map; these three options need rna_model "cells". See the
    module docstring for the model. Files are written atomically; cohort.yaml is written last.
    Stale demo ROIs (``DEMO-*_*.png``) left in out_dir/rois by an earlier, larger run are removed
    so the builder does not pick them up; so is an atlas a "cells" run left, in a "programs" run.
    """
    _check_options(
        n_patients=n_patients,
        rois_per_patient=rois_per_patient,
        image_size=image_size,
        n_cnv=n_cnv,
        n_mut=n_mut,
        n_rna=n_rna,
        genomic_strength=genomic_strength,
        image_strength=image_strength,
        genomic_saturation=genomic_saturation,
        image_contrast=image_contrast,
        weibull_shape=weibull_shape,
        censoring=censoring,
        seed=seed,
        rna_model=rna_model,
    )
    cells = _cell_options(rna_model, n_cell_types, cell_strength, atlas_cells_per_type)
    out_dir = Path(out_dir)
    params_ss, latent_ss, image_ss, surv_ss = np.random.SeedSequence(seed).spawn(4)
    width = max(4, len(str(n_patients)))  # zero-padded: ids sort in simulation order
    patients = [f"{PATIENT_PREFIX}{i + 1:0{width}d}" for i in range(n_patients)]

    latent_rng = np.random.default_rng(latent_ss)
    z = latent_rng.standard_normal((n_patients, N_PROGRAMS))
    u = latent_rng.standard_normal(n_patients)
    omics, program, loading = _simulate_omics(
        z, n_cnv=n_cnv, n_mut=n_mut, n_rna=n_rna, rng=np.random.default_rng(params_ss)
    )
    omics_score = z @ RISK_WEIGHTS / np.linalg.norm(RISK_WEIGHTS)
    theta_omics = genomic_strength * saturate(omics_score, genomic_saturation)
    theta = theta_omics + image_strength * u
    mixture = None
    if cells is not None:
        # its own stream (the 5th child; the first four are the ones above, whatever the count)
        cells_ss = np.random.SeedSequence(seed).spawn(5)[4]
        mixture = simulate_cell_mixture(
            z, program, loading, n_rna=n_rna, n_cell_types=cells["n_cell_types"], ss=cells_ss
        )
        rna_columns = [c for c in omics.columns if c.endswith("_rnaseq")]
        bulk = pd.DataFrame(mixture["bulk"], columns=rna_columns)  # G0001_rnaseq.. in order
        omics = pd.concat([omics.drop(columns=rna_columns), bulk], axis=1)
        theta_cells = cells["cell_strength"] * fraction_risk(mixture["fractions"])
        theta = theta + theta_cells
    event_time, censor_time = simulate_survival(
        theta, weibull_shape, censoring, np.random.default_rng(surv_ss)
    )
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(int)

    out_dir.mkdir(parents=True, exist_ok=True)
    roi_dir = out_dir / "rois"
    roi_dir.mkdir(exist_ok=True)
    written = set()
    for i, (patient, patient_ss) in enumerate(
        zip(patients, image_ss.spawn(n_patients), strict=True)
    ):
        rng = np.random.default_rng(patient_ss)
        for k in range(rois_per_patient):
            name = f"{patient}_{k}.png"
            write_bytes(
                roi_dir / name,
                _png_bytes(render_roi(u[i], image_size, rng, contrast=image_contrast)),
            )
            written.add(name)
    _remove_stale_rois(roi_dir, written)
    if mixture is None:
        _remove_stale_atlas(out_dir)

    clinical = pd.DataFrame({"patient": patients, "time": time, "event": event})
    omics.insert(0, "patient", patients)
    truth = pd.DataFrame(
        {
            "patient": patients,
            "theta": theta,
            "theta_omics": theta_omics,
            "theta_image": image_strength * u,
            "omics_score": omics_score,
            "image_score": u,
            "event_time": event_time,
            "censor_time": censor_time,
        }
    )
    if mixture is not None:
        truth.insert(4, "theta_cells", theta_cells)
        truth.insert(7, "cell_score", fraction_risk(mixture["fractions"]))
        names = cell_type_names(cells["n_cell_types"])
        for t, name in enumerate(names):
            truth[f"fraction_{name}"] = mixture["fractions"][:, t]
        counts, cell_type, donor = simulate_atlas(
            mixture["levels"],
            program,
            loading,
            cells["atlas_cells_per_type"],
            np.random.default_rng(mixture["atlas_ss"]),
        )
        genes = [f"G{j + 1:04d}" for j in range(n_rna)]
        write_atlas(out_dir / ATLAS_FILE, counts, cell_type, donor, genes, names)
        write_bytes(out_dir / LABEL_MAP_FILE, label_map_yaml(cells["n_cell_types"]))
    write_bytes(out_dir / "clinical.csv", _csv_bytes(clinical, "%.4f"))
    write_bytes(out_dir / "omics.csv", _csv_bytes(omics, "%.4f"))
    write_bytes(out_dir / "truth.csv", _csv_bytes(truth, "%.6f"))
    spec_path = out_dir / "cohort.yaml"
    write_bytes(spec_path, yaml.safe_dump(demo_spec(seed), sort_keys=False).encode())
    log.info(
        "demo cohort: %d patients, %d ROIs of %d px, %d events (%.0f%% censored) in %s",
        n_patients,
        n_patients * rois_per_patient,
        image_size,
        event.sum(),
        100 * (1 - event.mean()),
        out_dir,
    )
    return spec_path


def demo_spec(seed: int) -> dict:
    """The cohort spec (cohort_spec format) for the files write_demo_cohort writes."""
    return {
        "cohort": "demo",
        "survival": {
            "path": "clinical.csv",
            "patient": "patient",
            "time": "time",
            "event": "event",
        },
        "omics": [
            {
                "path": "omics.csv",
                "patient": "patient",
                "groups": {
                    "cnv": {"suffix": "_cnv"},
                    "mut": {"suffix": "_mut"},
                    "rna": {"suffix": "_rnaseq"},
                },
            }
        ],
        "images": {"kind": "rois", "dir": "rois", "patient_regex": "^(?P<patient>.+?)_"},
        "splits": {"kind": "random", "n": 15, "test_fraction": 0.2, "seed": seed},
        "missing": "drop",
    }


def simulate_omics(
    z: np.ndarray, *, n_cnv: int, n_mut: int, n_rna: int, rng: np.random.Generator
) -> pd.DataFrame:
    """CNV, mutation and RNA features driven by the latent programs z: (N, K).

    Returns an (N, n_cnv + n_mut + n_rna) frame with columns G0001_cnv.., G0001_mut..,
    G0001_rnaseq..; formulas in the module docstring. Loadings are per gene: a gene present in
    several modalities follows the same program with the same loading.
    """
    return _simulate_omics(z, n_cnv=n_cnv, n_mut=n_mut, n_rna=n_rna, rng=rng)[0]


def _simulate_omics(
    z: np.ndarray, *, n_cnv: int, n_mut: int, n_rna: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """simulate_omics' frame, and each gene's program p_j (G,) int and loading a_j (G,)."""
    n = z.shape[0]
    n_genes = max(n_cnv, n_mut, n_rna)
    program = rng.integers(0, z.shape[1], n_genes)
    driver = rng.random(n_genes) < DRIVER_FRACTION
    loading = driver * rng.choice([-1.0, 1.0], n_genes) * rng.uniform(0.6, 1.2, n_genes)
    signal = z[:, program] * loading  # (N, genes): a_j z_{i,p_j}
    genes = [f"G{j + 1:04d}" for j in range(n_genes)]

    cnv_latent = signal[:, :n_cnv] + 0.8 * rng.standard_normal((n, n_cnv))
    cnv = np.digitize(cnv_latent, [-2.0, -0.9, 0.9, 2.0]) - 2
    base_logit = rng.uniform(_logit(0.03), _logit(0.2), n_mut)
    mut = (rng.random((n, n_mut)) < _sigmoid(base_logit + 1.5 * signal[:, :n_mut])).astype(int)
    log_expr = (
        rng.normal(2.5, 1.0, n_rna) + signal[:, :n_rna] + 0.5 * rng.standard_normal((n, n_rna))
    )
    rna = np.exp(log_expr)

    columns = {}
    columns.update({f"{g}_cnv": cnv[:, j] for j, g in enumerate(genes[:n_cnv])})
    columns.update({f"{g}_mut": mut[:, j] for j, g in enumerate(genes[:n_mut])})
    columns.update({f"{g}_rnaseq": rna[:, j] for j, g in enumerate(genes[:n_rna])})
    return pd.DataFrame(columns), program, loading


# --------------------------------------------------------------------------- cells behind the bulk


def simulate_cell_mixture(
    z: np.ndarray,
    program: np.ndarray,
    loading: np.ndarray,
    *,
    n_rna: int,
    n_cell_types: int,
    ss: np.random.SeedSequence,
) -> dict:
    """The patients' cell layer: {"levels": (T, G) type programs, "fractions": (N, T),
    "bulk": (N, G) int64 counts, "atlas_ss": the atlas's seed sequence}.

    Tumour cells of patient i carry its genomic programs: their log expression of gene j is
    shifted by TUMOUR_STATE_SLOPE a_j z_{i,p_j} (a_j, p_j: the gene's loading and program, as
    in the CNV); the other types do not depend on z.
    """
    programs_ss, fractions_ss, bulk_ss, atlas_ss = ss.spawn(4)
    levels = cell_type_programs(n_cell_types, n_rna, np.random.default_rng(programs_ss))
    fractions = simulate_fractions(z.shape[0], n_cell_types, np.random.default_rng(fractions_ss))
    shift = TUMOUR_STATE_SLOPE * z[:, program[:n_rna]] * loading[:n_rna]
    profiles = type_profiles(levels, shift, n_cell_types)
    bulk = simulate_bulk(fractions, profiles, np.random.default_rng(bulk_ss))
    return {"levels": levels, "fractions": fractions, "bulk": bulk, "atlas_ss": atlas_ss}


def cell_type_names(n_cell_types: int) -> list[str]:
    """The first n_cell_types names of CELL_TYPES (the harmful and protective types come first)."""
    return [name for name, _, _ in CELL_TYPES[:n_cell_types]]


def base_composition(n_cell_types: int) -> np.ndarray:
    """pi: (T,) the mean composition of the first n_cell_types types, summing to 1."""
    weights = np.array([w for _, w, _ in CELL_TYPES[:n_cell_types]])
    return weights / weights.sum()


def cell_type_programs(n_cell_types: int, n_rna: int, rng: np.random.Generator) -> np.ndarray:
    """Log expression levels L: (T, G) of each type's program over the RNA genes.

    L_tj = b_j + m_tj + 0.3 e_tj with b_j ~ N(0, 1) shared by all types and e ~ N(0, 1);
    m_tj = U(1.5, 3) when gene j is a marker of type t, -MARKER_ELSEWHERE when it is the marker
    of another type (markers are specific, as CD8A or EPCAM), 0 for the other genes. Markers: M = min(G, max(3T,
    round(MARKER_FRACTION G))) genes drawn at random, dealt to the types in turn, so that every
    type has M // T or more (3 or more when G >= 3T).
    """
    base = rng.standard_normal(n_rna)
    n_markers = min(n_rna, max(3 * n_cell_types, round(MARKER_FRACTION * n_rna)))
    markers = rng.permutation(n_rna)[:n_markers]
    lift = rng.uniform(1.5, 3.0, n_markers)
    levels = base + 0.3 * rng.standard_normal((n_cell_types, n_rna))
    levels[:, markers] -= MARKER_ELSEWHERE
    levels[np.arange(n_markers) % n_cell_types, markers] += MARKER_ELSEWHERE + lift
    return levels


def type_profiles(levels: np.ndarray, tumour_shift: np.ndarray, n_cell_types: int) -> np.ndarray:
    """Relative expression P: (N, T, G), each row summing to 1: softmax_j of L_tj, plus
    tumour_shift (N, G) on the tumour types (TUMOUR_TYPES) only."""
    tumour = np.isin(cell_type_names(n_cell_types), TUMOUR_TYPES)
    logits = levels[None, :, :] + tumour[None, :, None] * tumour_shift[:, None, :]
    logits -= logits.max(axis=2, keepdims=True)
    expr = np.exp(logits)
    return expr / expr.sum(axis=2, keepdims=True)


def simulate_fractions(n_patients: int, n_cell_types: int, rng: np.random.Generator) -> np.ndarray:
    """f: (N, T) cell-type fractions, rows summing to 1: f_i ~ Dirichlet(alpha_i),
    alpha_it = FRACTION_CONCENTRATION * pi_t * exp(FRACTION_SPREAD * xi_it), xi ~ N(0, 1)."""
    pi = base_composition(n_cell_types)
    xi = rng.standard_normal((n_patients, n_cell_types))
    alpha = FRACTION_CONCENTRATION * pi * np.exp(FRACTION_SPREAD * xi)
    fractions = np.stack([rng.dirichlet(a) for a in alpha])
    return fractions / fractions.sum(axis=1, keepdims=True)


def fraction_risk(fractions: np.ndarray) -> np.ndarray:
    """c: (N,) the fractions' part of the log hazard before cell_strength:
    c_i = sum_t w_t (f_it - pi_t), w = FRACTION_RISK (0 for the other types)."""
    names = cell_type_names(fractions.shape[1])
    weights = np.array([FRACTION_RISK.get(name, 0.0) for name in names])
    return (fractions - base_composition(fractions.shape[1])) @ weights


def rna_content(n_cell_types: int) -> np.ndarray:
    """c_t: (T,) RNA per cell of each type, relative (tumour cells more, lymphocytes less)."""
    return np.array([content for _, _, content in CELL_TYPES[:n_cell_types]])


def simulate_bulk(
    fractions: np.ndarray, profiles: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Bulk RNA-seq counts y: (N, G) int64 of patients with cell fractions f (N, T) and type
    profiles P (N, T, G).

    The share of the RNA from type t is w_it = f_it c_t / sum_s f_is c_s (c = rna_content);
    m_ij = sum_t w_it P_itj; library size B_i = BULK_READS exp(0.3 e_i); counts are
    negative binomial: y_ij ~ Poisson(B_i m_ij g_ij), g_ij ~ Gamma(1/BULK_DISPERSION,
    BULK_DISPERSION) (mean 1, CV sqrt(BULK_DISPERSION): biological variation between samples).
    """
    share = fractions * rna_content(fractions.shape[1])
    share /= share.sum(axis=1, keepdims=True)
    mean = np.einsum("it,itj->ij", share, profiles)
    library = BULK_READS * np.exp(0.3 * rng.standard_normal(fractions.shape[0]))
    gamma = rng.gamma(1 / BULK_DISPERSION, BULK_DISPERSION, mean.shape)
    return rng.poisson(library[:, None] * mean * gamma).astype(np.int64)


def simulate_atlas(
    levels: np.ndarray,
    program: np.ndarray,
    loading: np.ndarray,
    cells_per_type: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A labelled single-cell atlas: (counts (C, G) int64, type index (C,), donor (C,)).

    C = T * cells_per_type cells, in a random order, from ATLAS_DONORS donors of their own
    (z_d ~ N(0, I_K), drawn here: no patient of the cohort is among them). Cell c of type t and
    donor d: library L_c = CELL_UMIS c_t exp(0.35 e_c), relative expression P_t of donor d's
    tumour state (tumour types) and counts x_cj ~ Poisson(L_c P_tj g_cj), g ~ Gamma(1/CELL_DISPERSION,
    CELL_DISPERSION): sparse, overdispersed counts as in droplet scRNA-seq.
    """
    n_types, n_rna = levels.shape
    donor_z = rng.standard_normal((ATLAS_DONORS, N_PROGRAMS))
    shift = TUMOUR_STATE_SLOPE * donor_z[:, program[:n_rna]] * loading[:n_rna]
    profiles = type_profiles(levels, shift, n_types)  # (donors, T, G)
    cell_type = rng.permutation(np.repeat(np.arange(n_types), cells_per_type))
    donor = rng.integers(0, ATLAS_DONORS, len(cell_type))
    library = (
        CELL_UMIS
        * rna_content(n_types)[cell_type]
        * np.exp(0.35 * rng.standard_normal(len(cell_type)))
    )
    gamma = rng.gamma(1 / CELL_DISPERSION, CELL_DISPERSION, (len(cell_type), n_rna))
    mean = library[:, None] * profiles[donor, cell_type] * gamma
    return rng.poisson(mean).astype(np.int64), cell_type, donor


def write_atlas(
    path: Path,
    counts: np.ndarray,
    cell_type: np.ndarray,
    donor: np.ndarray,
    genes: list[str],
    type_names: list[str],
) -> Path:
    """Write the atlas as .h5ad atomically: X = CSR float32 counts, obs["cell_type"] (categories
    in CELL_TYPES order), obs["donor"], obs_names atlas-000001.., var_names the gene symbols."""
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=type_names),
            "donor": pd.Categorical([f"atlas-donor-{d + 1}" for d in donor]),
        },
        index=[f"atlas-{c + 1:06d}" for c in range(len(cell_type))],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=genes)
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def label_map_yaml(n_cell_types: int) -> bytes:
    """The label map (hpc_pgo.data.cells format) that keeps every atlas type as its own class."""
    names = cell_type_names(n_cell_types)
    return yaml.safe_dump(
        {"classes": names, "map": {n: n for n in names}}, sort_keys=False
    ).encode()


def simulate_survival(
    theta: np.ndarray, shape: float, censoring: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Weibull event times for log hazards theta: (N,) and independent exponential censoring times.

    T = lambda0 exp(-theta/k) (-log V)^(1/k), V ~ U(0,1); C = E / r, E ~ Exp(1), with the rate r
    chosen so that round(censoring * N) of the T exceed their C (C = inf when censoring = 0).
    Months; returns (T, C).
    """
    unit_weibull = rng.exponential(1.0, theta.shape[0]) ** (1.0 / shape)  # (-log V)^(1/k)
    event_time = BASELINE_SCALE_MONTHS * np.exp(-theta / shape) * unit_weibull
    unit_exp = rng.exponential(1.0, theta.shape[0])
    if censoring == 0:
        return event_time, np.full_like(event_time, np.inf)
    # A patient is censored iff r > E_i / T_i (C_i = E_i / r < T_i): r between two consecutive
    # sorted ratios censors exactly m = round(censoring * N) patients.
    ratios = np.sort(unit_exp / event_time)
    m = round(censoring * theta.shape[0])
    low = ratios[m - 1] if m > 0 else ratios[0] / 2
    high = ratios[m] if m < ratios.shape[0] else ratios[-1] * 2
    rate = math.sqrt(low * high)
    return event_time, unit_exp / rate


def render_roi(
    image_factor: float, size: int, rng: np.random.Generator, *, contrast: float = 1.0
) -> Image.Image:
    """One H&E-like RGB ROI (size x size px) whose nuclei density and size grow with image_factor.

    Textured pink stroma (a smooth random field, fine grain, a few darker fibres) under purple
    elliptical nuclei; density and radius follow the module docstring's formulas, their slopes
    on image_factor multiplied by contrast (1 = the documented slopes).
    """
    stroma = _stroma(size, rng)
    roi_density = math.exp(
        contrast * DENSITY_RISK_SLOPE * image_factor + DENSITY_ROI_NOISE * rng.standard_normal()
    )
    roi_radius = math.exp(
        contrast * RADIUS_RISK_SLOPE * image_factor + RADIUS_ROI_NOISE * rng.standard_normal()
    )
    count = rng.poisson(NUCLEI_PER_1000PX2 * roi_density * size * size / 1000.0)
    radius = (
        NUCLEUS_RADIUS_PX * roi_radius * np.exp(RADIUS_NUCLEUS_NOISE * rng.standard_normal(count))
    )
    polygons = _ellipse_polygons(
        centre=rng.uniform(0, size, (count, 2)),
        major=radius,
        minor=radius * rng.uniform(0.6, 1.0, count),
        angle=rng.uniform(0, math.pi, count),
    )
    # Each nucleus gets its own stain intensity; the blur softens the edges like a real focus.
    stain = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(stain)
    for polygon, intensity in zip(polygons, rng.uniform(0.75, 1.0, count), strict=True):
        draw.polygon(polygon.ravel().tolist(), fill=int(255 * intensity))
    weight = (
        np.asarray(stain.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)[..., None] / 255
    )
    chromatin = NUCLEUS_RGB * (1 + 0.08 * rng.standard_normal((size, size, 1)))
    rgb = stroma * (1 - weight) + chromatin * weight
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def _stroma(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float pink background: smooth brightness field, grain and a few fibres."""
    coarse = rng.standard_normal((6, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))
    stroma = STROMA_RGB * (
        1 + 0.05 * field[..., None] + 0.025 * rng.standard_normal((size, size, 1))
    )
    fibres = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(fibres)
    for _ in range(max(1, size // 24)):
        start = rng.uniform(0, size, 2)
        steps = np.cumsum(rng.normal(0, 1, (8, 2)) + rng.normal(0, 1, 2) * 2.5, axis=0)
        draw.line(np.vstack([start, start + steps * size / 32]).ravel().tolist(), fill=150, width=1)
    weight = (
        np.asarray(fibres.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float64)[..., None] / 255
    )
    return stroma * (1 - weight) + FIBER_RGB * weight


def _ellipse_polygons(
    centre: np.ndarray, major: np.ndarray, minor: np.ndarray, angle: np.ndarray
) -> np.ndarray:
    """(n, V, 2) vertices of n rotated ellipses: centre + R(angle) (major cos t, minor sin t)."""
    t = np.linspace(0, 2 * math.pi, _ELLIPSE_VERTICES, endpoint=False)
    x = major[:, None] * np.cos(t)
    y = minor[:, None] * np.sin(t)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([centre[:, :1] + x * cos - y * sin, centre[:, 1:] + x * sin + y * cos], axis=-1)


def saturate(score: np.ndarray, saturation: float | None) -> np.ndarray:
    """s tanh(score / s) for saturation s > 0 (slope 1 near 0, bounded by +-s); score for None."""
    if saturation is None:
        return score
    return saturation * np.tanh(score / saturation)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _check_options(**options) -> None:
    """PgoError naming the first write_demo_cohort option outside its valid range."""
    rules = {
        "n_patients": (lambda v: isinstance(v, int) and v >= 10, "an integer >= 10"),
        "rois_per_patient": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "image_size": (lambda v: isinstance(v, int) and v >= 16, "an integer >= 16 (pixels)"),
        "n_cnv": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "n_mut": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "n_rna": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "genomic_strength": (lambda v: math.isfinite(v), "a finite number"),
        "image_strength": (lambda v: math.isfinite(v), "a finite number"),
        "genomic_saturation": (
            lambda v: v is None or (math.isfinite(v) and v > 0),
            "a number > 0, or None (no saturation)",
        ),
        "image_contrast": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
        "weibull_shape": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
        "censoring": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
        "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        "rna_model": (lambda v: v in RNA_MODELS, f"one of {', '.join(RNA_MODELS)}"),
    }
    _check_rules(options, rules)


def _check_rules(options: dict, rules: dict) -> None:
    check_options(options, rules, "demo cohort")


def _cell_options(
    rna_model: str,
    n_cell_types: int | None,
    cell_strength: float | None,
    atlas_cells_per_type: int | None,
) -> dict | None:
    """The cell-mixture options with their defaults (None for rna_model "programs"); PgoError
    naming an option that is out of range or given without rna_model "cells"."""
    given = {
        "n_cell_types": n_cell_types,
        "cell_strength": cell_strength,
        "atlas_cells_per_type": atlas_cells_per_type,
    }
    if rna_model != "cells":
        for name, value in given.items():
            if value is not None:
                raise PgoError(
                    f"demo cohort option {name}={value!r} is invalid: it needs rna_model='cells' "
                    f"(rna_model is {rna_model!r})"
                )
        return None
    options = {
        "n_cell_types": 10 if n_cell_types is None else n_cell_types,
        "cell_strength": 1.0 if cell_strength is None else cell_strength,
        "atlas_cells_per_type": 200 if atlas_cells_per_type is None else atlas_cells_per_type,
    }
    rules = {
        "n_cell_types": (
            lambda v: isinstance(v, int) and MIN_CELL_TYPES <= v <= len(CELL_TYPES),
            f"an integer in {MIN_CELL_TYPES}..{len(CELL_TYPES)}",
        ),
        "cell_strength": (lambda v: math.isfinite(v), "a finite number"),
        "atlas_cells_per_type": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    }
    _check_rules(options, rules)
    return options


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # level 6 is 2x slower, barely smaller
    return buffer.getvalue()


def _csv_bytes(frame: pd.DataFrame, float_format: str) -> bytes:
    return frame.to_csv(index=False, float_format=float_format, lineterminator="\n").encode()


def _remove_stale_atlas(out_dir: Path) -> None:
    """Delete the atlas and label map an earlier rna_model="cells" run wrote in out_dir."""
    for name in (ATLAS_FILE, LABEL_MAP_FILE):
        if (out_dir / name).is_file():
            log.info("removing stale demo atlas file %s", out_dir / name)
            (out_dir / name).unlink()


def _remove_stale_rois(roi_dir: Path, keep: set[str]) -> None:
    """Delete demo ROIs (DEMO-*_*.png) in roi_dir that this run did not write."""
    for path in sorted(roi_dir.iterdir()):
        if _DEMO_ROI_NAME.match(path.name) and path.name not in keep:
            log.info("removing stale demo ROI %s", path)
            path.unlink()
