"""Analyses of trained residual networks (Veit et al. 2016, "Residual Networks Behave Like Ensembles of
Relatively Shallow Networks").

  lesion.py  remove units at test time: single-unit and random k-unit lesions (one compiled forward pass)
  paths.py   path-length distribution and gradient magnitude per path length (one compiled gradient)
"""

from resnet_jax.analysis.lesion import (LesionResult, gated_accuracies, lesion_accuracy, random_unit_lesions,
                                        single_unit_lesions)
from resnet_jax.analysis.paths import (PathGradientResult, gradient_magnitude_by_path_length, path_counts,
                                       path_length_distribution)

__all__ = [
    "LesionResult", "PathGradientResult", "gated_accuracies", "gradient_magnitude_by_path_length",
    "lesion_accuracy", "path_counts", "path_length_distribution", "random_unit_lesions", "single_unit_lesions",
]
