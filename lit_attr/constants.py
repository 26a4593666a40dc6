"""File names and keys shared by writers and readers of lit-attr outputs."""

SCORES_FILE = "scores.npy"
"""Score matrix, shape (num_train, num_queries)."""
DONE_MASK_FILE = "scores_done.npy"
"""uint8 mask over training examples: 1 where the row of scores is written."""
METADATA_FILE = "metadata.json"
"""Arguments, dataset and model hashes, and ``finalized`` (written last)."""
FACTORS_FILE = "factors.safetensors"
"""K-FAC factors (and eigendecomposition) of the curvature pass."""
QUERIES_FILE = "queries.pt"
"""Query images (and sampling trajectories) that the scores refer to."""
LATENTS_FILE = "latents.pt"
"""Cached training latents of a latent DDPM (with the VAE hash and data fingerprint they belong to)."""
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIGURE_FILE = "influence.png"
QUERIES_PNG = "queries.png"
TRAIN_INDICES_FILE = "train_indices.npy"
REPORT_FILES = (REPORT_JSON, REPORT_MD, FIGURE_FILE, QUERIES_PNG)
"""Outputs derived from finalized scores (rewritten by every finished run)."""
RUN_FILES = (SCORES_FILE, DONE_MASK_FILE, QUERIES_FILE, TRAIN_INDICES_FILE, *REPORT_FILES, METADATA_FILE)
"""Everything an attribution run writes into its folder besides factors/ and logs (metadata last)."""
FINALIZED_KEY = "finalized"
CHECKSUMS_KEY = "checksums"
"""Metadata key: file name -> SHA-256 (16 hex digits) of every output file, verified by readers."""
DAMAGED_KEY = "damaged"
"""Metadata key: files found not to match their checksums (the run must be recomputed)."""
VOLATILE_METADATA_KEYS = frozenset({FINALIZED_KEY, "created", "finished", "elapsed_s", "num_devices", CHECKSUMS_KEY,
                                    "checkpoint"})
"""Metadata keys that may differ between an interrupted run and its resumption (the checkpoint path may be
spelled differently; its content is compared through ``model_hash``)."""
