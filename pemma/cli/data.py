"""`pemma-bench data`: write the synthetic cohort, check any cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from pemma.cli.common import _fail, _table, _wide, app, console

data_app = typer.Typer(help="Cohorts: write the synthetic one, check any.", no_args_is_help=True)


app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the cohort into (must not exist).")],
    scale: Annotated[float, typer.Option(help="Share of HECKTOR's per-centre sizes (min 3).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    layout: Annotated[
        str,
        typer.Option(
            "--format", help="hecktor (HECKTOR 2022 folders) or nnunet (an nnU-Net v2 raw dataset)."
        ),
    ] = "hecktor",
    classes: Annotated[
        str,
        typer.Option(
            help="hecktor (GTVp 1, GTVn 2) or lesion (one class, GTVp and GTVn merged; --format nnunet)."
        ),
    ] = "hecktor",
) -> None:
    """Write a synthetic cohort in the HECKTOR 2022 layout, or as an nnU-Net v2 raw dataset."""
    from pemma.data.synth import cohort_sizes, write_cohort

    sizes = cohort_sizes(scale)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("patients", total=sum(sizes.values()))
            write_cohort(
                out,
                scale=scale,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done),
                layout=layout,
                classes=classes,
            )
    except (FileExistsError, ValueError) as err:
        raise _fail(str(err)) from err
    console.print(
        f"wrote {sum(sizes.values())} patients to {out}: " + ", ".join(f"{c} {n}" for c, n in sizes.items())
    )


@data_app.command("check")
def data_check(
    root: Annotated[
        Path,
        typer.Argument(help="A cohort folder: HECKTOR 2022 layout, or an nnU-Net v2 raw dataset."),
    ],
    cases: Annotated[
        bool,
        typer.Option(
            "--cases", help="Also list every case: label values, class volumes, grid, orientation, PET cover."
        ),
    ] = False,
) -> None:
    """Validate a cohort (every file is read) and summarise it per centre: either layout.

    Stops with exit 2 at the first unusable file, naming patient and file; lists what no unit will
    read (misnamed images, centres outside the default plan) and patients that serve only some phases."""
    from pemma.config import DataConfig
    from pemma.data.check import absent_classes, check_cohort, clinical_gaps, per_case, summarise
    from pemma.data.hecktor import CohortError, read_cohort
    from pemma.data.nnunet import layout_of
    from pemma.data.splits import make_plan
    from pemma.data.store import unused

    plan = DataConfig()
    try:
        cohort = read_cohort(root)
        report = check_cohort(cohort)
        # the rules run applies: every centre of the default plan splits into train and test
        make_plan(
            cohort,
            plan.pretrain_centres,
            plan.adapt_centre,
            plan.split,
            plan.split_seed,
            plan.continual_centres,
        )
    except CohortError as err:
        raise _fail(str(err)) from err
    summary, notes = summarise(report)
    notes = [*unused(cohort, DataConfig()), *notes]
    title = f"{root}: {len(report)} patients, {len(summary)} centres, fingerprint {cohort.fingerprint()}"
    wide = _wide()
    if cases:
        wide.print(_table(per_case(report), f"{root}: every case"))
    wide.print(_table(summary, title))
    console.print(f"layout: {layout_of(root)}", soft_wrap=True)
    for note in notes:
        console.print(f"- {note}")
    warnings = clinical_gaps(cohort)
    for line in warnings:
        console.print(f"warning: {line}")
    for line in absent_classes(report):
        console.print(f"info: {line}")
    if notes or warnings:
        console.print("usable; see the notes and warnings above")
    else:
        console.print("[green]no problems found[/]")
