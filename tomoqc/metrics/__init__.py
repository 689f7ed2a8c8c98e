"""Image-quality and segmentation metrics.

* :mod:`tomoqc.metrics.fr` - full-reference observers: MSE, PSNR, SSIM, MS-SSIM, GMSD, MDSI
  (single pairs and batched stacks).
* :mod:`tomoqc.metrics.stats` - SROCC, KROCC, PLCC (raw and after a logistic fit), RMSE,
  bootstrap confidence intervals.
* :mod:`tomoqc.metrics.seg` - confusion matrix, per-class F1 (Dice) and IoU, IoU maps.
"""

__all__ = ["fr", "stats", "seg"]
