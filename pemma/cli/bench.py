"""`pemma-bench bench ...` and `params`: throughput, overhead, memory, layout, compile, merge, data
cache, parameter counts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from pemma.cli.common import DataOpt, ResultsOpt, SetOpt, _fail, _print_frame, _split, _tracker, app, console

RoundsOpt = Annotated[int, typer.Option(help="Alternating rounds of each side; the best round counts.")]


BenchProfileOpt = Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")]


OneMethodOpt = Annotated[str, typer.Option("--methods", "--method", help="Method (one).")]


OneBackboneOpt = Annotated[str, typer.Option("--backbones", "--backbone", help="Backbone (one).")]


bench_app = typer.Typer(
    help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True
)


app.add_typer(bench_app, name="bench")


def _bench_data(cfg, results: Path, data: Path | None):
    """The cohort a benchmark reads (default: the built-in synthetic one at the profile's scale)."""
    from dataclasses import replace

    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.data.store import DataStore

    try:
        if data:  # the cohort folder only: the command's --set overrides stay
            cfg = replace(cfg, data=replace(cfg.data, root=str(data.resolve())))
        return cfg, DataStore(results).load(cfg)
    except (ConfigError, CohortError) as err:
        raise _fail(str(err)) from err


def _log_bench(results: Path, name: str, table, cfg, device) -> None:
    """The benchmark's table into MLflow (experiment pemma-bench/bench): one metric per numeric cell,
    named `<row labels>/<column>`, the table as CSV, and the measurements behind it as a second CSV
    where the table carries them (`attrs["detail"]`)."""
    import tempfile

    from pemma.tracking import provenance
    from pemma.training.loop import dtype_name

    tracker = _tracker(results)
    tags = {**provenance(device, dtype_name(device, cfg.train.amp), cfg.profile), "bench": name}
    run_id = tracker.create_run(
        "bench", f"bench-{name}", tags, params={"profile": cfg.profile, "backbone": cfg.backbone}
    )
    labels = [c for c in table.columns if table[c].dtype.kind not in "fiub"]
    metrics = {}
    for _, row in table.iterrows():
        prefix = "/".join(str(row[c]) for c in labels)
        for col in table.columns:
            if col not in labels:
                key = re.sub(r"[^\w./\- ]", "_", f"{prefix}/{col}" if prefix else col)
                metrics[key] = float(row[col])
    tracker.log(run_id, metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.csv"
        table.to_csv(path, index=False)
        tracker.log_artifact(run_id, path, "bench")
        if "detail" in table.attrs:  # the measurements behind the table's cells
            path = Path(folder) / f"{name}-detail.csv"
            table.attrs["detail"].to_csv(path, index=False)
            tracker.log_artifact(run_id, path, "bench")
    tracker.finish(run_id)
    console.print(f"logged to MLflow: experiment pemma-bench/bench, run bench-{name}")


@bench_app.command("throughput")
def bench_throughput(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")] = "smoke",
    methods: Annotated[list[str] | None, typer.Option("--methods", help="Methods (default: all).")] = None,
    backbone: Annotated[str, typer.Option("--backbones", "--backbone", help="Backbone (one).")] = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps per method (after warm-up).")] = 10,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table as CSV here.")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="`public`: this harness's defaults against the public PEMMA code's configuration "
            "(fp32, eager, no SDPA, MetaTensors, no preprocessing cache), for the first --methods "
            "(default pemma-lora), on the cohort's adaptation crops."
        ),
    ] = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
    rounds: RoundsOpt = 2,
) -> None:
    """Train-step throughput, peak memory and inference speed of each method, on random data."""
    from pemma.bench.measures import throughput
    from pemma.config import ConfigError
    from pemma.methods import METHODS
    from pemma.orchestration.runner import default_device
    from pemma.registry import RegistryError

    if reference not in (None, "public"):
        raise _fail(f"--reference: expected public, got {reference!r}")
    try:
        cfg = _bench_config(profile, backbone, set_)
        backbone = cfg.backbone
        names = [METHODS.canonical(m) for m in _split(methods, "--methods") or METHODS.names()]
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    device = default_device()
    if reference == "public":
        from dataclasses import replace

        from pemma.bench.performance import public_reference
        from pemma.tasks.segmentation.task import KEYS

        method = names[0] if methods else "pemma-lora"
        cfg, loaded = _bench_data(replace(cfg, method=method), results, data)
        cases = loaded.plan.adapt["train"]
        crops = loaded.data.crops(cases, KEYS, cfg.model.roi, seed=cfg.seed)
        fresh = loaded.data.crops(cases, KEYS, cfg.model.roi, seed=cfg.seed, cached=False)
        table = public_reference(cfg, fresh, crops, device, steps, rounds)
        title = f"public configuration vs pemma-bench: {method}, profile {profile}, {device}"
    else:
        table = throughput(cfg, names, steps, device)
        title = (
            f"throughput: profile {profile}, roi {cfg.model.roi}, batch {cfg.train.batch_size}, "
            f"{device} {table.attrs['dtype']}"
        )
    _print_frame(table, title)
    _log_bench(results, f"throughput-{reference}" if reference else "throughput", table, cfg, device)
    if out:
        table.to_csv(out, index=False)


@bench_app.command("overhead")
def bench_overhead(
    profile: BenchProfileOpt = "smoke",
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[
        int,
        typer.Option(
            help="Harness steps per round after train.warmup_steps (at least one), each paired with a "
            "bare step."
        ),
    ] = 60,
    rounds: Annotated[int, typer.Option(help="Harness calls; their pairs are pooled.")] = 2,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
) -> None:
    """The harness's training loop (cached data, checkpoints, progress) against bare PyTorch steps,
    one of each in turn: per-step overhead with a 95% interval, and the whole call's."""
    from pemma.bench.performance import overhead
    from pemma.orchestration.runner import default_device
    from pemma.tasks.segmentation.task import KEYS

    cfg = _bench_config(profile, backbone, set_, method)
    cfg, loaded = _bench_data(cfg, results, data)
    crops = loaded.data.crops(loaded.plan.adapt["train"], KEYS, cfg.model.roi, seed=cfg.seed)
    for i in range(len(crops)):  # the harness reads its cache warm, as every unit after the first does
        crops[i]
    device = default_device()
    try:
        table = overhead(cfg, crops, device, steps, rounds)
    except ValueError as err:
        raise _fail(str(err)) from err
    _print_frame(table, f"harness vs bare loop: profile {profile}, {device}")
    _log_bench(results, "overhead", table, cfg, device)


@bench_app.command("memory")
def bench_memory(
    profile: BenchProfileOpt = "smoke",
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="Methods (default: pemma-lora and the memory reference method)."),
    ] = None,
    backbone: OneBackboneOpt = "unetr",
    options: Annotated[
        list[str] | None,
        typer.Option("--options", help="plain, activation checkpointing, frozen bf16, both."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Timed training steps per method and option.")] = 5,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Peak memory and step time with activation checkpointing and frozen bf16 weights, per method."""
    from pemma.bench.performance import MEMORY_OPTIONS, memory_options
    from pemma.methods import reference_method
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, backbone, set_, "pemma-lora")
    chosen = _split(options, "--options") or list(MEMORY_OPTIONS)
    unknown = [o for o in chosen if o not in MEMORY_OPTIONS]
    if unknown:
        raise _fail(f"--options: unknown {', '.join(unknown)}; expected {', '.join(MEMORY_OPTIONS)}")
    names = _bench_methods(methods, ["pemma-lora", reference_method("memory")])
    device = default_device()
    table = memory_options(cfg, names, device, steps, chosen)
    _print_frame(table, f"memory options: profile {profile}, {backbone}, {device}")
    _log_bench(results, "memory", table, cfg, device)


@bench_app.command("layout")
def bench_layout(
    profile: BenchProfileOpt = "smoke",
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="Methods (default: early-fusion, pemma-lora, full-finetune)."),
    ] = None,
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps per layout and round.")] = 5,
    rounds: RoundsOpt = 2,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Channels-last 3D convolutions (model.channels_last, the default) vs NCDHW: step time per method."""
    from pemma.bench.performance import layout_speed
    from pemma.methods import reference_method
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, backbone, set_, "pemma-lora")
    # the parameters reference (early fusion) and the memory reference (full fine-tuning) train
    # their convolutions; PEMMA-LoRA freezes most of them
    default = [reference_method("parameters"), "pemma-lora", reference_method("memory")]
    names = _bench_methods(methods, default)
    device = default_device()
    table = layout_speed(cfg, names, device, steps, rounds)
    _print_frame(table, f"convolution layout: profile {profile}, {backbone}, {device}")
    _log_bench(results, "layout", table, cfg, device)


@bench_app.command("compile")
def bench_compile(
    profile: BenchProfileOpt = "smoke",
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed steps after the compile (each form).")] = 10,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """torch.compile against eager: compile time, steady speed-up, break-even steps, output difference."""
    from pemma.bench.performance import compile_speed
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, backbone, set_, method)
    device = default_device()
    table = compile_speed(cfg, device, steps)
    _print_frame(table, f"torch.compile vs eager: profile {profile}, {device}", digits=",.3g")
    _log_bench(results, "compile", table, cfg, device)


def _bench_methods(methods: list[str] | None, default: list[str]) -> list[str]:
    """A bench's --methods as registered names (aliases allowed; an unknown one fails clearly)."""
    from pemma.methods import METHODS
    from pemma.registry import RegistryError

    try:
        return [METHODS.canonical(m) for m in _split(methods, "--methods") or default]
    except RegistryError as err:
        raise _fail(str(err)) from err


def _bench_config(
    profile: str, backbone: str, set_: list[str] | None, method: str | None = None, check: bool = True
):
    """The config a benchmark builds its models from: profile, backbone (aliases allowed), the
    --set overrides and, where it matters, the method; bad values end the command (exit 2)."""
    from pemma.config import ConfigError, parse_override, resolve
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.registry import RegistryError

    try:
        backbone = BACKBONES.canonical(backbone)
        head = {"profile": profile, "backbone": backbone}
        if method is not None:
            head["method"] = METHODS.canonical(method)
        cfg = resolve(head, *(parse_override(s) for s in set_ or []))
        if check:
            BACKBONES.get(backbone).check(cfg.model)
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    return cfg


@bench_app.command("merge")
def bench_merge(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")] = "smoke",
    backbones: Annotated[list[str] | None, typer.Option(help="Backbones (default: all).")] = None,
    methods: Annotated[
        list[str] | None, typer.Option("--methods", help="Methods (default: those with adapters).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Inference speed with LoRA / DoRA unmerged vs merged into the base, and their output difference."""
    import pandas as pd

    from pemma.bench.measures import merged_inference
    from pemma.config import ConfigError
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.orchestration.runner import default_device
    from pemma.registry import RegistryError

    device = default_device()
    try:
        names = [
            METHODS.canonical(m)
            for m in _split(methods, "--methods") or ["pemma-lora", "pemma-dora", "early-fusion-lora"]
        ]
        tables = []
        for backbone in [
            BACKBONES.canonical(b) for b in _split(backbones, "--backbones") or BACKBONES.names()
        ]:
            tables.append(merged_inference(_bench_config(profile, backbone, set_), names, device))
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    _print_frame(
        pd.concat(tables, ignore_index=True), f"merged vs unmerged adapters: profile {profile}, {device}"
    )


@bench_app.command("data")
def bench_data(
    profile: BenchProfileOpt = "smoke",
    step_ms: Annotated[
        float, typer.Option(help="The modelled accelerator's step (ms per batch) the data must keep up with.")
    ] = 115.0,
    workers: Annotated[
        str, typer.Option(help="Loader worker counts to compare, comma-separated (default: 0 to the cores).")
    ] = "",
    volumes: Annotated[int, typer.Option(help="HECKTOR-sized phantom volumes to draw crops from.")] = 4,
    batches: Annotated[int, typer.Option(help="Timed batches per worker count.")] = 30,
    cache: Annotated[
        bool,
        typer.Option("--cache", help="Instead: the preprocessing cache, cold vs warm epoch, in training."),
    ] = False,
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps (--cache).")] = 20,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
) -> None:
    """The training data path: milliseconds per stage of one crop on HECKTOR-sized volumes at the
    profile's voxel size, and the share of a modelled `--step-ms` step spent waiting for data with 0,
    1, 2 ... loader workers (each cache entry read whole and its label scanned on every draw, as
    before, vs memory-mapped with the label's indices cached, as now). `--cache`: the preprocessing
    cache's cold vs warm epoch and the data-wait share of real training steps."""
    import os
    import tempfile

    from pemma.bench.measures import data_cache
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, backbone, set_, method)
    if not cache:
        from pemma.bench.datapath import data_path

        cores = len(os.sched_getaffinity(0))
        counts = _split([workers], "--workers") if workers else None
        try:
            counts = [int(n) for n in counts] if counts else sorted({0, 1, 2, cores})
        except ValueError as err:
            raise _fail(f"--workers {workers}: expected whole numbers, e.g. 0,1,2,4") from err
        device = default_device()
        results.mkdir(parents=True, exist_ok=True)
        stages, waits = data_path(
            cfg.data.spacing,
            cfg.model.roi,
            cfg.train.batch_size,
            device,
            step_ms,
            counts,
            volumes=volumes,
            batches=batches,
            scratch=results,
        )
        shape = stages.attrs["volume"]
        _print_frame(
            stages,
            f"one training crop, by stage: profile {profile}, volume {shape} at {cfg.data.spacing} mm, crop "
            f"{cfg.model.roi}, batch {cfg.train.batch_size}; item {stages.attrs['item MB']:.0f} MB, its "
            f"label indices {stages.attrs['indices MB']:.0f} MB",
        )
        _print_frame(waits, f"data wait of a modelled {step_ms:g} ms step: {cores} cores, {device}")
        _log_bench(results, "data-stages", stages, cfg, device)
        _log_bench(results, "data-workers", waits.astype({"loader workers": str}), cfg, device)
        return
    cfg, loaded = _bench_data(cfg, results, data)
    device = default_device()
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results) as cold:
        table = data_cache(cfg, loaded, Path(cold), device, steps)
    _print_frame(
        table, f"preprocessing cache: profile {profile}, {len(loaded.cohort.cases)} patients in cohort"
    )
    _log_bench(results, "data", table, cfg, device)


@app.command()
def params(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size).")] = "paper",
    backbones: Annotated[list[str] | None, typer.Option(help="Backbones (default: all).")] = None,
    methods: Annotated[list[str] | None, typer.Option("--methods", help="Methods (default: all).")] = None,
    set_: SetOpt = None,
) -> None:
    """Parameter accounting for every method and backbone, without training."""
    import pandas as pd

    from pemma.bench.measures import parameter_table
    from pemma.config import ConfigError
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.registry import RegistryError

    try:
        names = [METHODS.canonical(m) for m in _split(methods, "--methods") or METHODS.names()]
        tables = []
        for backbone in [
            BACKBONES.canonical(b) for b in _split(backbones, "--backbones") or BACKBONES.names()
        ]:
            tables.append(parameter_table(_bench_config(profile, backbone, set_, check=False), names))
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    _print_frame(pd.concat(tables, ignore_index=True), f"parameters: profile {profile}")
