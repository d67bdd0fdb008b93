"""convcodec: a neural lossy image codec from Convolutional DRAW and MatNet.

    import convcodec
    data = convcodec.compress("photo.png", steps=6)
    img = convcodec.decompress(data)

Importing convcodec also registers the ``.cdr`` format with Pillow. torch is
imported only when a network runs.
"""
__version__ = "0.1.0"

from .api import compress, cut, decompress, decompress_many, models  # noqa: E402
from .pillow_plugin import register as _register_pillow  # noqa: E402

_register_pillow()

__all__ = ["compress", "decompress", "decompress_many", "cut", "models", "__version__"]
