"""Keras's cache of downloaded files, where the backbones' ImageNet weights (downloaded by Keras,
or converted by benchmark/lite.py) are kept."""

from __future__ import annotations

import os


def models_dir() -> str:
    """Where keras caches downloaded weights, resolved the way `keras.utils.get_file` does."""
    try:
        from keras.src.backend import config as keras_config

        cache_root = keras_config.keras_home()
    except (ImportError, AttributeError):
        cache_root = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    cache_root = os.path.expanduser(cache_root)
    if not os.access(cache_root, os.W_OK):
        cache_root = os.path.join("/tmp", ".keras")  # keras's own fallback for a read-only home
    return os.path.join(cache_root, "models")
