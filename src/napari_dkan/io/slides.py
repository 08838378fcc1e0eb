"""Open whole-slide images and plain images through one interface.

``open_slide(path)`` returns a :class:`Slide` for any file OpenSlide reads (svs, ndpi, mrxs,
pyramidal tiff, …) and for plain images (JPEG, PNG, non-pyramidal TIFF).  A slide knows its
pyramid levels and µm per pixel, hands napari a lazy multiscale dask pyramid, and reads patches
around a centre at level 0 or at a requested resolution.

Coordinates: ``x`` is the column and ``y`` the row, in level-0 pixels (OpenSlide's convention).
Pixels outside the image read as white (255), the colour of an empty glass slide.

Plain JPEG/PNG files cannot be read piecewise, so they are decoded once into memory (a
9,300×9,900 HER2ST JPEG takes ~275 MB) and kept in a small per-process cache.  Images larger
than :data:`MAX_PLAIN_PIXELS` are refused with a message: convert them to a pyramidal TIFF
(e.g. ``vips tiffsave in.jpg out.tif --tile --pyramid --compression jpeg``) to read them lazily.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    import dask.array

PLAIN_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
#: Largest plain (non-pyramidal) image decoded into memory: 1.2 Gpx is ~3.6 GB of RGB.
MAX_PLAIN_PIXELS = 1_200_000_000
BACKGROUND = 255
DEFAULT_CHUNK = 512


class SlideError(DataError):
    """A slide file cannot be opened or read."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample factor from level 0."""

    width: int
    height: int
    downsample: float


class Slide:
    """A whole-slide or plain image, read lazily where the format allows.

    Parameters
    ----------
    path
        The image file.
    mpp
        µm per level-0 pixel.  Overrides the file's metadata; needed for plain images, which
        carry none.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"Slide file not found: {self.path}")
        if self.path.is_dir():
            raise SlideError(f"{self.path} is a folder, not a slide file")
        check_not_empty(self.path)
        self._backend = _open_backend(self.path)
        if mpp is not None:
            if not (mpp > 0 and math.isfinite(mpp)):
                raise SlideError(f"µm per pixel must be a positive number, got {mpp!r}")
            self._mpp, self.mpp_source = float(mpp), "user"
        else:
            self._mpp = self._backend.mpp
            self.mpp_source = "metadata" if self._mpp is not None else "unknown"

    # -- description ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def backend(self) -> str:
        """``"openslide"`` or ``"image"`` (a plain image decoded into memory)."""
        return self._backend.kind

    @property
    def vendor(self) -> str:
        return self._backend.vendor

    @property
    def grayscale(self) -> bool:
        """Whether the file holds one grey channel instead of colour (read from its header)."""
        return self._backend.grayscale

    def require_colour(self) -> None:
        """Refuse a grayscale slide where colour matters: tissue detection and the model.

        H&E is read by its colours (tissue is found by its stain's saturation, and the image
        encoders were trained on colour); a grey copy cannot be predicted from meaningfully,
        and converting it to three equal channels would only hide that.
        """
        if self.grayscale:
            raise SlideError(
                f"{self.path.name} is a grayscale image: napari-dkan needs the colour (RGB) scan "
                "of an H&E slide, as tissue detection and the model read the stain's colours. "
                "Give the colour image."
            )

    @property
    def levels(self) -> list[Level]:
        return list(self._backend.levels)

    @property
    def level_count(self) -> int:
        return len(self._backend.levels)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        lv = self._backend.levels[0]
        return lv.width, lv.height

    @property
    def tile_size(self) -> int:
        return self._backend.tile_size

    @property
    def mpp(self) -> float | None:
        """µm per level-0 pixel, or None when neither the file nor the caller gave it."""
        return self._mpp

    @mpp.setter
    def mpp(self, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise SlideError(f"µm per pixel must be a positive number, got {value!r}")
        self._mpp, self.mpp_source = float(value), "user"

    def require_mpp(self) -> float:
        if self._mpp is None:
            raise SlideError(
                f"{self.path.name} carries no µm-per-pixel metadata: give it explicitly "
                "(--mpp in the command line, mpp= in Python)"
            )
        return self._mpp

    def check_pixels(self) -> None:
        """Read the pixels once now, so a damaged file (a truncated JPEG, say) fails here with
        its name rather than later, in napari's draw loop or midway through a prediction.

        A plain image is decoded (it would be at the first read anyway, and stays cached); an
        OpenSlide file already had a pixel read when it was opened.
        """
        self._backend.check_pixels()

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.vendor,
            "backend": self.backend,
            "levels": self.level_count,
            "level_dimensions": [[lv.width, lv.height] for lv in self._backend.levels],
            "level_downsamples": [round(lv.downsample, 4) for lv in self._backend.levels],
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "mpp": self._mpp,
            "mpp_source": self.mpp_source,
            "tile_size": self.tile_size,
        }

    # -- reading -------------------------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels (height × width × 3, uint8) of ``level``; (x, y) in that level's pixels.

        The window may reach outside the image; those pixels are white.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} does not exist ({self.level_count} levels)")
        if width <= 0 or height <= 0:
            raise SlideError(f"region size must be positive, got {width}×{height}")
        lv = self._backend.levels[level]
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lv.width), min(y + height, lv.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._backend.read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_patch(
        self, x: float, y: float, size: int = 224, mpp: float | None = None
    ) -> np.ndarray:
        """A ``size``×``size`` RGB patch centred on level-0 pixel (x, y).

        Without ``mpp`` (or when it equals the slide's own), level-0 pixels are cropped as they
        are, the patch starting at ``floor(x) - size // 2`` (DKAN's protocol).  With ``mpp``
        the patch covers ``size × mpp`` µm, read from the finest level that is at least as
        fine and resampled to ``size`` pixels.
        """
        cx, cy = math.floor(x), math.floor(y)
        if mpp is None or (self._mpp is not None and math.isclose(mpp, self._mpp, rel_tol=1e-3)):
            return self.read_region(0, cx - size // 2, cy - size // 2, size, size)
        native = self.require_mpp()
        level = self.best_level_for(mpp / native)
        ds = self._backend.levels[level].downsample
        field = size * mpp / (native * ds)  # patch side in pixels of that level
        n = max(1, int(round(field)))
        lx, ly = x / ds, y / ds
        region = self.read_region(level, int(math.floor(lx - n / 2)), int(math.floor(ly - n / 2)), n, n)
        if n == size:
            return region
        from PIL import Image

        return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BILINEAR))

    def best_level_for(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (never upsample)."""
        best = 0
        for i, lv in enumerate(self._backend.levels):
            if lv.downsample <= downsample * (1 + 1e-6):
                best = i
        return best

    def pyramid(self) -> list[dask.array.Array]:
        """Lazy (height × width × 3) uint8 dask arrays, largest level first, for napari."""
        return self._backend.pyramid()

    @property
    def layer_scale(self) -> tuple[float, float]:
        """napari scale of level 0: µm per pixel when known, else 1 (pixels)."""
        s = self._mpp if self._mpp is not None else 1.0
        return (s, s)

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A whole-slide overview no larger than ``max_size`` and its downsample from level 0."""
        w, h = self.dimensions
        target = max(w, h) / max_size
        level = self.best_level_for(max(target, 1.0))
        lv = self._backend.levels[level]
        img = self.read_region(level, 0, 0, lv.width, lv.height)
        factor = max(lv.width, lv.height) / max_size
        if factor > 1:
            from PIL import Image

            size = (max(1, round(lv.width / factor)), max(1, round(lv.height / factor)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))
        return img, w / img.shape[1]

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {w}×{h}, levels={self.level_count}, mpp={self._mpp})"


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open any OpenSlide-readable file or plain image."""
    return Slide(path, mpp=mpp)


def check_not_empty(path: Path) -> None:
    """Refuse a zero-byte file with a message that says so (not "unsupported format")."""
    if path.is_file() and path.stat().st_size == 0:
        raise SlideError(
            f"{path.name} is empty (0 bytes): it was probably not fully copied or downloaded. "
            "Copy it again."
        )


#: the first bytes of each plain image format read here
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF, BigTIFF (both byte orders)
    b"BM",  # BMP
)


def has_image_header(path: Path) -> bool:
    """Whether the file starts like a JPEG, PNG, TIFF or BMP (its suffix is not asked)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in _MAGIC)


def is_slide_file(path: str | Path) -> bool:
    """Whether ``path`` is an image this module can open, judged by its header, not its name
    (a text file renamed ``.tif`` is not one); nothing is decoded."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES and has_image_header(p):
        return True
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(p)) is not None
    except Exception:  # noqa: BLE001 - detection must never raise for a reader probe
        return False


# ---------------------------------------------------------------------------------------
# backends


class _OpenSlideBackend:
    kind = "openslide"

    def __init__(self, path: Path, vendor: str) -> None:
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(path))
            # Some corrupt files open but fail at the first pixel read: find out now.
            self._slide.read_region((0, 0), self._slide.level_count - 1, (1, 1))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"OpenSlide cannot read {path.name} ({vendor}): {exc}") from exc
        self.vendor = vendor
        self.grayscale = False  # OpenSlide always hands out RGBA
        s = self._slide
        self.levels = [
            Level(int(w), int(h), float(d))
            for (w, h), d in zip(s.level_dimensions, s.level_downsamples)
        ]
        props = s.properties
        mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
        vals = [float(v) for v in (mx, my) if v not in (None, "")]
        self.mpp = float(np.mean(vals)) if vals and all(v > 0 for v in vals) else None
        tw = props.get("openslide.level[0].tile-width")
        self.tile_size = int(tw) if tw else DEFAULT_CHUNK

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        # OpenSlide takes level-0 coordinates; with a non-integer downsample the level position
        # is fractional and it interpolates by a sub-pixel (at most a grey level or two).
        ds = self.levels[level].downsample
        loc = (int(round(x * ds)), int(round(y * ds)))
        return on_background(np.asarray(self._slide.read_region(loc, level, (w, h))))

    def pyramid(self) -> list[dask.array.Array]:
        return [_lazy_level(self, i) for i in range(len(self.levels))]

    def check_pixels(self) -> None:
        pass  # the coarsest level was read when the file was opened

    def close(self) -> None:
        self._slide.close()


class _ArrayBackend:
    """A plain image, decoded into memory at the first pixel read; lower levels are lazy 2×
    reductions.  Opening reads only the header, so listing a dataset stays cheap."""

    kind = "image"

    def __init__(self, path: Path) -> None:
        self._path = path
        w, h, self.mpp, self.vendor, self.grayscale = _probe_plain(path)
        self.levels = [Level(w, h, 1.0)]
        while max(w, h) > 2 * DEFAULT_CHUNK:
            w, h = w // 2, h // 2
            self.levels.append(Level(w, h, self.levels[0].width / w))
        self.tile_size = DEFAULT_CHUNK
        self._pyramid: list[dask.array.Array] | None = None

    @property
    def _array(self) -> np.ndarray:
        return _decode_plain(self._path)

    def check_pixels(self) -> None:
        self._array  # noqa: B018 - decoding is the check

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if level == 0:
            return self._array[y : y + h, x : x + w]
        # computed in this process (its thread pool): inside a Dask worker (predict-cohort)
        # the default scheduler is the cluster's, and this slide's graph would be shipped to
        # it, hiding the slide's own error behind "deserialization of the task graph"
        return self.pyramid()[level][y : y + h, x : x + w].compute(scheduler="threads")

    def pyramid(self) -> list[dask.array.Array]:
        if self._pyramid is None:
            import dask.array as da

            levels = [_lazy_level(self, 0)]
            for lv in self.levels[1:]:
                prev = levels[-1]
                half = da.coarsen(np.mean, prev, {0: 2, 1: 2}, trim_excess=True, dtype=np.float32)
                half = half[: lv.height, : lv.width].astype(np.uint8)
                levels.append(half.rechunk((DEFAULT_CHUNK, DEFAULT_CHUNK, 3)))
            self._pyramid = levels
        return self._pyramid

    def close(self) -> None:
        pass


def on_background(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA image composited on white: transparent pixels are empty glass, not the
    colour a file happens to store under them (OpenSlide's convention for every format)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    # in integers: (rgb·a + 255·(255 − a)) / 255 never exceeds 65,025, so uint16 holds it
    # (a 9,300×9,900 RGBA image needs 0.55 GB here rather than 1.1 GB of float32)
    a = alpha[..., None].astype(np.uint16)
    mixed = rgb.astype(np.uint16) * a + BACKGROUND * (255 - a) + 127
    return (mixed // 255).astype(np.uint8)


def _lazy_level(backend: _OpenSlideBackend | _ArrayBackend, level: int) -> dask.array.Array:
    import dask.array as da

    lv = backend.levels[level]
    c = backend.tile_size if backend.tile_size > 0 else DEFAULT_CHUNK
    chunks = (_chunk_sizes(lv.height, c), _chunk_sizes(lv.width, c), (3,))

    def read_block(block_info: dict | None = None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        return backend.read(level, x0, y0, x1 - x0, y1 - y0)

    return da.map_blocks(read_block, chunks=chunks, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))


def _chunk_sizes(total: int, chunk: int) -> tuple[int, ...]:
    n, rest = divmod(total, chunk)
    return (chunk,) * n + ((rest,) if rest else ())


def _open_backend(path: Path) -> _OpenSlideBackend | _ArrayBackend:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception as exc:  # noqa: BLE001
        raise SlideError(f"Cannot inspect {path}: {exc}") from exc
    if vendor is not None:
        try:
            return _OpenSlideBackend(path, vendor)
        except SlideError:
            # A plain TIFF that OpenSlide detects but cannot read as a slide (e.g. stripped
            # layout) may still be a readable image; anything else is reported as it was.
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise
            try:
                backend = _ArrayBackend(path)
                backend._array  # noqa: B018 - decode now: a TIFF OpenSlide refused may be broken
                return backend
            except SlideError:
                pass
            raise
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return _ArrayBackend(path)
    raise SlideError(
        f"Unsupported file {path.name}: not a format OpenSlide reads (svs, ndpi, mrxs, scn, "
        f"vms, bif, tiff…) nor a plain image ({', '.join(PLAIN_IMAGE_SUFFIXES)})"
    )


# Decoded plain images, keyed by file identity (path, size, mtime): the same JPEG decodes once.
_DECODED: OrderedDict[str, np.ndarray] = OrderedDict()
_DECODED_MAX = 2
_DECODE_LOCK = threading.Lock()


def _file_key(path: Path) -> str:
    from napari_dkan.storage import file_identity

    return file_identity(path)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


#: Pillow modes with one grey channel (with or without alpha)
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _probe_plain(path: Path) -> tuple[int, int, float | None, str, bool]:
    """(width, height, µm/px or None, format, grayscale) from the header; refuses oversize
    images."""
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                h, w = page.shape[:2]
                mpp = _tiff_mpp(page)
                grey = int(page.photometric) in (0, 1)  # MINISWHITE, MINISBLACK
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for broken files
            raise SlideError(f"{path.name} could not be read as a TIFF image: {exc}") from exc
        fmt = "tiff"
    else:
        from PIL import UnidentifiedImageError

        try:
            with _unbounded_pillow() as Image, Image.open(path) as probe:
                w, h = probe.size
                fmt = (probe.format or path.suffix.lstrip(".")).lower()
                dpi = probe.info.get("dpi")
                grey = probe.mode in _GREY_MODES
        except (UnidentifiedImageError, OSError) as exc:
            raise SlideError(f"{path.name} is not a readable image: {exc}") from exc
        mpp = None
        # ordinary DPI values (72, 96, 300) say nothing about a microscope's resolution
        if dpi and dpi[0] and float(dpi[0]) > 1000:
            mpp = 25400.0 / float(dpi[0])
    _check_size(path, w, h)
    return int(w), int(h), mpp, fmt, grey


def _decode_plain(path: Path) -> np.ndarray:
    key = _file_key(path)
    with _DECODE_LOCK:
        if key in _DECODED:
            _DECODED.move_to_end(key)
            return _DECODED[key]
        arr = _decode_tiff(path) if _is_tiff(path) else _decode_pillow(path)
        arr.setflags(write=False)
        _DECODED[key] = arr
        while len(_DECODED) > _DECODED_MAX:
            _DECODED.popitem(last=False)
        return arr


def _check_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PLAIN_PIXELS:
        raise SlideError(
            f"{path.name} is a plain {width}×{height} image ({width * height / 1e9:.1f} Gpx); "
            f"plain images are decoded into memory and the limit is {MAX_PLAIN_PIXELS / 1e9:.1f} "
            "Gpx. Convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile "
            "--pyramid --compression jpeg`) to read it lazily."
        )


@contextmanager
def _unbounded_pillow() -> Iterator[Any]:
    """Pillow with its decompression-bomb guard lifted.

    The guard is meant for untrusted web images; slides are large by nature, and
    :func:`_probe_plain` holds every image against our own :data:`MAX_PLAIN_PIXELS` instead.
    """
    from PIL import Image

    with _PILLOW_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield Image
        finally:
            Image.MAX_IMAGE_PIXELS = old


_PILLOW_LOCK = threading.RLock()


def _decode_pillow(path: Path) -> np.ndarray:
    try:
        with _unbounded_pillow() as Image, Image.open(path) as im:
            if "A" in im.getbands() or "transparency" in im.info:
                return on_background(np.asarray(im.convert("RGBA")))
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise SlideError(f"{path.name} could not be decoded: {exc}") from exc


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001
        raise SlideError(f"{path.name} could not be decoded as a TIFF image: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        hi = float(arr.max()) or 1.0
        arr = (arr.astype(np.float32) * (255.0 / hi)).astype(np.uint8)
    if arr.shape[2] in (1, 2):  # grey, grey + alpha
        arr = arr[..., [0, 0, 0] + ([1] if arr.shape[2] == 2 else [])]
    if arr.shape[2] >= 4:  # RGB + alpha (extra sample)
        return on_background(arr[..., :4])
    return np.ascontiguousarray(arr[..., :3])


def _tiff_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den:
        return None
    um = {2: 25400.0, 3: 10000.0}.get(unit)
    return um / (num / den) if um else None
