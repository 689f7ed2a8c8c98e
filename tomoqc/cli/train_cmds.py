"""CLI commands: ``tomoqc train rank``, ``tomoqc train finetune`` and ``tomoqc train segment``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tomoqc.cli import app

train_app = typer.Typer(
    help="Train the TIQA network (rank, then finetune) and the segmentation network (segment).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")


def _report(result: dict, out: Path) -> None:
    h = result["history"][-1] if result["history"] else {}
    if result.get("interrupted"):
        print(f"interrupted by a signal; state saved in {out / 'state'}; rerun with --resume to continue")
    print(f"best validation SROCC {result['best_val_srocc']:.4f}; last epoch {h.get('epoch', 0)}")
    print(f"weights: {result['best']}")
    print(f"log: {out / 'log.csv'}  curves: {out / 'curves.png'}  model card: {out / 'model_card.json'}")


def _command(argv_name: str, **opts) -> str:
    parts = [f"tomoqc train {argv_name}"]
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


@train_app.command("rank")
def rank_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset folder with manifest.csv (levels suffice)."),
    out: Path = typer.Option(..., "--out", help="Output folder for weights, logs and the model card."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs (the TIQA report: 30)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Blocks per batch (a block = reference + 5 levels)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/state."),
    margin: float = typer.Option(6.0, "--margin", help="Hinge margin (report code 6, RankIQA 10)."),
    lr: float = typer.Option(3e-5, "--lr", help="Adam learning rate."),
    crop: int = typer.Option(224, "--crop", help="Training crop side in pixels."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this .keras TIQA model."),
    backbone_weights: Optional[Path] = typer.Option(
        None, "--backbone-weights", help="Local EfficientNet-B0 (no top) weights file for a new model."
    ),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Cap on batches per epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the network to order images by distortion level (pairwise hinge rank loss)."""
    from tomoqc.train.rank import train_rank

    cmd = _command("rank", data=data, out=out, epochs=epochs, batch_size=batch_size, seed=seed, resume=resume,
                   margin=margin, lr=lr, crop=crop, init=init, backbone_weights=backbone_weights,
                   steps_per_epoch=steps_per_epoch)
    res = train_rank(data, out, epochs=epochs, blocks_per_batch=batch_size, seed=seed, resume=resume,
                     margin=margin, lr=lr, crop=crop, init=init, backbone_weights=backbone_weights,
                     steps_per_epoch=steps_per_epoch, progress=progress, command=cmd)
    _report(res, out)


@train_app.command("finetune")
def finetune_cmd(
    data: Path = typer.Option(..., "--data", help="Labelled dataset folder (run `tomoqc label` first)."),
    out: Path = typer.Option(..., "--out", help="Output folder for weights, logs and the model card."),
    init: Optional[Path] = typer.Option(None, "--init", help="Rank-stage model to start from (OUT/best.keras)."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs (the TIQA report: 20)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/state."),
    lr: float = typer.Option(5e-5, "--lr", help="Adam learning rate, halved every 4 epochs."),
    crop: int = typer.Option(224, "--crop", help="Training crop side in pixels."),
    patience: int = typer.Option(5, "--patience", help="Early stopping patience in epochs."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Cap on batches per epoch."),
    references: Optional[str] = typer.Option(
        None, "--references",
        help="Learn only from these references of the manifest, comma-separated (e.g. a study's train split, "
             "`train` in STUDY/study.json); validation is drawn from them.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune to regress 1-5 quality labels and the distortion severities."""
    from tomoqc.train.finetune import train_finetune

    refs = None if references is None else [r.strip() for r in references.split(",") if r.strip()]
    cmd = _command("finetune", data=data, out=out, init=init, epochs=epochs, batch_size=batch_size, seed=seed,
                   resume=resume, lr=lr, crop=crop, patience=patience, steps_per_epoch=steps_per_epoch,
                   references=references)
    res = train_finetune(data, out, init=init, epochs=epochs, batch_size=batch_size, seed=seed, resume=resume,
                         lr=lr, crop=crop, patience=patience, steps_per_epoch=steps_per_epoch, progress=progress,
                         references=refs, command=cmd)
    _report(res, out)


@train_app.command("segment")
def segment_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder for weights, logs and the model card."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Phantom dataset folder (tomoqc dataset build --source phantom) with labels/."
    ),
    phantoms: int = typer.Option(0, "--phantoms", help="Draw this many random phantoms (impaired on the fly)."),
    realdata: Optional[Path] = typer.Option(
        None, "--realdata", help="Real-data folder with htc2022/ (HTC2022 discs and ground truth; --classes 2)."
    ),
    classes: int = typer.Option(3, "--classes", help="2: binary material vs void (sigmoid); 3: pore/CBD/active."),
    width: float = typer.Option(0.25, "--width", help="Channel width multiplier (1 = the paper's D-LinkNet34)."),
    dropout: float = typer.Option(0.1, "--dropout", help="Decoder dropout rate (Monte-Carlo dropout; 0: none)."),
    full_res: bool = typer.Option(
        False, "--full-res/--no-full-res", help="Add a full-resolution skip (needed for phases a few pixels thin)."
    ),
    class_weights: Optional[str] = typer.Option(
        None, "--class-weights", help="Loss weight per class, comma-separated (e.g. 1,2,1 raises carbon-binder)."
    ),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(256, "--crop", help="Training crop side in pixels (a multiple of 32)."),
    steps_per_epoch: int = typer.Option(100, "--steps-per-epoch", help="Training steps per epoch."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate, halved every --decay-epochs epochs."),
    decay_epochs: int = typer.Option(10, "--decay-epochs"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/state (same options)."),
    phantom_size: int = typer.Option(256, "--phantom-size", help="Side of the --phantoms slices."),
    max_level: int = typer.Option(3, "--max-level", help="Strongest impairment level trained on (0-5)."),
    clean_share: float = typer.Option(
        0.2, "--clean-share", help="Share of the phantom draws left unimpaired (0-1)."
    ),
    init: Optional[Path] = typer.Option(
        None, "--init", help="Start from this D-LinkNet weights file (with its JSON card): fine-tuning."
    ),
    val_disc: str = typer.Option("td", "--val-disc", help="HTC2022 disc held out for validation."),
    htc_bin: int = typer.Option(1, "--htc-bin", help="Reconstruct HTC2022 discs on 512/N pixels."),
    time_limit: Optional[float] = typer.Option(
        None, "--time-limit", help="Minutes; no epoch is started that would end later (resume continues)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the D-LinkNet segmentation network (binary or three electrode phases)."""
    from tomoqc.errors import OptionError
    from tomoqc.train.segment import train_segment

    weights = None
    if class_weights is not None:
        try:
            weights = [float(v) for v in class_weights.split(",")]
        except ValueError:
            raise OptionError(f"--class-weights must be comma-separated numbers, got {class_weights!r}") from None
    cmd = _command("segment", out=out, data=data, phantoms=phantoms or None, realdata=realdata, classes=classes,
                   width=width, dropout=dropout, full_res=full_res or None, class_weights=class_weights,
                   epochs=epochs, batch_size=batch_size, crop=crop,
                   steps_per_epoch=steps_per_epoch, lr=lr, decay_epochs=decay_epochs, seed=seed, resume=resume,
                   phantom_size=phantom_size, max_level=max_level, clean_share=clean_share, init=init,
                   val_disc=val_disc if realdata else None, htc_bin=htc_bin, time_limit=time_limit)
    res = train_segment(out, data=data, phantoms=phantoms, realdata=realdata, classes=classes, width=width,
                        dropout=dropout, full_res=full_res, class_weights=weights, epochs=epochs,
                        batch_size=batch_size, crop=crop,
                        steps_per_epoch=steps_per_epoch, lr=lr, decay_epochs=decay_epochs, seed=seed, resume=resume,
                        phantom_size=phantom_size, max_level=max_level, val_disc=val_disc, htc_bin=htc_bin,
                        time_limit_s=None if time_limit is None else 60.0 * time_limit, progress=progress,
                        command=cmd, clean_share=clean_share, init_weights=init)
    if res["interrupted"]:
        print(f"interrupted by a signal; state saved in {out / 'state'}; rerun with --resume to continue")
    m = res["card"]["metrics"].get("all", {})
    names = res["card"]["class_names"]
    if m:
        per = "  ".join(f"{n}: F1 {f:.3f} IoU {i:.3f}" for n, f, i in zip(names, m["f1"], m["iou"]))
        print(f"best validation (epoch {res['card']['metrics'].get('epoch')}): mean IoU {m['mean_iou']:.4f}  {per}")
    print(f"weights: {res['best']}  card: {res['best'].with_suffix('.json')}")
    print(f"log: {out / 'log.csv'}  curves: {out / 'curves.png'}  model card: {out / 'model_card.json'}")
