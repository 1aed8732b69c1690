"""Image loading (every mode and every way a file can be bad), the skipper, transforms and the cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcli.data import images
from mmcli.data.images import (BadImage, ImageCache, ImageSkipper, cache_size, load_image, make_transform,
                               resize_center_crop)
from mmcli.errors import UserError

CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
          "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth(w: int, h: int) -> Image.Image:
    """A gradient: survives JPEG and resizing well, unlike noise."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
                           .astype(np.uint8))


def truncated_jpeg(path: Path) -> Path:
    noise(64, 64).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def assert_bad(path, *words: str, **kwargs) -> BadImage:
    with pytest.raises(BadImage) as info:
        load_image(path, **kwargs)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    assert all(w in msg for w in words), msg
    assert isinstance(info.value, UserError)
    return info.value


def px(img: Image.Image, xy) -> np.ndarray:
    return np.array(img.getpixel(xy), dtype=int)


# ----------------------------------------------------------------------------- bad files


def test_missing_empty_text_truncated_and_directory(tmp_path):
    assert_bad(tmp_path / "missing.jpg", "no such file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert_bad(tmp_path / "empty.jpg", "empty", "0 bytes")
    (tmp_path / "text.jpg").write_text("not really a jpeg\n")
    assert_bad(tmp_path / "text.jpg", "not an image")
    assert_bad(truncated_jpeg(tmp_path / "trunc.jpg"), "truncated")
    png = tmp_path / "trunc.png"
    noise(64, 64).save(png)
    png.write_bytes(png.read_bytes()[:-300])
    assert_bad(png)
    assert_bad(tmp_path, "directory")


def test_nul_in_path_is_a_bad_image():
    with pytest.raises(BadImage) as info:
        load_image("a\0b.jpg")
    assert str(info.value) == "'a\\x00b.jpg': not a valid file path (it contains a NUL byte)"


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    noise(4, 4).save(path)
    path.chmod(0)
    try:
        if os.geteuid() == 0:
            pytest.skip("running as root: file permissions do not stop reading")
        assert_bad(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    """The same path as above, even as root: open() itself refuses."""
    path = tmp_path / "secret.png"
    noise(4, 4).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    assert_bad(path, "permission denied")


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 7000)).save(bomb)  # 56 MP > 50 MP, but only a few KB on disk
    assert bomb.stat().st_size < 100_000
    assert_bad(bomb, "too many pixels", "8000x7000")


def test_pixel_limit_is_ours_and_pil_globals_are_untouched(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    noise(20, 20).save(path)
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    assert_bad(path, "too many pixels", "20x20")
    assert load_image(path, max_pixels=400).size == (20, 20)
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # PIL warns (over 300), ours allows: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (20, 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice PIL's own limit: PIL refuses
    assert_bad(path, "too many pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's check off: ours still applies
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert_bad(path, "too many pixels")
    monkeypatch.undo()
    assert Image.MAX_IMAGE_PIXELS == before


# ----------------------------------------------------------------------------- modes


def test_rgba_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 0, 128))
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert px(out, (0, 0)).tolist() == [255, 255, 255]  # not black: alpha was composited, not dropped
    assert np.abs(px(out, (1, 0)) - 127).max() <= 1
    assert px(out, (2, 2)).tolist() == [10, 20, 30]


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.save(tmp_path / "t.png", transparency=0)
    img.save(tmp_path / "p.png")
    out = load_image(tmp_path / "t.png")
    assert Image.open(tmp_path / "t.png").mode == "P" and out.mode == "RGB"
    assert px(out, (0, 0)).tolist() == [255, 255, 255]
    assert px(out, (1, 1)).tolist() == [0, 200, 0]
    plain = load_image(tmp_path / "p.png")
    assert px(plain, (0, 0)).tolist() == [0, 0, 0] and px(plain, (1, 1)).tolist() == [0, 200, 0]


def test_grey_with_alpha(tmp_path):
    img = Image.new("LA", (4, 4), (100, 255))
    img.putpixel((0, 0), (0, 0))
    img.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = load_image(tmp_path / "la.png")
    assert px(out, (0, 0)).tolist() == [255, 255, 255]
    assert px(out, (1, 1)).tolist() == [100, 100, 100]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535, 257 * 100, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    out = np.asarray(load_image(tmp_path / "16.png"))
    assert out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255, 100, 4]  # clipping would give 255 for all but 0
    assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_int_and_float_greyscale(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535, 70000, -5]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert np.asarray(load_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 128, 255, 255, 0]
    Image.fromarray(np.array([[0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert np.asarray(load_image(tmp_path / "unit.tif"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0, 100.4, 300]], dtype=np.float32)).save(tmp_path / "byte.tif")
    assert np.asarray(load_image(tmp_path / "byte.tif"))[0, :, 0].tolist() == [0, 100, 255]


def test_bilevel_and_grey(tmp_path):
    img = Image.new("1", (4, 4), 0)
    img.putpixel((3, 3), 1)
    img.save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    assert px(out, (0, 0)).tolist() == [0, 0, 0] and px(out, (3, 3)).tolist() == [255, 255, 255]
    Image.new("L", (3, 3), 77).save(tmp_path / "l.png")
    assert px(load_image(tmp_path / "l.png"), (1, 1)).tolist() == [77, 77, 77]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB"
    assert np.abs(px(out, (8, 8)) - [255, 0, 0]).max() <= 8  # no cyan, full magenta and yellow: red


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 6, 6))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert np.abs(px(out, (17, 2)) - [255, 0, 0]).max() < 40  # the stored top-left is now top-right
    assert np.abs(px(out, (2, 2)) - [0, 0, 255]).max() < 40
    assert out.getexif().get(0x0112) in (None, 1)  # a second transpose would be a no-op


@pytest.mark.parametrize("size", [(1, 10000), (10000, 1), (1, 1)])
def test_extreme_and_tiny_sizes_load(tmp_path, size):
    Image.new("RGB", size, (1, 2, 3)).save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.size == size and out.mode == "RGB" and px(out, (0, 0)).tolist() == [1, 2, 3]


def test_loaded_image_is_independent_of_the_file(tmp_path):
    path = tmp_path / "a.jpg"
    smooth(30, 20).save(path)
    out = load_image(str(path))
    path.unlink()  # fully decoded and the file closed: still usable
    assert out.mode == "RGB" and out.size == (30, 20) and np.asarray(out).sum() > 0


# ----------------------------------------------------------------------------- skipper


def test_skipper_warns_counts_and_summarises(tmp_path, capsys):
    good = tmp_path / "good.png"
    noise(8, 8).save(good)
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    skipper = ImageSkipper()
    assert skipper.summary() is None
    assert skipper.load(good).size == (8, 8)
    assert skipper.load(bad) is None
    assert skipper.load(tmp_path / "gone.jpg") is None
    err = capsys.readouterr().err.splitlines()
    assert err == [f"mmcli: warning: skipping {bad}: truncated file (the image data ends early)",
                   f"mmcli: warning: skipping {tmp_path / 'gone.jpg'}: no such file"]
    assert skipper.count == 2 and [p for p, _ in skipper.skipped] == [str(bad), str(tmp_path / "gone.jpg")]
    assert skipper.summary() == f"mmcli: warning: skipped 2 bad images (first: {bad})"


def test_strict_skipper_reraises(tmp_path, capsys):
    skipper = ImageSkipper(strict=True)
    with pytest.raises(BadImage, match="no such file"):
        skipper.load(tmp_path / "gone.jpg")
    assert skipper.count == 0 and capsys.readouterr().err == ""


def test_bad_image_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(BadImage("a.jpg", "truncated")))
    assert (e.path, e.problem, str(e)) == ("a.jpg", "truncated", "a.jpg: truncated")


# ----------------------------------------------------------------------------- transforms


def test_transform_shape_dtype_and_normalisation():
    t = make_transform(CONFIG)
    x = t(noise(300, 200))
    assert type(x) is torch.Tensor and x.shape == (3, 224, 224) and x.dtype == torch.float32
    mean_colour = tuple(round(m * 255) for m in CONFIG["mean"])
    assert t(Image.new("RGB", (50, 60), mean_colour)).abs().max() < 0.01
    white = t(Image.new("RGB", (50, 60), (255, 255, 255)))
    expected = (1 - torch.tensor(CONFIG["mean"])) / torch.tensor(CONFIG["std"])
    assert torch.allclose(white, expected[:, None, None].expand(3, 224, 224), atol=1e-5)


@pytest.mark.parametrize("config", [
    CONFIG,
    {**CONFIG, "input_size": (3, 160, 160), "interpolation": "bilinear", "crop_pct": 0.95},
    {**CONFIG, "input_size": (3, 192, 256), "crop_pct": 1.0},
    {**CONFIG, "input_size": (3, 96, 128), "crop_mode": "squash", "crop_pct": 0.9},
])
def test_eval_transform_matches_timm(config):
    timm_data = pytest.importorskip("timm.data")
    ours, theirs = make_transform(config), timm_data.create_transform(**config)
    for img in (smooth(300, 200), noise(64, 64, seed=1), noise(500, 90, seed=2), smooth(120, 333)):
        a, b = ours(img), theirs(img)
        assert a.shape == b.shape == config["input_size"]
        assert (a - b).abs().max() < 1e-5


def test_train_transforms():
    img = smooth(300, 200)
    assert torch.equal(make_transform(CONFIG, train=True)(img), make_transform(CONFIG)(img))
    light = make_transform(CONFIG, train=True, augment="light")
    torch.manual_seed(0)
    outs = [light(img) for _ in range(4)]
    assert all(o.shape == (3, 224, 224) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # random crops
    assert torch.equal(make_transform(CONFIG, augment="light")(img), make_transform(CONFIG)(img))  # eval: no aug
    with pytest.raises(UserError, match="'heavy'"):
        make_transform(CONFIG, train=True, augment="heavy")


def test_cache_size_makes_the_eval_resize_a_no_op():
    assert cache_size(CONFIG) == 256
    img = resize_center_crop(smooth(300, 200), cache_size(CONFIG))
    assert img.size == (256, 256)
    crop = torch.from_numpy(np.array(img.crop((16, 16, 240, 240)))).permute(2, 0, 1) / 255.0
    expected = (crop - torch.tensor(CONFIG["mean"])[:, None, None]) / torch.tensor(CONFIG["std"])[:, None, None]
    assert (make_transform(CONFIG)(img) - expected).abs().max() < 1e-5  # cropped, never resampled


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def files(tmp_path) -> list[str]:
    d = tmp_path / "imgs"
    d.mkdir()
    smooth(50, 40).save(d / "a.jpg")
    rgba = noise(20, 33, seed=3).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(d / "b.png")
    truncated_jpeg(d / "c.jpg")
    Image.new("RGB", (1, 100), (9, 8, 7)).save(d / "e.png")
    return [str(d / "a.jpg"), str(d / "b.png"), str(d / "c.jpg"), str(d / "missing.jpg"), str(d / "e.png")]


def test_cache_build_reopen_and_values(files, tmp_path, capsys):
    skipper = ImageSkipper()
    cache = ImageCache.build(files, 16, tmp_path / "cache", skipper=skipper, progress=False)
    assert len(cache) == 5 and cache.size == 16
    assert cache.bad == {2: "truncated file (the image data ends early)", 3: "no such file"}
    assert skipper.count == 2 and len(capsys.readouterr().err.splitlines()) == 2
    again = ImageCache.open(tmp_path / "cache")
    for c in (cache, again):
        for i in (0, 1, 4):
            expected = np.asarray(resize_center_crop(load_image(files[i]), 16))
            assert c.array(i).dtype == np.uint8 and np.array_equal(c.array(i), expected)
            assert c.get(i).mode == "RGB" and np.array_equal(np.asarray(c.get(i)), expected)
        with pytest.raises(BadImage, match="c.jpg: truncated"):
            c.get(2)
    assert not again.pixels.flags.writeable
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["index.json", "pixels.npy"]


def test_cache_validity(files, tmp_path):
    cache = ImageCache.build(files, 16, tmp_path / "cache", progress=False)
    assert cache.is_valid_for(files) and cache.is_valid_for([Path(p) for p in files], 16)
    assert not cache.is_valid_for(files, 32)
    assert not cache.is_valid_for(files[:-1]) and not cache.is_valid_for(files[::-1])
    smooth(60, 40).save(files[0])  # new content: size (and mtime) change
    assert not cache.is_valid_for(files)


def test_half_built_cache_is_detected(files, tmp_path):
    out = tmp_path / "cache"
    ImageCache.build(files, 8, out, progress=False)
    (out / "index.json").unlink()
    with pytest.raises(UserError, match="index.json is missing") as info:
        ImageCache.open(out)
    assert str(info.value).startswith(str(out)) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="missing"):
        ImageCache.open(tmp_path / "never-built")


def test_strict_build_leaves_no_cache(files, tmp_path):
    out = tmp_path / "cache"
    ImageCache.build(files, 8, out, progress=False)  # an old, complete cache
    with pytest.raises(BadImage, match="c.jpg"):
        ImageCache.build(files, 8, out, skipper=ImageSkipper(strict=True), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["pixels.npy"]  # old pixels, no index: reads as half-built
    with pytest.raises(UserError):
        ImageCache.open(out)


def test_open_or_build_reuses_a_valid_cache(files, tmp_path, capsys):
    out = tmp_path / "cache"
    first = ImageCache.open_or_build(files, 8, out, progress=False)
    stamp = (out / "pixels.npy").stat().st_mtime_ns
    capsys.readouterr()
    second = ImageCache.open_or_build(files, 8, out, progress=False)
    assert (out / "pixels.npy").stat().st_mtime_ns == stamp and capsys.readouterr().err == ""
    assert second.bad == first.bad
    third = ImageCache.open_or_build(files[:2], 8, out, progress=False)
    assert len(third) == 2 and third.is_valid_for(files[:2])


def test_cache_with_progress_bar_and_no_images(files, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "PROGRESS_MIN_IMAGES", 1)
    cache = ImageCache.build(files, 8, tmp_path / "cache", progress=True, workers=2)
    assert len(cache) == 5 and set(cache.bad) == {2, 3}
    empty = ImageCache.build([], 8, tmp_path / "empty", progress=False)
    assert len(empty) == 0 and empty.is_valid_for([])
