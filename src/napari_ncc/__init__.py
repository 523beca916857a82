"""napari-ncc: where do two images agree, pixel by pixel?

Register two images, then map their local normalized cross-correlation (NCC).
Importing this package imports neither napari nor Qt.
"""

from ._confidence import ncc_confidence
from ._io import write_ncc, write_zarr
from ._lazy import local_ncc
from ._read import read_image
from ._register import register
from ._registration import Registration, RegistrationWarning
from ._samples import sample_pair
from ._shift import shift_lazy
from ._tiff import write_tiff

__version__ = "0.1.0"
__all__ = [
    "Registration",
    "RegistrationWarning",
    "local_ncc",
    "ncc_confidence",
    "read_image",
    "register",
    "sample_pair",
    "shift_lazy",
    "write_ncc",
    "write_tiff",
    "write_zarr",
]
