"""Swin-BOB: label cleaning (SOLF), Swin-UNETR training and ETTA evaluation for UKBOB.

The scripts in ``UKBOB/``, ``BTCV/`` and ``BRATS/`` are thin entry points over this package.
"""

__version__ = "0.1.0"
