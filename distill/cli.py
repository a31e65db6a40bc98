"""The ``distill`` command line: a thin typer layer over the library.

Each command turns its options into a config object, calls one library function and prints
the small result object it returns. Errors caused by input (:class:`DistillError`) and by
the environment (``OSError``: permissions, a full disk) are shown as one line naming the file
and the problem, with exit code 2 (``--debug`` shows their traceback); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as rich_escape

from distill import __version__
from distill.data.conventions import CONVENTIONS
from distill.data.nifti import DEFAULT_MAX_VOXELS
from distill.errors import DistillError

# Plain (click) help rather than rich panels: flags print as flags, not as "<bool>" options, and
# the text wraps to the terminal (at most 100 columns) instead of cutting option names at 80.
HELP_SETTINGS = {"max_content_width": 100}
app = typer.Typer(
    help="Distil an nnU-Net v2 BraTS teacher into a tiny 3D student, evaluate it and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_SETTINGS,
)
data_app = typer.Typer(
    help="Data: phantoms and conversion to nnU-Net raw datasets.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_SETTINGS,
)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
CONVENTION_HELP = "Label convention: auto (detect from labels and file naming) or one of " + ", ".join(CONVENTIONS)


def _spacing(value: Optional[float]) -> tuple[float, float, float] | None:
    return None if value is None else (value, value, value)


def _version_callback(show: bool) -> None:
    if show:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


class _Run:
    """Options of the whole invocation that ``main`` needs after typer has parsed them."""

    debug = False


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an expected error (bad input, OS errors).")
    ] = False,
) -> None:
    """Distill command line."""
    _Run.debug = debug


@data_app.command("phantoms")
def phantoms_command(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    n_cases: Annotated[int, typer.Option("--n-cases", "-n", min=1, help="Number of cases.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed; case k is the same whatever --n-cases is.")] = 0,
    spacing: Annotated[
        float, typer.Option(help="Voxel size in mm over the BraTS field of view (1 = 240x240x155).")
    ] = 2.0,
    layout: Annotated[
        str, typer.Option(help="brats2021 (case folders, _t1/_t1ce/_t2/_flair/_seg) or nnunet (raw dataset).")
    ] = "brats2021",
) -> None:
    """Write BraTS-like synthetic cases built on real MNI152 anatomy."""
    from distill.data.phantoms import PhantomConfig, write_phantoms

    result = write_phantoms(out, n_cases=n_cases, seed=seed, config=PhantomConfig(spacing_mm=spacing), layout=layout)
    console.print(f"{result.out_dir}: {len(result.written)} phantom case(s) written, "
                  f"{len(result.skipped)} already complete (same seed and settings)", soft_wrap=True)


@data_app.command("convert")
def convert_command(
    source: Annotated[
        Path, typer.Argument(help="Folder of BraTS cases (2017-21 or 2023+ naming) or an nnU-Net raw dataset.")
    ],
    out_root: Annotated[Path, typer.Argument(help="nnU-Net raw folder that receives Dataset<ID>_<NAME>/.")],
    dataset_id: Annotated[int, typer.Option("--dataset-id", "-d", help="nnU-Net dataset number.")] = 500,
    name: Annotated[str, typer.Option(help="Dataset name.")] = "BraTS",
    label_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    spacing: Annotated[Optional[float], typer.Option(help="Resample to this isotropic spacing in mm (e.g. 2).")] = None,
) -> None:
    """Write an nnU-Net v2 raw dataset (region-based WT/TC/ET dataset.json)."""
    from distill.data.convert import ConvertConfig, convert_to_nnunet

    config = ConvertConfig(
        source=source,
        out_root=out_root,
        dataset_id=dataset_id,
        dataset_name=name,
        label_convention=label_convention,
        target_spacing=_spacing(spacing),
    )
    result = convert_to_nnunet(config)
    console.print(
        f"{result.dataset_dir}: {result.n_training} training / {result.n_test} test cases "
        f"({result.n_written} written, {result.n_skipped} already complete) in {result.seconds:.1f} s"
    )


@app.command("evaluate")
def evaluate_command(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted label maps (<case>.nii.gz).")],
    gt: Annotated[
        Path, typer.Argument(help="Ground truth: BraTS case folders, an nnU-Net raw dataset, or <case>.nii.gz files.")
    ],
    out: Annotated[Optional[Path], typer.Option(help="Where metrics.csv and summary.json go (default: PRED).")] = None,
    pred_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    gt_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    worst: Annotated[int, typer.Option(help="How many worst cases to list per region.")] = 5,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Score the cases that have a prediction; list the others.")
    ] = False,
    max_voxels: Annotated[
        int, typer.Option(min=1, help="Refuse label maps whose header claims more voxels (checked before reading).")
    ] = DEFAULT_MAX_VOXELS,
) -> None:
    """BraTS metrics per case and region (WT, TC, ET): Dice, HD95, sensitivity, specificity, volumes."""
    from distill.eval.evaluate import EvaluateConfig, evaluate
    from distill.eval.report import format_summary

    config = EvaluateConfig(
        pred_dir=pred,
        gt_dir=gt,
        out_dir=out or pred,
        pred_convention=pred_convention,
        gt_convention=gt_convention,
        worst_k=worst,
        allow_missing=allow_missing,
        max_voxels=max_voxels,
    )
    result = evaluate(config)
    how = {True: "detected", False: "as given"}
    console.print(f"label conventions: predictions {result.conventions['prediction']} "
                  f"({how[result.conventions_detected['prediction']]}), ground truth "
                  f"{result.conventions['ground_truth']} ({how[result.conventions_detected['ground_truth']]})",
                  highlight=False, markup=False)  # fmt: skip
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} ground-truth case(s) without a prediction: "
                      + ", ".join(result.skipped), highlight=False, soft_wrap=True, markup=False)
    typer.echo(format_summary(result.summary))
    console.print(f"per-case metrics: {result.csv_path}\nsummary: {result.json_path}", markup=False)


@app.command("teacher-cache")
def teacher_cache_command(
    out: Annotated[Path, typer.Option(help="Cache folder (created, or resumed).")],
    model_dir: Annotated[
        Optional[Path],
        typer.Option("--model-dir", "-m", help="nnU-Net model folder <Trainer>__<Plans>__<configuration>."),
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option(help="Training cases: BraTS folders or an nnU-Net raw dataset.")
    ] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Ground-truth label maps, if not beside the images.")] = None,
    folds: Annotated[
        Optional[str], typer.Option(help="Comma-separated folds, e.g. 0,1,2,3,4 (default: all present).")
    ] = None,
    checkpoint: Annotated[
        str, typer.Option(help="checkpoint_final.pth or checkpoint_best.pth.")
    ] = "checkpoint_final.pth",
    tta: Annotated[str, typer.Option(help="mirror8 (every flip the checkpoint allows) or none.")] = "mirror8",
    tile_step: Annotated[float, typer.Option(help="Sliding-window step as a fraction of the patch.")] = 0.5,
    mode: Annotated[
        str, typer.Option(help="full (all folds on every case) or oof (only folds that did not train on it).")
    ] = "full",
    splits: Annotated[Optional[Path], typer.Option(help="nnU-Net splits_final.json for --mode oof.")] = None,
    shard: Annotated[
        Optional[str], typer.Option(help="Process only shard i/n of the cases (0-based), e.g. 0/4.")
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or ray (one Ray task per shard).")] = "local",
    workers: Annotated[int, typer.Option(help="Ray tasks (shards) with --engine ray.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    label_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    spacing: Annotated[
        Optional[float], typer.Option(help="Spacing of the students' grid in mm (default: the images' own).")
    ] = None,
    member: Annotated[
        Optional[list[Path]], typer.Option(help="Extra teacher member config (MONAI), repeatable.")
    ] = None,
    member_weights: Annotated[
        Optional[Path], typer.Option(help="Per-region member weights from distill teacher-weights.")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Only check every entry of an existing cache.")] = False,
    clean: Annotated[
        bool, typer.Option("--clean", help="Remove debris of killed writers (only while none runs).")
    ] = False,
) -> None:
    """Run the teacher ensemble once over the cases; cache soft maps and uncertainty (resumable)."""
    from distill.cache import remove_leftovers, verify_cache

    if clean:
        for name in remove_leftovers(out):
            console.print(f"removed {name}")
    if verify or clean:
        report = verify_cache(out)
        typer.echo("\n".join(report.lines()))
        raise typer.Exit(0 if report.ok else 1)
    if model_dir is None or images is None:
        raise typer.BadParameter(
            "--model-dir and --images are needed to fill a cache (only --verify/--clean work without)"
        )
    from distill.teacher.run import TeacherCacheConfig, parse_shard, run_teacher_cache

    config = TeacherCacheConfig(
        model_dir=model_dir, images=images, out=out, labels=labels,
        folds=tuple(f.strip() for f in folds.split(",")) if folds else None,
        checkpoint=checkpoint, tta=tta, tile_step=tile_step, device=device, mode=mode, splits=splits,
        shard=parse_shard(shard), engine=engine, workers=workers, label_convention=label_convention,
        target_spacing=_spacing(spacing), members=tuple(member or ()), member_weights=member_weights,
    )  # fmt: skip
    result = run_teacher_cache(config)
    per_case = f"{result.seconds_per_case:.1f} s/case" if result.seconds_per_case else "-"
    console.print(
        f"{result.cache_dir}: {len(result.done)} done, {len(result.skipped)} skipped, {len(result.failed)} failed; "
        f"{result.bytes_written / 1e6:.1f} MB written; {per_case}; "
        + ("complete (manifest written)" if result.complete else "incomplete (other shards pending or failures)")
    )
    for case_id, error in result.failed.items():
        console.print(f"[red]failed[/] {case_id}: {error}", soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


@app.command("teacher-weights")
def teacher_weights_command(
    model_dir: Annotated[Path, typer.Option("--model-dir", "-m", help="nnU-Net model folder.")],
    member: Annotated[list[Path], typer.Option(help="Extra member config (MONAI), repeatable.")],
    cases: Annotated[Path, typer.Option(help="Validation cases with ground truth.")],
    out: Annotated[Path, typer.Option(help="Weights JSON to write.")],
    folds: Annotated[Optional[str], typer.Option(help="Comma-separated nnU-Net folds (default: all present).")] = None,
    tta: Annotated[str, typer.Option(help="mirror8 or none.")] = "mirror8",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    label_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    step: Annotated[float, typer.Option(help="Grid step of the weight search on the simplex.")] = 0.1,
) -> None:
    """Fit per-region ensemble weights (maximise Dice per region); compared with simple averaging."""
    from distill.teacher.run import TeacherWeightsJob, run_teacher_weights

    job = TeacherWeightsJob(
        model_dir=model_dir, members=tuple(member), cases=cases, output=out,
        folds=tuple(f.strip() for f in folds.split(",")) if folds else None, tta=tta, device=device,
        label_convention=label_convention, step=step,
    )  # fmt: skip
    result = run_teacher_weights(job)
    for region, scores in result.dice.items():
        typer.echo(f"{region}: Dice fitted {scores['fitted']:.4f} vs uniform {scores['uniform']:.4f}")
    console.print(f"weights written to {result.path}")


RATIO_HELP = (
    "Final student size as a fraction of ONE teacher member's parameters (read from the cache). "
    "0.08 of the default 31 M-parameter BraTS nnU-Net is ~2.5 M; 0.08 of a compact ~1.25 M teacher is ~100k; "
    "30k-100k students of a full-size teacher need --params or ratios near 0.001-0.003."
)


RECIPE_HELP = ("Named preset of training options (distill.train.recipes: brats-100k, brats-30k; chosen on "
               "real-data validation cases, see benchmarks/realdata); "
               "flags given explicitly and --set override it.")
SET_HELP = ("Any other training option as key=value, type-checked against TrainConfig (repeatable), e.g. "
            "--set kd_balance=region --set kd_correction=adjust --set calibrate_thresholds=true.")
# train-student flags whose TrainConfig field has another name or form
_FLAG_FIELDS = {"graph_flow": "graph_flow_weight", "boundary": "boundary_weight"}


def _explicit_flags(ctx: typer.Context, flags: dict) -> dict:
    """The flags the command line (or the environment) gave, not their defaults."""
    # compared by name: typer may bring its own copy of click and of its ParameterSource enum
    given = {"COMMANDLINE", "ENVIRONMENT"}
    return {k: v for k, v in flags.items() if getattr(ctx.get_parameter_source(k), "name", None) in given}


@app.command("train-student")
def train_student_command(
    ctx: typer.Context,
    cache: Annotated[Path, typer.Option(help="Teacher cache from distill teacher-cache.")],
    out: Annotated[Path, typer.Option(help="Run folder (resumed if it exists).")],
    params: Annotated[Optional[int], typer.Option(help="Final student's parameter budget (hit within 5%).")] = None,
    ratio: Annotated[Optional[float], typer.Option(help=RATIO_HELP)] = None,
    family: Annotated[str, typer.Option(help="Student family (see distill.students registry).")] = "unet",
    assistants: Annotated[
        str, typer.Option(help="Teacher assistants: 0, auto, a count K, or sizes like 300000,100000.")
    ] = "0",
    dense_guidance: Annotated[
        bool, typer.Option(help="DGKD: every larger model guides each link, one dropped per batch.")
    ] = False,
    steps: Annotated[int, typer.Option(help="Optimiser steps per link.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Patches per step (per process).")] = 2,
    patch_size: Annotated[int, typer.Option(help="Cubic patch edge in voxels.")] = 64,
    lr: Annotated[float, typer.Option(help="Initial learning rate (AdamW, polynomial decay).")] = 3e-3,
    kd_weight: Annotated[float, typer.Option(help="λ in (1-λ)·supervised + λ·KD; 0 = ground truth only.")] = 0.7,
    temperature: Annotated[float, typer.Option(help="KD temperature T (loss scaled by T²).")] = 2.0,
    graph_flow: Annotated[
        float, typer.Option(help="Weight of 3D graph-flow distillation on links with a live teacher.")
    ] = 0.0,
    graph_flow_stages: Annotated[
        str, typer.Option(help="Shallow,deep feature names for graph flow.")
    ] = "enc1,bottleneck",
    boundary: Annotated[float, typer.Option(help="Weight of the boundary loss, ramped in over the second half.")] = 0.0,
    uncertainty_weighting: Annotated[
        bool, typer.Option(help="Down-weight KD where the teacher passes disagree.")
    ] = False,
    val_cases: Annotated[int, typer.Option(help="Held-out cache cases for validation.")] = 1,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    recipe: Annotated[Optional[str], typer.Option(help=RECIPE_HELP)] = None,
    set_options: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Train a 3D student (through an optional teacher-assistant chain) from a teacher cache."""
    from distill.train import train_student
    from distill.train.config import parse_set_options
    from distill.train.recipes import build_config

    flags = dict(
        family=family, params=params, ratio=ratio, assistants=assistants, dense_guidance=dense_guidance, steps=steps,
        batch_size=batch_size, patch_size=patch_size, lr=lr, kd_weight=kd_weight, temperature=temperature,
        graph_flow=graph_flow, graph_flow_stages=graph_flow_stages, boundary=boundary,
        uncertainty_weighting=uncertainty_weighting, val_cases=val_cases, checkpoint_every=checkpoint_every,
        seed=seed, device=device,
    )  # fmt: skip
    # without a recipe every flag counts (its default is TrainConfig's); with one, only those given
    chosen = flags if recipe is None else _explicit_flags(ctx, flags)
    if "patch_size" in chosen:
        chosen["patch_size"] = (chosen["patch_size"],) * 3
    if "graph_flow_stages" in chosen:
        chosen["graph_flow_stages"] = tuple(s.strip() for s in chosen["graph_flow_stages"].split(","))
    chosen = {_FLAG_FIELDS.get(k, k): v for k, v in chosen.items()}
    config = build_config(cache, out, recipe, chosen, parse_set_options(set_options or []))
    result = train_student(config)
    if result.rank != 0:
        return
    console.print(
        f"student: {result.parameters:,} parameters ({result.ratio:.4f} of one teacher member), "
        f"{result.macs_128 / 1e9:.2f} GMACs at 128³; chain {' -> '.join(f'{n:,}' for n in result.chain)}"
    )
    for key, value in sorted(result.metrics.items()):
        typer.echo(f"{key}: {value:.4f}")
    console.print(f"weights: {result.weights}\ncard: {result.card}")


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, typer.Option(help="Working folder for the demo (resumed if it exists).")
    ] = Path("distill-demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Every stage on the smallest budgets (a few minutes; no accuracy promise).")
    ] = False,
    cases: Annotated[
        Optional[Path], typer.Option(help="Labelled BraTS cases (any supported layout) instead of phantoms.")
    ] = None,
    n_cases: Annotated[
        Optional[int], typer.Option("--n-cases", "-n", min=5, help="Training phantoms (5 folds need 5).")
    ] = None,
    n_test: Annotated[Optional[int], typer.Option(min=1, help="Held-out cases.")] = None,
    teacher_iterations: Annotated[
        Optional[int], typer.Option(min=1, help="nnU-Net training iterations per fold.")
    ] = None,
    params: Annotated[Optional[int], typer.Option(help="Student parameter budget.")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Student training steps per link.")] = None,
    assistants: Annotated[
        Optional[str], typer.Option(help="Teacher assistants: auto, a count, or sizes (e.g. 300000,100000).")
    ] = None,
    larger: Annotated[
        bool, typer.Option(help="64x64x40 phantoms and 48-voxel patches (slower, closer to real work).")
    ] = False,
    serve: Annotated[bool, typer.Option(help="Serve the package over HTTP and POST a held-out case.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """What distillation gains, end to end: data, nnU-Net teacher, cache, student, export, serve, evaluate, report."""
    from distill.demo import DemoConfig, run_demo

    given = {"n_cases": n_cases, "n_test": n_test, "teacher_iterations": teacher_iterations,
             "student_params": params, "steps": steps, "assistants": assistants}
    options = {k: v for k, v in given.items() if v is not None}
    options.update(out_dir=out, cases=cases, seed=seed, serve=serve)
    if larger:
        options.update(phantom_shape=(64, 64, 40), patch=48)
    config = DemoConfig.quick_run(**options) if quick else DemoConfig(**options)
    result = run_demo(config, report=lambda line: console.print(line, highlight=False, markup=False))
    typer.echo(result.table())


# export, predict and bench live in their own module (the inference side imports no training code).
from distill.cli_infer import register as _register_inference_commands  # noqa: E402

_register_inference_commands(app)


def main() -> None:
    """Console-script entry point: expected failures end in one line and exit code 2."""
    try:
        app()
    except DistillError as exc:
        _fail(exc, str(exc))
    except OSError as exc:  # permissions, a full disk, a path that is a file: the environment, not a bug
        from distill.core.paths import os_error_line

        _fail(exc, os_error_line(exc))
    except KeyboardInterrupt as exc:
        _fail(exc, "interrupted; outputs already completed are kept, rerun the command to continue", code=130)


def _fail(exc: BaseException, line: str, code: int = 2) -> None:
    if _Run.debug:
        raise exc
    console.print(f"[bold red]error:[/] {rich_escape(line)}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
