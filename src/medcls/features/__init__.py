"""Hand-designed features as scikit-learn transformers, combined by name."""

from __future__ import annotations

from sklearn.pipeline import FeatureUnion

from medcls.errors import MedclsError
from medcls.features.hog import HOGFeatures, as_images
from medcls.features.sift import SIFTBoVW
from medcls.features.stats import IntensityTexture

__all__ = ["HOGFeatures", "SIFTBoVW", "IntensityTexture", "make_features", "FEATURES", "as_images"]

FEATURES = {"hog": HOGFeatures, "sift": SIFTBoVW, "stats": IntensityTexture}


def make_features(spec: str) -> FeatureUnion:
    """``"hog"``, ``"hog+sift"``, ``"hog+sift+stats"``... -> a FeatureUnion of the extractors."""
    names = [s.strip() for s in spec.split("+") if s.strip()]
    bad = [n for n in names if n not in FEATURES]
    if not names or bad:
        raise MedclsError(f"unknown features {bad or spec!r}; combine {', '.join(FEATURES)} with '+'")
    return FeatureUnion([(n, FEATURES[n]()) for n in names])
