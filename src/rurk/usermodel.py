"""A user's own model and forget set for `rurk audit --arch` (no scenario needed).

- :func:`load_factory` / :func:`build_user_model`: a model factory by import path, ``package.module:function``
  or ``path/to/file.py:function``; it is called with no arguments and must return an ``nn.Module`` that maps
  inputs in [0, 1] to (batch, classes) logits.
- :func:`parse_normalize` / :func:`with_normalization`: ``--normalize MEAN,STD`` (one pair for every channel) or
  ``--normalize M1,M2,M3:S1,S2,S3`` (per channel) puts ``(x - mean) / std`` in front of a model that expects
  normalised inputs, so the audit's perturbations stay in [0, 1] pixel space.
- :func:`load_samples`: a sample set as ``.npz`` (``x`` NCHW or N x F, float in [0, 1] or uint8 = 0..255;
  ``y`` integer labels; optional ``index``, default 0..n-1, unique) or an ImageFolder-style directory
  (``<class>/<image>.png|.jpg|...``; classes are the sorted sub-directory names, label = position; images in
  sorted order, index = position in that order; grayscale images stay one channel unless another image is RGB).
- :func:`check_model_fits`: the model takes the samples and every label is below its number of outputs.

Every problem is a :class:`ValueError`, :class:`TypeError` or :class:`ImportError` naming it, which the CLI turns
into one line ``rurk: error: ...`` (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.tensordata import TensorData
from .models.base import Normalize
from .torchutil import eval_mode, module_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------- model factories
def load_factory(spec: str) -> Callable[[], object]:
    """The callable named by ``module:function`` (``module`` a dotted import path or a ``.py`` file)."""
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--arch {spec!r}: expected MODULE:FUNCTION, e.g. mypkg.nets:make_net or nets.py:make_net")
    try:
        module = _import(module_name)
    except ImportError:
        raise  # already names the module
    except Exception as e:  # the user's module raised while importing
        raise ImportError(f"--arch {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ImportError(f"--arch {spec!r}: module {module_name!r} has no attribute {attr!r}"
                          f" (callables there: {', '.join(public[:10]) or 'none'})")
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"--arch {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def _import(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ImportError(f"--arch: no such file {module_name!r}")
        name = f"rurk_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `rurk` as a console script does not see the working directory otherwise
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ImportError(f"--arch: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from None


def build_user_model(spec: str) -> nn.Module:
    """Call the factory of ``spec`` with no arguments; it must return an ``nn.Module``."""
    fn = load_factory(spec)
    try:
        model = fn()
    except Exception as e:
        raise TypeError(f"--arch {spec!r}: calling it with no arguments failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"--arch {spec!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# ---------------------------------------------------------------------------------------------- normalisation
def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """``"0.5,0.25"`` -> ([0.5], [0.25]); ``"0.4,0.5,0.6:0.2,0.2,0.3"`` -> per-channel lists."""
    try:
        if ":" in text:
            mean_s, std_s = text.split(":", 1)
            mean = [float(v) for v in mean_s.split(",") if v.strip()]
            std = [float(v) for v in std_s.split(",") if v.strip()]
        else:
            vals = [float(v) for v in text.split(",") if v.strip()]
            if len(vals) != 2:
                raise ValueError
            mean, std = vals[:1], vals[1:]
    except ValueError:
        raise ValueError(f"--normalize {text!r}: expected MEAN,STD or M1,M2,M3:S1,S2,S3") from None
    if not mean or len(mean) != len(std):
        raise ValueError(f"--normalize {text!r}: {len(mean)} means but {len(std)} stds")
    if any(not s > 0 for s in std):
        raise ValueError(f"--normalize {text!r}: every std must be > 0")
    return mean, std


def with_normalization(model: nn.Module, in_shape: Sequence[int], mean, std) -> nn.Module:
    """``model`` preceded by ``(x - mean) / std`` (statistics per channel of (C, H, W) inputs, or per feature)."""
    try:
        norm = Normalize.for_shape(tuple(in_shape), mean, std)
    except ValueError as e:
        raise ValueError(f"--normalize: {e}") from None
    return nn.Sequential(norm.to(module_device(model)), model)


# ---------------------------------------------------------------------------------------------- samples
def load_samples(path: str | Path, what: str = "--forget") -> TensorData:
    """A sample set from an ``.npz`` file or an image directory (see the module docstring), checked."""
    p = Path(path)
    if p.is_dir():
        x, y = _read_image_dir(p, what)
        index = None
    elif p.is_file():
        if p.suffix != ".npz":
            raise ValueError(f"{what} {p}: expected an .npz file or a directory of class folders")
        x, y, index = _read_npz(p, what)
    else:
        raise FileNotFoundError(f"{what} {p}: no such file or directory")
    return _checked(x, y, index, f"{what} {p}")


def _read_npz(p: Path, what: str):
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # not a zip, truncated, object arrays (pickles), ...
        raise ValueError(f"{what} {p}: not a readable .npz without pickles ({type(e).__name__}: {e})") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise ValueError(f"{what} {p}: missing array {k!r} (found {', '.join(sorted(arrays)) or 'none'})")
    return arrays["x"], arrays["y"], arrays.get("index")


def _checked(x: np.ndarray, y: np.ndarray, index, where: str) -> TensorData:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim not in (2, 4):
        raise ValueError(f"{where}: x must be 4-D (N, C, H, W) images or 2-D (N, F) features, got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"{where}: x holds no samples")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where}: y must have shape ({n},) (one label per row of x), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: y must hold integer labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {int(y.min())}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise ValueError(f"{where}: x must be float in [0, 1] or uint8, got dtype {x.dtype}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{where}: x must be in [0, 1] (uint8 is divided by 255), got range [{lo}, {hi}]")
    idx = np.arange(n) if index is None else np.asarray(index)
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{where}: index must be {n} integers, got dtype {idx.dtype} shape {idx.shape}")
    if len(np.unique(idx)) != n:
        raise ValueError(f"{where}: index values must be unique (they key the per-sample results)")
    return TensorData(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                      torch.from_numpy(idx.astype(np.int64)))


def _read_image_dir(root: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = [(label, f) for label, d in enumerate(classes) for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{what} {root}: no images found; expected {root}/<class>/<image>.png (or .jpg, ...)")
    images = [_read_image(f) for _, f in files]
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{what} {root}: images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(shapes))}); "
                         "resize them to one size first")
    channels = max(im.shape[2] for im in images)
    x = np.stack([np.broadcast_to(im, im.shape[:2] + (channels,)) for im in images]).transpose(0, 3, 1, 2)
    return x, np.array([label for label, _ in files], dtype=np.int64)


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 1) or (H, W, 3) float32 in [0, 1] (alpha dropped); PIL when importable, else matplotlib (PNG only)."""
    try:
        a = _pixels(path)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    a = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    return a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]


def _pixels(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        from matplotlib import image as mpimg

        return np.asarray(mpimg.imread(path))
    with Image.open(path) as im:
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        return np.asarray(im.convert("L" if gray else "RGB"))


# ---------------------------------------------------------------------------------------------- checks
def num_outputs(model: nn.Module, data: TensorData, what: str = "the model") -> int:
    """The model's number of outputs on one sample of ``data``; a model that cannot take the samples, or does not
    return (batch, classes) logits, is named."""
    try:
        with eval_mode(model), torch.inference_mode():
            out = model(data.x[:1].to(module_device(model)))
    except Exception as e:
        raise ValueError(f"{what} cannot take inputs of shape {tuple(data.x.shape[1:])}: {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TypeError(f"{what} must return (batch, classes) logits, got {type(out).__name__} "
                        f"{tuple(getattr(out, 'shape', ()))}")
    return int(out.shape[1])


def check_model_fits(model: nn.Module, data: TensorData, what: str = "the model", where: str = "--forget") -> int:
    """:func:`num_outputs`, and every label of ``data`` below it. Returns the number of classes."""
    c = num_outputs(model, data, what)
    top = int(data.y.max())
    if top >= c:
        raise ValueError(f"{where}: label {top} is out of range: {what} has {c} outputs (labels 0..{c - 1})")
    return c
