"""Image features: loading, the VGG16 and pixel extractors, and feature caches.

Importing this package does not import TensorFlow; the VGG16 model is built at its
first use.
"""

from bulkshift.features.cache import (
    DirectoryFeatureCache,
    FeatureCache,
    RedisFeatureCache,
    extract_cached,
    image_digest,
)
from bulkshift.features.extractors import (
    EXTRACTORS,
    ExtractionResult,
    FeatureExtractor,
    PixelExtractor,
    VGG16Extractor,
    WeightsUnavailableError,
    get_extractor,
)
from bulkshift.features.images import ImageReadError, load_image

__all__ = [
    "EXTRACTORS",
    "DirectoryFeatureCache",
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "ImageReadError",
    "PixelExtractor",
    "RedisFeatureCache",
    "VGG16Extractor",
    "WeightsUnavailableError",
    "extract_cached",
    "get_extractor",
    "image_digest",
    "load_image",
]
