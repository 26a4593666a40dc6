"""Curvature of the DDPM training loss: K-FAC / EK-FAC of the GGN (paper section 3.1).

- ``layers``: which layers are K-FAC'd (Linear, Conv2d incl. attention) and the ``[dW | db]`` layout;
- ``capture``: forward/tensor hooks giving layer inputs and output gradients, and their contractions;
- ``fisher``: ``FisherType`` (MC / empirical / type-2) and the vectors v backpropagated for each;
- ``accumulators``: the row pass shared by the accumulators, and the loop feeding them a dataset's batches;
- ``kfac``: K-FAC factors (eq. 12), their accumulator and ``fit_kfac_factors``;
- ``factors_io``: the factors on disk (safetensors, checksummed, written atomically);
- ``callback``: ``KFACCallback``, the curvature pass of a ``Trainer``;
- ``eigen``: eigendecomposition, damped inverse (preconditioning) and EK-FAC eigenvalue correction.
"""

from lit_attr.curvature.capture import LayerCapture
from lit_attr.curvature.eigen import (
    EigenvalueCorrectionAccumulator,
    KFACEigen,
    LayerEigen,
    eigendecompose_factors,
    fit_eigenvalue_correction,
    kfac_matrix,
    precondition,
)
from lit_attr.curvature.factors_io import factors_exist, factors_path, load_factors, save_factors
from lit_attr.curvature.fisher import FisherType
from lit_attr.curvature.kfac import KFACAccumulator, KFACApprox, KFACFactors, fit_kfac_factors
from lit_attr.curvature.layers import (
    gradient_shapes,
    layer_gradient_matrix,
    num_kfac_parameters,
    select_kfac_modules,
    split_gradient_matrix,
)

__all__ = [
    "EigenvalueCorrectionAccumulator",
    "FisherType",
    "KFACAccumulator",
    "KFACApprox",
    "KFACEigen",
    "KFACFactors",
    "LayerCapture",
    "LayerEigen",
    "eigendecompose_factors",
    "factors_exist",
    "factors_path",
    "fit_eigenvalue_correction",
    "fit_kfac_factors",
    "gradient_shapes",
    "kfac_matrix",
    "layer_gradient_matrix",
    "load_factors",
    "num_kfac_parameters",
    "precondition",
    "save_factors",
    "select_kfac_modules",
    "split_gradient_matrix",
]
