"""Image loading, the pixel and VGG16 extractors, and the feature caches."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bulkshift.features import (
    DirectoryFeatureCache,
    ImageReadError,
    PixelExtractor,
    RedisFeatureCache,
    WeightsUnavailableError,
    extract_cached,
    get_extractor,
    image_digest,
    load_image,
)
from bulkshift.features import extractors as extractors_module

# --------------------------------------------------------------------------- helpers


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(mode: str, color, size=(40, 30)) -> Image.Image:
    return Image.new(mode, size, color)


@pytest.fixture
def image_files(tmp_path) -> list[Path]:
    """Six small distinct PNGs of different sizes."""
    rng = np.random.default_rng(7)
    paths = []
    for index in range(6):
        height, width = 20 + 7 * index, 30 + 5 * index
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = tmp_path / f"image-{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def broken_file(tmp_path) -> Path:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    return path


class CountingPixels(PixelExtractor):
    """Pixel extractor that counts the images it computes."""

    def __init__(self, **options):
        super().__init__(**options)
        self.computed = 0

    def _compute(self, images):
        self.computed += len(images)
        return super()._compute(images)


# --------------------------------------------------------------------------- images


def test_rgb_image_is_resized_to_224_and_keeps_its_color():
    array = load_image(encode(solid("RGB", (200, 10, 30), size=(500, 90))))

    assert array.shape == (224, 224, 3)
    assert array.dtype == np.uint8
    assert (array == [200, 10, 30]).all()


def test_requested_size_as_int_and_as_width_height():
    data = encode(solid("RGB", (1, 2, 3)))

    assert load_image(data, size=32).shape == (32, 32, 3)
    assert load_image(data, size=(48, 16)).shape == (16, 48, 3)


def test_grayscale_becomes_three_equal_channels():
    array = load_image(encode(solid("L", 77)), size=8)

    assert (array == 77).all()


def test_palette_image_keeps_its_colors():
    image = solid("RGB", (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)

    array = load_image(encode(image), size=8)

    assert (array == [0, 128, 255]).all()


def test_palette_transparency_is_white():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))  # left half: index 1 (blue), right half index 0
    data = encode(image, transparency=0)  # index 0 (red) is transparent

    array = load_image(data, size=(10, 10))

    assert (array[:, :4] == [0, 0, 255]).all()
    assert (array[:, 6:] == [255, 255, 255]).all()


def test_rgba_is_composited_on_white():
    transparent = load_image(encode(solid("RGBA", (0, 0, 0, 0))), size=4)
    half_red = load_image(encode(solid("RGBA", (255, 0, 0, 128))), size=4)

    assert (transparent == 255).all()
    # 255 * (128/255) + 255 * (1 - 128/255) for red; 255 * (1 - 128/255) = 127 else.
    assert (half_red == [255, 127, 127]).all()


def test_gray_with_alpha_is_composited_on_white():
    array = load_image(encode(solid("LA", (0, 0))), size=4)

    assert (array == 255).all()


def test_16_bit_grayscale_is_scaled_not_clipped():
    pixels = np.full((10, 10), 32896, dtype=np.uint16)  # 128 * 257
    pixels[:, 5:] = 65535
    data = encode(Image.fromarray(pixels))

    array = load_image(data, size=(10, 10))

    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert (array[:, :4] == 128).all()
    assert (array[:, 6:] == 255).all()


def test_cmyk_jpeg_becomes_rgb():
    array = load_image(encode(solid("CMYK", (0, 0, 0, 0)), "JPEG"), size=4)

    assert array.shape == (4, 4, 3)
    assert (array >= 250).all()  # no ink is white


def test_camera_orientation_is_applied():
    image = Image.new("RGB", (40, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"

    array = load_image(encode(image, "JPEG", quality=95, exif=exif), size=(10, 40))

    # Turned clockwise, the left half is on top.
    assert (np.abs(array[:15].astype(int) - [255, 0, 0]) < 40).all()
    assert (np.abs(array[25:].astype(int) - [0, 0, 255]) < 40).all()


def test_image_is_read_from_a_path(image_files):
    from_path = load_image(image_files[0], size=16)
    from_bytes = load_image(image_files[0].read_bytes(), size=16)

    np.testing.assert_array_equal(from_path, from_bytes)


def _truncated_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def _damaged_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = bytearray(
        encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)))
    )
    data[2000:2040] = b"\xff" * 40  # inside the compressed pixel data
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    return path


def _truncated_jpeg(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=95)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.mark.parametrize(
    "make_file, reason",
    [
        (lambda tmp: _write(tmp / "empty.png", b""), "empty"),
        (lambda tmp: _write(tmp / "notes.png", b"shopping list\n"), "not an image"),
        (
            lambda tmp: _write(tmp / "corrupt.png", b"\x89PNG\r\n\x1a\n" + b"x" * 50),
            "corrupt",
        ),
        (_damaged_png, "corrupt"),
        (_truncated_png, "truncated"),
        (_truncated_jpeg, "truncated"),
        (lambda tmp: tmp / "missing.png", "does not exist"),
    ],
    ids=[
        "empty",
        "not-an-image",
        "corrupt-header",
        "corrupt-pixel-data",
        "truncated-png",
        "truncated-jpeg",
        "missing",
    ],
)
def test_unreadable_files_raise_image_read_error(tmp_path, make_file, reason):
    path = make_file(tmp_path)

    with pytest.raises(ImageReadError, match=reason) as caught:
        load_image(path)

    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert "move it out of the folder" in str(caught.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_error_on_bytes_names_the_given_name():
    with pytest.raises(ImageReadError, match="task 12"):
        load_image(b"not an image", name="task 12")


# --------------------------------------------------------------------------- extractors


def test_importing_features_does_not_import_tensorflow():
    code = (
        "import sys, bulkshift.features; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pixels_of_a_solid_image_computed_by_hand():
    extractor = get_extractor("pixels", size=2)
    data = encode(solid("RGB", (255, 51, 0)))

    result = extractor.extract([data], progress=False)

    assert extractor.extractor_id == "pixels-2-rgb"
    assert extractor.dim == 12
    assert result.extractor_id == "pixels-2-rgb"
    expected = np.tile([1.0, 0.2, 0.0], 4).astype(np.float32)
    np.testing.assert_allclose(result.features, [expected], atol=1e-6)
    assert result.features.dtype == np.float32


def test_gray_pixels():
    extractor = get_extractor("pixels", size=3, color="gray")

    result = extractor.extract([encode(solid("RGB", (255, 255, 255)))], progress=False)

    assert extractor.extractor_id == "pixels-3-gray"
    assert result.features.shape == (1, 9)
    np.testing.assert_allclose(result.features, 1.0, atol=1e-6)


def test_one_bad_image_does_not_stop_the_batch(image_files, broken_file):
    items = [image_files[0], broken_file, image_files[1], image_files[2]]

    result = get_extractor("pixels").extract(items, batch_size=2, progress=False)

    assert result.features.shape == (3, 32 * 32 * 3)
    assert result.ok_indices.tolist() == [0, 2, 3]
    assert result.error_indices.tolist() == [1]
    assert len(result.errors) == 1
    item, message = result.errors[0]
    assert item == broken_file
    assert str(broken_file) in message


def test_pca_pixels_have_the_asked_width_and_follow_the_seed(image_files):
    extractor = get_extractor("pixels", size=8, pca_components=3, seed=1)

    first = extractor.extract(image_files, progress=False)
    second = extractor.extract(image_files, progress=False)

    assert extractor.extractor_id == "pixels-8-rgb-pca3"
    assert extractor.per_image_id == "pixels-8-rgb"
    assert first.features.shape == (6, 3)
    np.testing.assert_array_equal(first.features, second.features)
    # Centered: the components of a fitted PCA average to zero over the set.
    np.testing.assert_allclose(first.features.mean(axis=0), 0, atol=1e-5)


def test_pca_with_fewer_images_than_components_pads_with_zeros(image_files):
    extractor = get_extractor("pixels", size=4, pca_components=5)

    result = extractor.extract(image_files[:3], progress=False)

    assert result.features.shape == (3, 5)
    assert (result.features[:, 3:] == 0).all()
    assert np.abs(result.features[:, 0]).sum() > 0


def test_unknown_extractor_name():
    with pytest.raises(ValueError, match="'resnet'.*vgg16, pixels"):
        get_extractor("resnet")


def test_bad_batch_size(image_files):
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        get_extractor("pixels").extract(image_files, batch_size=0)


# VGG16 weights: resolved without TensorFlow and without network.


@pytest.fixture
def no_keras_cache(tmp_path, monkeypatch):
    """A machine without the ImageNet weights and without any weights settings."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(extractors_module.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(extractors_module.ALLOW_DOWNLOAD_ENV, raising=False)
    folders = [tmp_path / "keras-home" / "models", tmp_path / "home" / ".keras/models"]
    monkeypatch.setattr(extractors_module, "keras_cache_dirs", lambda: folders)
    return folders


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_missing_imagenet_weights_fail_at_once_with_instructions(
    no_keras_cache, no_network
):
    started = time.perf_counter()

    with pytest.raises(WeightsUnavailableError) as caught:
        get_extractor("vgg16")

    # A hang guard, not a speed target: the decision needs no network and no model.
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "--vgg16-weights PATH" in message
    assert "BULKSHIFT_VGG16_WEIGHTS" in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--extractor pixels" in message
    assert str(no_keras_cache[0]) in message


def test_missing_weights_file_is_named(no_keras_cache, tmp_path):
    missing = tmp_path / "nowhere.h5"

    with pytest.raises(WeightsUnavailableError, match=f"{missing} does not exist"):
        get_extractor("vgg16", weights=missing)


def test_weights_env_var_is_the_default(no_keras_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("BULKSHIFT_VGG16_WEIGHTS", str(tmp_path / "from-env.h5"))

    with pytest.raises(WeightsUnavailableError, match="from-env.h5 does not exist"):
        get_extractor("vgg16")


def test_download_only_when_allowed(no_keras_cache, no_network, monkeypatch):
    monkeypatch.setenv("BULKSHIFT_ALLOW_DOWNLOAD", "1")

    # Resolves only; nothing is built or downloaded yet.
    extractor = get_extractor("vgg16", precision="float32")

    assert extractor.weights.source == "download"
    assert extractor.extractor_id == "vgg16-block5_pool-avg512-imagenet"
    with pytest.raises(WeightsUnavailableError):
        get_extractor("vgg16", allow_download=False)


def test_imagenet_weights_are_found_in_the_keras_cache(no_keras_cache, no_network):
    cached = no_keras_cache[1] / extractors_module.KERAS_NOTOP_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")

    extractor = get_extractor("vgg16", weights="imagenet", precision="float32")

    assert extractor.weights.path == str(cached)
    assert extractor.extractor_id == "vgg16-block5_pool-avg512-imagenet"


def test_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.delenv("BULKSHIFT_VGG16_PRECISION", raising=False)

    monkeypatch.setattr(extractors_module, "cpu_has_fast_bfloat16", lambda: True)
    assert get_extractor("vgg16", weights=None).extractor_id.endswith("-seed0-bf16")
    monkeypatch.setattr(extractors_module, "cpu_has_fast_bfloat16", lambda: False)
    assert get_extractor("vgg16", weights=None).extractor_id.endswith("-seed0")


def test_precision_from_the_environment_and_checked(monkeypatch):
    monkeypatch.setenv("BULKSHIFT_VGG16_PRECISION", "float32")
    monkeypatch.setattr(extractors_module, "cpu_has_fast_bfloat16", lambda: True)

    assert get_extractor("vgg16", weights=None).precision == "float32"
    with pytest.raises(ValueError, match="one of auto, float32, bfloat16, got 'fp8'"):
        get_extractor("vgg16", weights=None, precision="fp8")


def test_keras_cache_dirs_follow_keras_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    assert extractors_module.keras_cache_dirs()[0] == tmp_path / "models"


def test_a_supplied_copy_of_the_imagenet_file_is_recognized(tmp_path, monkeypatch):
    path = tmp_path / "renamed.h5"
    path.write_bytes(b"pretend ImageNet weights")
    md5, sha256 = extractors_module._file_digests(path)

    other = get_extractor("vgg16", weights=path, precision="float32")
    monkeypatch.setattr(extractors_module, "KERAS_NOTOP_MD5", md5)
    imagenet = get_extractor("vgg16", weights=path, precision="float32")

    assert other.extractor_id == f"vgg16-block5_pool-avg512-weightsfile-{sha256[:12]}"
    assert imagenet.extractor_id == "vgg16-block5_pool-avg512-imagenet"


# VGG16 compute (TensorFlow): random weights, and weights read from a file. Marked
# slow because the first of them imports TensorFlow; together they take about 20 s.


@pytest.mark.slow  # imports TensorFlow (about 10 s the first time)
def test_vgg16_random_weights_give_512_float32(image_files, broken_file):
    extractor = get_extractor("vgg16", weights=None, precision="float32")

    result = extractor.extract(image_files[:3] + [broken_file], progress=False)

    assert extractor.extractor_id == "vgg16-block5_pool-avg512-random-seed0"
    assert extractor.dim == 512
    assert result.features.shape == (3, 512)
    assert result.features.dtype == np.float32
    assert np.isfinite(result.features).all()
    assert result.ok_indices.tolist() == [0, 1, 2]
    assert result.errors[0][0] == broken_file
    # Different images, different features.
    assert not np.allclose(result.features[0], result.features[1])
    # Batching does not change an image's features.
    alone = extractor.extract(image_files[1:2], progress=False).features
    np.testing.assert_allclose(alone[0], result.features[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # imports TensorFlow (about 10 s the first time)
def test_seeded_random_weights_are_the_same_in_every_build():
    import keras

    def build():
        model = keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Dense(2)]
        )
        extractors_module._set_seeded_random_weights(model, seed=3)
        return model.get_weights()

    first, second = build(), build()

    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    kernel = first[0]
    limit = np.sqrt(6 / (9 * 3 + 9 * 4))  # Glorot-uniform bound of a 3x3, 3->4 conv
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.5 * limit
    assert (first[1] == 0).all()


@pytest.mark.slow  # imports TensorFlow
def test_vgg16_bfloat16_is_close_to_float32_and_has_its_own_id(image_files):
    import keras

    policy = keras.config.dtype_policy().name
    exact = get_extractor("vgg16", weights=None, precision="float32")
    fast = get_extractor("vgg16", weights=None, precision="bfloat16")

    reference = exact.extract(image_files[:3], progress=False).features
    features = fast.extract(image_files[:3], progress=False).features

    assert fast.extractor_id == "vgg16-block5_pool-avg512-random-seed0-bf16"
    assert features.dtype == np.float32
    cosine = (reference * features).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(features, axis=1)
    )
    assert cosine.min() > 0.999
    assert keras.config.dtype_policy().name == policy  # the global policy is restored


def _vgg16_reference(tmp_path):
    """A VGG16 notop with random weights, and its features computed by hand."""
    import keras
    from keras.applications.vgg16 import preprocess_input

    model = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg"
    )

    def features(paths):
        batch = np.stack([load_image(path) for path in paths]).astype(np.float32)
        return model.predict_on_batch(preprocess_input(batch))

    return model, features


@pytest.mark.slow  # imports TensorFlow (about 10 s the first time)
def test_vgg16_weights_file_gives_the_features_of_the_saved_model(
    tmp_path, image_files
):
    model, reference = _vgg16_reference(tmp_path)
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)

    extractor = get_extractor("vgg16", weights=path, precision="float32")
    result = extractor.extract(image_files[:2], progress=False)

    assert extractor.extractor_id.startswith("vgg16-block5_pool-avg512-weightsfile-")
    np.testing.assert_allclose(
        result.features, reference(image_files[:2]), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow  # imports TensorFlow (about 10 s the first time)
def test_vgg16_legacy_h5_file_like_keras_imagenet_file(tmp_path, image_files):
    # Keras' ImageNet file is in the legacy HDF5 layout (one group per layer name).
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model, reference = _vgg16_reference(tmp_path)
    path = tmp_path / "legacy_notop.h5"
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)

    extractor = get_extractor("vgg16", weights=path, precision="float32")
    result = extractor.extract(image_files[3:4], progress=False)

    np.testing.assert_allclose(
        result.features, reference(image_files[3:4]), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_vgg16_file_of_another_model_fails_with_the_path(tmp_path, image_files):
    import keras

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    extractor = get_extractor("vgg16", weights=path)

    with pytest.raises(WeightsUnavailableError, match="small.weights.h5"):
        extractor.extract(image_files[:1], progress=False)


# --------------------------------------------------------------------------- caches


@pytest.fixture
def redis_client(tmp_path):
    """A redis-server of our own on a free port, and a client to it."""
    redis = pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=False)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["directory", "redis"])
def cache(request, tmp_path):
    if request.param == "directory":
        return DirectoryFeatureCache(tmp_path / "feature-cache")
    client = request.getfixturevalue("redis_client")
    return RedisFeatureCache(client, chunk_size=2)  # small chunks: several MGETs


def test_cache_round_trip_and_misses(cache):
    vectors = {"a" * 64: np.arange(4, dtype=np.float32), "b" * 64: np.ones(4)}

    cache.put_many("pixels-1-gray", vectors)
    found = cache.get_many("pixels-1-gray", ["a" * 64, "c" * 64, "b" * 64], dim=4)

    np.testing.assert_array_equal(found[0], [0, 1, 2, 3])
    assert found[1] is None
    np.testing.assert_array_equal(found[2], [1, 1, 1, 1])
    assert found[2].dtype == np.float32
    # Another extractor never sees these vectors; a wrong width is a miss.
    assert cache.get_many("pixels-2-gray", ["a" * 64], dim=4) == [None]
    assert cache.get_many("pixels-1-gray", ["a" * 64], dim=5) == [None]


def test_cache_rejects_ids_unsafe_for_paths_and_keys(cache):
    with pytest.raises(ValueError, match="'../etc'"):
        cache.get_many("../etc", ["a" * 64], dim=1)


def test_extract_cached_computes_only_the_misses(cache, image_files, broken_file):
    extractor = CountingPixels(size=8)
    duplicate = image_files[0].parent / "copy-of-0.png"
    shutil.copy(image_files[0], duplicate)
    items = image_files[:4] + [broken_file, duplicate]

    first = extract_cached(extractor, items, cache, batch_size=2, progress=False)
    computed_first = extractor.computed
    second = extract_cached(extractor, items, cache, progress=False)
    plain = extractor.extract(items, progress=False)

    assert computed_first == 4  # the copy is computed once, the broken file never
    assert extractor.computed == 4 + 5  # the second pass computed nothing
    assert first.ok_indices.tolist() == [0, 1, 2, 3, 5]
    assert [item for item, _ in first.errors] == [broken_file]
    assert first.error_indices.tolist() == [4]
    np.testing.assert_array_equal(first.features, plain.features)
    np.testing.assert_array_equal(second.features, plain.features)
    assert second.extractor_id == "pixels-8-rgb"


def test_extract_cached_with_pca_caches_pixels_and_fits_on_the_set(cache, image_files):
    extractor = CountingPixels(size=8, pca_components=2, seed=0)

    extract_cached(extractor, image_files, cache, progress=False)
    result = extract_cached(extractor, image_files, cache, progress=False)

    assert extractor.computed == 6
    assert result.extractor_id == "pixels-8-rgb-pca2"
    np.testing.assert_allclose(
        result.features,
        extractor.extract(image_files, progress=False).features,
        atol=1e-5,
    )


def test_extract_cached_missing_file_is_an_error(cache, image_files, tmp_path):
    missing = tmp_path / "gone.png"

    result = extract_cached(
        get_extractor("pixels"), [missing, image_files[0]], cache, progress=False
    )

    assert result.ok_indices.tolist() == [1]
    assert result.errors[0][0] == missing
    assert "does not exist" in result.errors[0][1]


def test_redis_keys_and_values(redis_client, image_files):
    cache = RedisFeatureCache(redis_client)
    extractor = get_extractor("pixels", size=2)

    result = extract_cached(extractor, image_files[:1], cache, progress=False)

    digest = image_digest(image_files[0].read_bytes())
    stored = redis_client.get(f"bulkshift:features:pixels-2-rgb:{digest}")
    assert stored is not None
    np.testing.assert_array_equal(np.frombuffer(stored, "<f4"), result.features[0])


def test_directory_cache_layout(tmp_path, image_files):
    cache = DirectoryFeatureCache(tmp_path / "cache")

    extract_cached(
        get_extractor("pixels", size=2), image_files[:1], cache, progress=False
    )

    digest = image_digest(image_files[0].read_bytes())
    path = tmp_path / "cache" / "pixels-2-rgb" / digest[:2] / f"{digest}.f32"
    assert path.stat().st_size == 12 * 4
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_extract_cached_without_cache_is_plain_extraction(image_files):
    result = extract_cached(
        get_extractor("pixels"), image_files[:2], None, progress=False
    )

    assert result.features.shape == (2, 3072)
