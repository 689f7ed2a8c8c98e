"""The scoring and reporting API in one place, mirroring ``tomoqc score`` and ``tomoqc report``.

>>> import tomoqc.api as qc                                          # doctest: +SKIP
>>> ds = qc.score("scan.zarr", out="qc/", cluster="local")           # doctest: +SKIP
>>> qc.report(["qc/scan.zarr.quality.zarr"], "qc/report", fail_below=3)  # doctest: +SKIP
>>> qc.compare(["a.zarr", "b.zarr"], out="cmp/", workers=0)           # doctest: +SKIP
>>> seg = qc.segment("scan.zarr", out="seg/", uncertainty="tta")      # doctest: +SKIP

Every number the command line prints comes from these functions:
:func:`score` returns the quality output as an :class:`xarray.Dataset`,
:func:`summarize` gives the per-volume numbers (``--json``), and :func:`report`
writes the aggregated report.
"""

from __future__ import annotations

from tomoqc.cluster import start_cluster
from tomoqc.compare import compare
from tomoqc.pipeline import open_quality, output_path, score
from tomoqc.report import report, summarize
from tomoqc.segmentation import open_segmentation, segment

__all__ = ["score", "segment", "open_segmentation", "report", "compare", "summarize", "open_quality", "output_path", "start_cluster"]
