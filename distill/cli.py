"""The ``distill`` command line: a thin typer layer over the library.

Each command turns its options into a config object, calls one library function and prints
the small result object it returns. Errors caused by input (:class:`DistillError`) are shown
as one line naming the file and the problem, with exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from distill import __version__
from distill.data.conventions import CONVENTIONS
from distill.errors import DistillError

app = typer.Typer(
    help="Distil an nnU-Net v2 BraTS teacher into a tiny 3D student, evaluate it and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data: phantoms and conversion to nnU-Net raw datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
CONVENTION_HELP = "Label convention: auto (detect from labels and file naming) or one of " + ", ".join(CONVENTIONS)


def _spacing(value: Optional[float]) -> tuple[float, float, float] | None:
    return None if value is None else (value, value, value)


def _version_callback(show: bool) -> None:
    if show:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Distill command line."""


@data_app.command("phantoms")
def phantoms_command(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    n_cases: Annotated[int, typer.Option("--n-cases", "-n", min=1, help="Number of cases.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed; case k is the same whatever --n-cases is.")] = 0,
    spacing: Annotated[float, typer.Option(help="Voxel size in mm over the BraTS field of view (1 = 240x240x155).")] = 2.0,
    layout: Annotated[str, typer.Option(help="brats2021 (case folders, _t1/_t1ce/_t2/_flair/_seg) or nnunet (raw dataset).")] = "brats2021",
) -> None:
    """Write BraTS-like synthetic cases built on real MNI152 anatomy."""
    from distill.data.phantoms import PhantomConfig, write_phantoms

    result = write_phantoms(out, n_cases=n_cases, seed=seed, config=PhantomConfig(spacing_mm=spacing), layout=layout)
    console.print(f"wrote {len(result.case_ids)} phantom cases to {result.out_dir}")


@data_app.command("convert")
def convert_command(
    source: Annotated[Path, typer.Argument(help="Folder of BraTS cases (2017-21 or 2023+ naming) or an nnU-Net raw dataset.")],
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
    gt: Annotated[Path, typer.Argument(help="Ground truth: BraTS case folders, an nnU-Net raw dataset, or <case>.nii.gz files.")],
    out: Annotated[Optional[Path], typer.Option(help="Where metrics.csv and summary.json go (default: PRED).")] = None,
    pred_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    gt_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "auto",
    worst: Annotated[int, typer.Option(help="How many worst cases to list per region.")] = 5,
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
    )
    result = evaluate(config)
    typer.echo(format_summary(result.summary))
    console.print(f"per-case metrics: {result.csv_path}\nsummary: {result.json_path}")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Working folder for the demo.")] = Path("distill-demo"),
    n_cases: Annotated[int, typer.Option("--n-cases", "-n", min=2, help="Number of phantom cases.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the pipeline built so far on embedded phantoms (no input needed)."""
    from distill.demo import DemoConfig, run_demo
    from distill.eval.report import format_summary

    result = run_demo(DemoConfig(out_dir=out, n_cases=n_cases, seed=seed))
    typer.echo(format_summary(result.summary))
    for line in result.steps:
        console.print(line)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DistillError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
