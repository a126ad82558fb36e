"""`pemma-bench predict`: a trained unit applied to another cohort, predictions as NIfTI on each
patient's CT grid, scored where the cohort has labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pemma.cli.common import ResultsOpt, _fail, _tracker, app, console


@app.command()
def predict(
    cohort: Annotated[
        Path,
        typer.Option(
            help="A cohort folder, HECKTOR layout or nnU-Net raw dataset (imagesTs/ or imagesTr/, labels "
            "optional)."
        ),
    ],
    run_key: Annotated[str | None, typer.Option("--run-key", help="The unit, by its run key.")] = None,
    suite: Annotated[str | None, typer.Option(help="... or by suite, --method and --seed.")] = None,
    method: Annotated[str | None, typer.Option(help="The unit's method (with --suite).")] = None,
    seed: Annotated[int | None, typer.Option(help="The unit's seed (with --suite).")] = None,
    backbone: Annotated[
        str | None, typer.Option(help="The unit's backbone, where a suite has several.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: <results>/predictions/<run key>/<cohort folder name>)."),
    ] = None,
    subset: Annotated[
        str | None,
        typer.Option(help="Input subset: ctpet, ct or pet (default: CT+PET where the unit reads it)."),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(help="The cohort's images folder (default: imagesTs if there, else imagesTr)."),
    ] = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Apply a trained unit to a cohort: <out>/<subset>/<PatientID>.nii.gz (uint8 0 background, then
    the classes' values: 1 GTVp, 2 GTVn on HECKTOR; each CT file's affine and shape), and HECKTOR
    aggregated Dice where it has labels."""
    from pemma.classes import title_of
    from pemma.orchestration.predict import PredictError, find_unit, predict
    from pemma.orchestration.runner import default_device

    if not cohort.is_dir():
        raise _fail(f"--cohort {cohort}: no such folder")
    tracker = _tracker(results)
    try:
        run = find_unit(tracker, run_key, suite=suite, method=method, seed=seed, backbone=backbone)
        key = run["tags.run_key"]
        out = out or results / "predictions" / key / cohort.resolve().name
        done = predict(results, run, cohort, out, default_device(), subset, images)
    except PredictError as err:
        raise _fail(str(err)) from err
    console.print(
        f"{done.patients} patients predicted by {key} ({done.subset} input) -> {done.folder / done.subset}",
        soft_wrap=True,
    )
    if done.result is not None:
        dice = done.result.original
        per_class = ", ".join(f"{title_of(k)} {v:.3f}" for k, v in dice.items() if k != "mean")
        console.print(
            f"scored {done.scored} with labels: Dice {per_class}, "
            f"mean {dice['mean']:.3f} (HECKTOR aggregated, original grid); median HD95 "
            f"{done.result.hd95['mean']:.1f} mm",
            soft_wrap=True,
        )
    else:
        console.print("no labels: predicted, not scored")
    for note in done.notes:
        console.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
