"""Data: offline sources (``load_source``) and seeded, saveable splits (``make_split`` / ``Split``)."""

from .loaders import SOURCES, Source, load_source, read_idx, restricted_pickle_load
from .splits import Split, SplitData, make_split
from .tensordata import TensorData

__all__ = [
    "TensorData",
    "Source",
    "SOURCES",
    "load_source",
    "read_idx",
    "restricted_pickle_load",
    "Split",
    "SplitData",
    "make_split",
]
