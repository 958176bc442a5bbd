"""Hand-designed features as scikit-learn transformers, combined by name."""

from __future__ import annotations

from sklearn.pipeline import FeatureUnion

from medcls.errors import MedclsError
from medcls.features.hog import HOGFeatures, as_images
from medcls.features.shape import ShapeFeatures
from medcls.features.sift import SIFTBoVW
from medcls.features.stats import IntensityTexture
from medcls.features.texture import MultiScaleTexture
from medcls.features.thumbnail import Thumbnail, as_volumes

__all__ = ["HOGFeatures", "SIFTBoVW", "IntensityTexture", "MultiScaleTexture", "Thumbnail", "ShapeFeatures",
           "make_features", "FEATURES", "WHOLE_VOLUME_FEATURES", "PLANAR_FEATURES", "DEFAULT_FEATURES",
           "resolve_features", "takes_whole_volumes", "as_images", "as_volumes"]

FEATURES = {"hog": HOGFeatures, "sift": SIFTBoVW, "stats": IntensityTexture, "texture": MultiScaleTexture,
            "pixels": Thumbnail, "shape": ShapeFeatures}
PLANAR_FEATURES = frozenset({"hog", "sift", "stats", "texture"})  # of 2-D images (a volume's slices)
WHOLE_VOLUME_FEATURES = frozenset({"shape"})  # of whole volumes only; "pixels" takes either
# what --features auto means, chosen on validation over three seeds (bench/classical_sweep.py,
# bench/results/classical_sweep.json; bench/README.md has the table)
DEFAULT_FEATURES = {"image": "hog+stats+texture+pixels", "volume": "shape+pixels"}


def _names(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split("+") if s.strip()]
    bad = [n for n in names if n not in FEATURES]
    if not names or bad:
        raise MedclsError(f"unknown features {bad or spec!r}; combine {', '.join(FEATURES)} with '+', or auto")
    return names


def resolve_features(spec: str, is_volume: bool) -> str:
    """``auto`` -> the default for images or volumes; any other spec is checked and returned as given."""
    if spec.strip() == "auto":
        return DEFAULT_FEATURES["volume" if is_volume else "image"]
    _names(spec)
    return spec


def takes_whole_volumes(spec: str) -> bool:
    """Whether the features describe whole volumes (one item per volume) rather than 2-D images or slices.

    Raises:
        MedclsError: whole-volume features combined with 2-D ones.
    """
    names = set(_names(spec))
    whole = names & WHOLE_VOLUME_FEATURES
    planar = names & PLANAR_FEATURES
    if whole and planar:
        raise MedclsError(f"features {spec!r}: {', '.join(sorted(whole))} describe whole volumes and "
                          f"{', '.join(sorted(planar))} 2-D slices; combine {', '.join(sorted(whole))} with "
                          "pixels, or the 2-D features with each other")
    return bool(whole)


def make_features(spec: str) -> FeatureUnion:
    """``"hog"``, ``"hog+sift"``, ``"hog+sift+stats"``... -> a FeatureUnion of the extractors."""
    return FeatureUnion([(n, FEATURES[n]()) for n in _names(spec)])
