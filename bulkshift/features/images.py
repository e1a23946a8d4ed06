"""Load one image file of any size and mode into an RGB uint8 array.

Every extractor goes through :func:`load_image`, so a palette GIF, a 16-bit grayscale
PNG and a CMYK JPEG all reach the network the same way: RGB, 8 bits per channel,
transparency composited on white, resized to a square.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_SIZE = 224

ImageSource = str | os.PathLike | bytes | bytearray | memoryview

_WHITE = (255, 255, 255)


class ImageReadError(ValueError):
    """An image file could not be read: it is missing, empty, truncated or not an image.

    Parameters
    ----------
    path : str
        The file (or a description of the in-memory bytes) that failed.
    reason : str
        What went wrong, in words a person can act on.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"Cannot read image {self.path}: {reason}. Open the file in an image "
            "viewer; if it is damaged, export it again or move it out of the folder."
        )


def describe_source(source: ImageSource, name: str | None = None) -> str:
    """A short name for an image source, for messages: the path, or the byte count."""
    if name is not None:
        return str(name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes in memory>"
    return os.fspath(source)


def read_bytes(source: ImageSource, name: str | None = None) -> bytes:
    """The raw bytes of an image source (a path is read, bytes are returned as is).

    Raises
    ------
    ImageReadError
        The path does not exist or cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(describe_source(source, name), "the file does not exist")
    except IsADirectoryError:
        raise ImageReadError(describe_source(source, name), "this is a folder")
    except OSError as error:
        raise ImageReadError(
            describe_source(source, name), f"the file cannot be read ({error})"
        )


def load_image(
    source: ImageSource,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image and return it as RGB uint8 of shape (height, width, 3).

    Parameters
    ----------
    source : path or bytes
        A file path, or the encoded bytes of a file (PNG, JPEG, GIF, BMP, WebP, TIFF,
        anything Pillow opens).
    size : int or (width, height), default=224
        The output size. The whole image is resized to it, without cropping, as
        Keras' ``load_img(target_size=...)`` does.
    name : str, optional
        How to call the image in error messages (default: its path or byte count).

    Returns
    -------
    ndarray of uint8 of shape (height, width, 3)

    Raises
    ------
    ImageReadError
        The source is missing, empty, truncated, corrupt or not an image.
    """
    label = describe_source(source, name)
    width, height = (size, size) if isinstance(size, int) else size
    data = read_bytes(source, name)
    if not data:
        raise ImageReadError(label, "the file is empty (0 bytes)")

    try:
        with warnings.catch_warnings():
            # A large image is still an image; Pillow's DecompressionBombError above
            # twice the limit is caught below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; keeps at least
                # twice the target size so the final resize still antialiases.
                image.draft("RGB", (2 * width, 2 * height))
                image.load()
                image = _upright(image)
                rgb = _to_rgb(image)
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageReadError(
            label, "this is not an image file Pillow can recognize"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(label, f"the image is implausibly large ({error})")
    except Exception as error:
        # Pillow's decoders report damaged data as OSError, SyntaxError, ValueError,
        # EOFError, struct.error and more, depending on the format; any of them means
        # this one file is unusable, and must not stop a batch of thousands.
        raise ImageReadError(
            label, f"the image data is truncated or corrupt ({error})"
        ) from error


def _upright(image: Image.Image) -> Image.Image:
    """Apply the camera's EXIF orientation; a damaged EXIF block leaves it as is."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        # The pixels are fine; only the orientation tag is unreadable.
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    mode = image.mode

    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        image = _high_depth_to_l(image)
        mode = "L"

    has_transparency = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_transparency:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")

    if mode == "RGB":
        return image
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit / float) grayscale image to 8 bits.

    Pillow's own ``convert("L")`` clips such values at 255 instead of scaling them,
    which turns most 16-bit images white.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif image.mode == "F":
        # Float images are taken as 0..1 when they fit, else as 0..255.
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        # 32-bit integer: 16-bit data when any value needs it, else already 8-bit.
        scale = 255.0 / 65535.0 if values.size and values.max() > 255 else 1.0
    return Image.fromarray(
        np.clip(values * scale, 0, 255).round().astype(np.uint8), "L"
    )
