"""CLI command ``tomoqc study``: the TIQA report's Tables 1-3 and Figures 4 and 7, measured."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from tomoqc.cli import app

#: Settings of ``--quick`` (a run of a minute or two on a laptop: it checks the pipeline, not the method).
QUICK = {"references": 4, "size": 64, "mixtures": False, "real_limit": 1, "real_bin": 8, "real_levels": 2,
         "rankiqa_size": 32, "rankiqa_width": 0.0625, "rankiqa_rank_epochs": 1, "rankiqa_finetune_epochs": 1,
         "rankiqa_steps": 2, "bootstrap": 50, "workers": 1}
#: Settings of a full study (the defaults of :func:`tomoqc.study.run_study`).
FULL = {"references": 24, "size": 256, "mixtures": True, "real_limit": None, "real_bin": 1, "real_levels": 4,
        "rankiqa_size": 64, "rankiqa_width": 1.0, "rankiqa_rank_epochs": 6, "rankiqa_finetune_epochs": 6,
        "rankiqa_steps": 40, "bootstrap": 1000, "workers": None}


@app.command()
def study(
    out: Path = typer.Option(..., "--out", "-o", help="Study folder (created; a rerun resumes it)."),
    references: Optional[int] = typer.Option(None, "--references", "-n",
                                             help="References: phantoms, or slices of --source (default 24; "
                                                  "--quick 4)."),
    size: Optional[int] = typer.Option(None, "--size", help="Phantom side in pixels (default 256; --quick 64), or "
                                                            "the crop side of --source's slices (default 224, at "
                                                            "most 255)."),
    source: Optional[Path] = typer.Option(
        None, "--source",
        help="Take the references from this volume of yours (zarr, HDF5, TIFF, ...) instead of phantoms: slices "
             "resized to a short side of 255 and cropped as the report did; segmentation F1 is then measured "
             "against the segmentation of each undistorted slice."),
    source_dataset: Optional[str] = typer.Option(None, "--source-dataset",
                                                 help="Array path inside an HDF5 file or zarr group --source."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations",
        help="Human ratings CSV (image,rater,score or image,mos,std,n; image as data/manifest.csv's file column "
             "names it): adds the human MOS as a truth of Table 1."),
    real: Optional[Path] = typer.Option(
        None, "--real", help="Real-data folder (../shared/realdata): real orderings and HTC2022 discs."),
    real_limit: Optional[int] = typer.Option(None, "--real-limit",
                                             help="At most this many real series per kind and HTC2022 discs."),
    real_bin: Optional[int] = typer.Option(None, "--real-bin", help="HTC2022 detector binning (512/bin px; default 1)."),
    real_levels: Optional[int] = typer.Option(None, "--real-levels",
                                              help="Levels per HTC2022 impairment, 1-4 (default 4)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="TIQA weights (.keras); default: the bundled one."),
    seed: int = typer.Option(1818, "--seed", help="Study seed (must differ from the models' training seeds)."),
    methods: str = typer.Option("tiqa,brisque,rankiqa,noise", "--methods",
                                help="Methods compared (comma separated; tiqa is required). A model card with "
                                     "measured terms adds a row with them refitted on the train split."),
    test_fraction: float = typer.Option(0.5, "--test-fraction", help="Share of references held out for testing."),
    mixtures: Optional[bool] = typer.Option(None, "--mixtures/--no-mixtures",
                                            help="Add mixtures of impairments (default yes; --quick no)."),
    rankiqa_size: Optional[int] = typer.Option(None, "--rankiqa-size", help="RankIQA training crop side (default 64)."),
    rankiqa_width: Optional[float] = typer.Option(None, "--rankiqa-width",
                                                  help="RankIQA VGG16 width multiplier (default 1: VGG16)."),
    rankiqa_epochs: Optional[int] = typer.Option(None, "--rankiqa-epochs",
                                                 help="RankIQA ranking epochs (default 6)."),
    rankiqa_finetune_epochs: Optional[int] = typer.Option(None, "--rankiqa-finetune-epochs",
                                                          help="RankIQA fine-tuning epochs (default 6)."),
    rankiqa_steps: Optional[int] = typer.Option(None, "--rankiqa-steps",
                                                help="RankIQA steps per epoch (default 40)."),
    bootstrap: Optional[int] = typer.Option(None, "--bootstrap", help="Bootstrap resamples (default 1000)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes building the dataset."),
    quick: bool = typer.Option(False, "--quick",
                               help="A tiny run that checks the pipeline (few small references, tiny RankIQA, "
                                    "one real series per kind); options given explicitly still count."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Reproduce the TIQA report's Tables 1-3 and Figures 4 and 7 on phantoms (and real scans with --real).

    Writes table1_label_projection, table2_methods and table3_quality_vs_segmentation (CSV
    and Markdown), table2_differences.csv (each TIQA row minus each baseline, paired bootstrap),
    fig4_pred_vs_label.png, fig7_two_point_correlation (PNG and CSV), study.json and
    summary.md into --out. Resumes an interrupted run.
    """
    from tomoqc.study import run_study

    base = QUICK if quick else FULL
    given = {"references": references, "size": size, "mixtures": mixtures, "real_limit": real_limit,
             "real_bin": real_bin, "real_levels": real_levels, "rankiqa_size": rankiqa_size,
             "rankiqa_width": rankiqa_width, "rankiqa_rank_epochs": rankiqa_epochs,
             "rankiqa_finetune_epochs": rankiqa_finetune_epochs, "rankiqa_steps": rankiqa_steps,
             "bootstrap": bootstrap, "workers": workers}
    opts = {k: (v if v is not None else base[k]) for k, v in given.items()}
    if source is not None and size is None and not quick:
        opts["size"] = None  # the crop side for a volume's slices: run_study's default
    command = "tomoqc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["study"] else None
    res = run_study(out, seed=seed, annotations=annotations, real=real, model=model, source=source,
                    source_dataset=source_dataset,
                    methods=[m.strip() for m in methods.split(",") if m.strip()], test_fraction=test_fraction,
                    progress=not quiet, command=command, **opts)
    from rich.console import Console

    con = Console()
    con.print(f"study written to {Path(out).resolve()}", highlight=False)
    for name, value in (res.get("checks") or {}).items():
        con.print(f"  {name}: {value if not isinstance(value, float) else f'{value:.3f}'}", highlight=False)
