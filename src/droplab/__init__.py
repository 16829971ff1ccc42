"""droplab: dropout as a first-class, measured tool for image deep learning.

Rates are drop probabilities ``p`` in ``[0, 1)`` everywhere; training-time outputs are
scaled by ``1 / (1 - p)`` (inverted dropout) and every layer is the identity in eval mode.
"""

__version__ = "0.1.0"
