"""keras-cxr: generative models of chest X-rays (NIH ChestX-ray14) in Keras 3.

Importing this package is cheap: TensorFlow and Keras are imported by the submodules that need
them, so `keras-cxr --help` stays fast.
"""

__version__ = "0.1.0"

from keras_cxr.errors import UserError  # noqa: F401  (light)


def train(config):
    """Train a model from a `keras_cxr.config.TrainConfig`; returns the run directory."""
    from keras_cxr.training import train as _train

    return _train(config)
