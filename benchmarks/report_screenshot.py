"""Render a report's ``index.html`` in headless Chromium and check the screenshot.

Usage::

    python benchmarks/report_screenshot.py [REPORT_DIR] [--png OUT.png]

Without ``REPORT_DIR`` a small report is made first from synthetic quality outputs
(no model needed). Needs Debian's ``chromium`` package
(``apt-get install -y chromium``). Exits 0 when the screenshot is a non-trivial image
(right size, not blank, with both text and plot content), 1 otherwise, and 2 when
Chromium is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WINDOW = (1200, 1600)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def screenshot(index_html: Path, png: Path, *, window=WINDOW, timeout: float = 120.0) -> Path:
    """Screenshot ``index_html`` with headless Chromium into ``png``."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="tomoqc-chromium-") as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={window[0]},{window[1]}",
            Path(index_html).resolve().as_uri(),
        ]
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if not Path(png).is_file():
        raise RuntimeError(f"chromium wrote no screenshot for {index_html}")
    return Path(png)


def check_screenshot(png: Path, *, window=WINDOW) -> dict:
    """Facts about a screenshot; ``ok`` when it is the window's size and not blank."""
    import numpy as np
    from PIL import Image

    im = Image.open(png)
    im.load()
    a = np.asarray(im.convert("L"), dtype=np.float64)
    dark = float((a < 128).mean())  # text, table borders and plot lines
    rows = a.std(axis=1)
    content_rows = float((rows > 5).mean())  # rows with anything on them
    facts = {
        "size": im.size,
        "std": float(a.std()),
        "distinct_levels": int(len(np.unique(a))),
        "dark_fraction": dark,
        "content_rows": content_rows,
    }
    facts["ok"] = (
        tuple(im.size) == tuple(window)
        and facts["std"] > 15
        and facts["distinct_levels"] > 50
        and 0.002 < dark < 0.6
        and content_rows > 0.3
    )
    return facts


def _demo_report(out: Path) -> Path:
    import numpy as np
    import xarray as xr
    import zarr

    from tomoqc.phantom import electrode_volume
    from tomoqc.report import report

    vol, _ = electrode_volume((30, 128, 128), seed=1)
    vp = out / "scan.zarr"
    z = zarr.create_array(str(vp), shape=vol.shape, chunks=(1, 128, 128), dtype="float32")
    z[:] = vol.astype(np.float32)
    n = vol.shape[0]
    zz = np.arange(n)
    scores = (4.2 - 2.5 * np.exp(-((zz - 20) / 3.0) ** 2)).astype(np.float32)
    sev = np.stack([0.1 + 0.0 * zz, 0.15 + 0.0 * zz, 0.1 + 0.8 * np.exp(-((zz - 20) / 3.0) ** 2)], 1).astype(np.float32)
    ds = xr.Dataset(
        {"score": (("z",), scores), "flag": (("z",), np.zeros(n, np.int8)),
         "patch_score": (("z", "py", "px"), np.repeat(scores, 1).reshape(n, 1, 1)),
         "severity": (("z", "distortion"), sev)},
        coords={"z": zz, "distortion": np.array(["noise", "blur", "ring"], dtype=object)},
        attrs={"complete": True, "input": str(vp.resolve()), "axis": "z", "dataset": "", "model_id": "synthetic"},
    )
    q = out / "scan.zarr.quality.zarr"
    ds.to_zarr(str(q), mode="w", consolidated=False)
    report([q], out / "report")
    return out / "report"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="screenshot a tomoqc report in headless Chromium")
    ap.add_argument("report_dir", nargs="?", default=None, help="folder holding index.html (default: make one)")
    ap.add_argument("--png", default=None, help="where to write the screenshot (default: REPORT_DIR/screenshot.png)")
    args = ap.parse_args(argv)
    if find_chromium() is None:
        print("chromium is not installed: apt-get install -y chromium", file=sys.stderr)
        return 2
    tmp = None
    if args.report_dir is None:
        tmp = tempfile.mkdtemp(prefix="tomoqc-report-")
        rep = _demo_report(Path(tmp))
    else:
        rep = Path(args.report_dir)
    index = rep / "index.html"
    if not index.is_file():
        print(f"{index}: no such report page", file=sys.stderr)
        return 1
    png = Path(args.png) if args.png else rep / "screenshot.png"
    screenshot(index, png)
    facts = check_screenshot(png)
    print(f"screenshot: {png}")
    print(f"size {facts['size'][0]}x{facts['size'][1]}, grey-level std {facts['std']:.1f}, "
          f"{facts['distinct_levels']} grey levels, dark pixels {facts['dark_fraction']:.3f}, "
          f"rows with content {facts['content_rows']:.2f}")
    print("ok" if facts["ok"] else "NOT OK: the page looks blank or broken")
    return 0 if facts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
