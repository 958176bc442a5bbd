"""Hand-designed features as scikit-learn transformers."""

from medcls.features.hog import HOGFeatures

__all__ = ["HOGFeatures"]
