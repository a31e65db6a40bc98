"""nnU-Net v2 as a teacher: any trained model folder, chosen folds, 8-way mirroring TTA.

Everything that decides the prediction is nnU-Net's own code: its preprocessor
(``run_case_npy``: transpose, crop, normalise, resample), its sliding-window inference
(``predict_sliding_window_return_logits``: tiles, Gaussian weighting), and its export
(``convert_predicted_logits_to_segmentation_with_correct_shape``: resample back, sigmoid or
softmax, uncrop). As in nnU-Net, logits are averaged over flips and folds and the
non-linearity comes last, so the cached probabilities are what ``nnUNetv2_predict
--save_probabilities`` writes.

The uncertainty map needs what nnU-Net throws away: the individual forward passes (8 flips
of each fold). A thin predictor subclass assembles, beside nnU-Net's own accumulation, one
whole-volume probability map per pass (tiles Gaussian-weighted exactly as nnU-Net weights
them) and the uncertainty is the voxel-wise standard deviation over those 40 maps; a single
pass therefore has zero uncertainty. nnU-Net's mean itself is computed by nnU-Net's code with
identical arithmetic, so the cached mean matches ``nnUNetv2_predict``.

Model folders are trusted local files: nnU-Net checkpoints are pickles and are loaded the way
nnU-Net loads them (``weights_only=False``). Never point this at a downloaded folder you do
not trust.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from distill.core.jsonfile import read_json_object
from distill.data.case import Case
from distill.data.discovery import MODALITIES, nnunet_channel_order
from distill.errors import DistillError
from distill.teacher.base import SIGMOID, SOFTMAX, PassAccumulator, SoftPrediction, TeacherInfo, file_sha256

TTA_MODES = ("mirror8", "none")
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
# Region names nnU-Net BraTS datasets use -> Distill's region names.
REGION_NAMES = {"whole tumor": "WT", "whole tumour": "WT", "wt": "WT", "tumor core": "TC", "tumour core": "TC",
                "tc": "TC", "enhancing tumor": "ET", "enhancing tumour": "ET", "et": "ET"}  # fmt: skip
# Readers whose arrays are the NIfTI voxel grid transposed (SimpleITK) or as stored (nibabel).
_TRANSPOSED_READERS = {"SimpleITKIO", "SimpleITKIOWithReorient"}
_PLAIN_READERS = {"NibabelIO"}


class TeacherError(DistillError):
    """A teacher model folder or checkpoint is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class NnUNetTeacherConfig:
    """How to run the nnU-Net teacher.

    Attributes:
        model_dir: ``nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>``.
        folds: folds to use (``None`` = every ``fold_*`` holding the checkpoint).
        checkpoint: ``checkpoint_final.pth`` or ``checkpoint_best.pth``.
        tta: ``"mirror8"`` (every flip the checkpoint allows, 8 in 3D) or ``"none"``.
        tile_step: sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
        device: ``"cpu"`` or ``"cuda"``.
    """

    model_dir: Path
    folds: tuple[str, ...] | None = None
    checkpoint: str = "checkpoint_final.pth"
    tta: str = "mirror8"
    tile_step: float = 0.5
    device: str = "cpu"


def _quiet_import_predictor():
    # nnunetv2.paths prints a warning per unset nnUNet_* variable at import; inference needs none.
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    return nnUNetPredictor


def available_folds(model_dir: Path, checkpoint: str) -> tuple[str, ...]:
    folds = [p.name for p in sorted(model_dir.glob("fold_*")) if (p / checkpoint).is_file()]
    return tuple(sorted(folds, key=lambda f: (f == "fold_all", f)))


def _fold_arg(fold: str) -> int | str:
    suffix = fold.removeprefix("fold_")
    return int(suffix) if suffix.isdigit() else suffix


class NnUNetTeacher:
    """An nnU-Net v2 model folder loaded once and reused for every case."""

    def __init__(self, config: NnUNetTeacherConfig):
        self.config = config
        self.model_dir = Path(config.model_dir)
        self._check_folder()
        self.folds = self._resolve_folds()
        self.predictor = self._load_predictor()
        self._check_every_fold_fits()
        self._fold_weights = dict(zip(self.folds, self.predictor.list_of_parameters))
        self.label_manager = self.predictor.label_manager
        self.plans_manager = self.predictor.plans_manager
        self.configuration_manager = self.predictor.configuration_manager
        self.channel_order = nnunet_channel_order(self.predictor.dataset_json, self.model_dir / "dataset.json")
        self._check_reader()

    # ------------------------------------------------------------------ loading and checks

    def _check_folder(self) -> None:
        if self.config.tta not in TTA_MODES:
            raise TeacherError(f"unknown TTA mode {self.config.tta!r}; choose one of {', '.join(TTA_MODES)}")
        if self.config.checkpoint not in CHECKPOINTS:
            raise TeacherError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {self.config.checkpoint!r}")
        if not self.model_dir.is_dir():
            raise TeacherError(f"{self.model_dir}: nnU-Net model folder not found")
        for name in ("plans.json", "dataset.json"):
            path = self.model_dir / name
            if not path.is_file():
                raise TeacherError(
                    f"{path}: missing; an nnU-Net model folder holds plans.json, dataset.json and fold_*/"
                )
            read_json_object(path, name, "the nnU-Net model folder is damaged", TeacherError)

    def _resolve_folds(self) -> tuple[str, ...]:
        present = available_folds(self.model_dir, self.config.checkpoint)
        if self.config.folds is None:
            if not present:
                raise TeacherError(f"{self.model_dir}: no fold_*/{self.config.checkpoint} found")
            return present
        wanted = tuple(f if str(f).startswith("fold_") else f"fold_{f}" for f in self.config.folds)
        for fold in wanted:
            path = self.model_dir / fold / self.config.checkpoint
            if not path.is_file():
                raise TeacherError(f"{path}: checkpoint missing for {fold} (present: {', '.join(present) or 'none'})")
        return wanted

    def _load_predictor(self):
        predictor_class = _spread_recording_predictor_class()
        device = torch.device(self.config.device)
        predictor = predictor_class(
            tile_step_size=self.config.tile_step,
            use_gaussian=True,
            use_mirroring=self.config.tta == "mirror8",
            perform_everything_on_device=device.type == "cuda",
            device=device,
            allow_tqdm=False,
        )
        for fold in self.folds:  # fail on the first unreadable checkpoint with its name
            path = self.model_dir / fold / self.config.checkpoint
            try:
                torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:
                raise TeacherError(f"{path}: unreadable nnU-Net checkpoint ({type(exc).__name__}: {exc})") from exc
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                predictor.initialize_from_trained_model_folder(
                    str(self.model_dir), [_fold_arg(f) for f in self.folds], self.config.checkpoint
                )
        except RuntimeError as exc:
            raise TeacherError(
                f"{self.model_dir}: a checkpoint does not fit the network that plans.json/dataset.json describe ({exc})"
            ) from exc
        except Exception as exc:
            raise TeacherError(
                f"{self.model_dir}: nnU-Net could not load this model folder ({type(exc).__name__}: {exc})"
            ) from exc
        return predictor

    def _check_every_fold_fits(self) -> None:
        for fold, weights in zip(self.folds, self.predictor.list_of_parameters):
            try:
                self.predictor.network.load_state_dict(weights)
            except RuntimeError as exc:
                path = self.model_dir / fold / self.config.checkpoint
                raise TeacherError(
                    f"{path}: weights do not fit the network of plans.json/dataset.json ({str(exc)[:500]})"
                ) from exc

    def _check_reader(self) -> None:
        reader = self.plans_manager.image_reader_writer_class.__name__
        if reader not in _TRANSPOSED_READERS | _PLAIN_READERS:
            raise TeacherError(
                f"{self.model_dir / 'plans.json'}: image reader {reader} is not supported (SimpleITKIO, NibabelIO)"
            )

    # ------------------------------------------------------------------ description

    @cached_property
    def channels(self) -> tuple[str, ...]:
        labels = self.predictor.dataset_json["labels"]
        if self.label_manager.has_regions:
            names = [name for name in labels if name.lower() != "background"]
            return tuple(REGION_NAMES.get(n.lower(), n) for n in names)
        return tuple(sorted(labels, key=lambda n: labels[n]))

    @cached_property
    def mirror_axes(self) -> tuple[int, ...]:
        if self.config.tta == "none" or self.predictor.allowed_mirroring_axes is None:
            return ()
        return tuple(int(a) for a in self.predictor.allowed_mirroring_axes)

    @cached_property
    def info(self) -> TeacherInfo:
        import nnunetv2

        network = self.predictor.network
        plans_name = self.plans_manager.plans_name
        config_name = (
            self.configuration_manager.configuration_name
            if hasattr(self.configuration_manager, "configuration_name")
            else None
        )
        identity = {
            "kind": "nnunet",
            "plans_sha256": file_sha256(self.model_dir / "plans.json"),
            "dataset_sha256": file_sha256(self.model_dir / "dataset.json"),
            "checkpoints": {f: file_sha256(self.model_dir / f / self.config.checkpoint) for f in self.folds},
            "checkpoint_name": self.config.checkpoint,
            "folds": list(self.folds),
            "mirror_axes": list(self.mirror_axes),
            "tile_step": self.config.tile_step,
            "trainer": self.predictor.trainer_name,
            "plans": plans_name,
            "nnunetv2_version": getattr(nnunetv2, "__version__", None) or _package_version("nnunetv2"),
        }
        preprocessing = {
            "spacing": list(self.configuration_manager.spacing),
            "patch_size": list(self.configuration_manager.patch_size),
            "normalization": list(self.configuration_manager.normalization_schemes),
            "transpose_forward": list(self.plans_manager.transpose_forward),
            "configuration": config_name,
        }
        return TeacherInfo(
            name=f"nnunet:{self.model_dir.parent.name}/{self.model_dir.name}",
            output_kind=SIGMOID if self.label_manager.has_regions else SOFTMAX,
            channels=self.channels,
            parameters_per_member=sum(p.numel() for p in network.parameters()),
            members=self.folds,
            tta=self.config.tta if self.mirror_axes else "none",
            preprocessing=preprocessing,
            identity=identity,
        )

    # ------------------------------------------------------------------ prediction

    def _to_nnunet_arrays(self, case: Case) -> tuple[np.ndarray, dict]:
        """Distill's (4, X, Y, Z) -> nnU-Net's channel order and axis order, plus its properties."""
        if case.images.shape[0] != len(MODALITIES):
            raise DistillError(f"case {case.case_id}: expected {len(MODALITIES)} channels, got {case.images.shape[0]}")
        data = np.stack([case.images[MODALITIES.index(m)] for m in self.channel_order])
        spacing = list(case.spacing)
        if self.plans_manager.image_reader_writer_class.__name__ in _TRANSPOSED_READERS:
            # SimpleITK hands nnU-Net the NIfTI voxel array with its axes reversed.
            data = data.transpose(0, 3, 2, 1)
            spacing = spacing[::-1]
        return np.ascontiguousarray(data, dtype=np.float32), {"spacing": spacing}

    def _preprocess(self, case: Case) -> tuple[torch.Tensor, dict]:
        data, properties = self._to_nnunet_arrays(case)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, properties = preprocessor.run_case_npy(
                data, None, properties, self.plans_manager, self.configuration_manager, self.predictor.dataset_json
            )
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), properties

    def _nonlin(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, dim=1)

    @contextlib.contextmanager
    def _using(self, members: Sequence[str]):
        """nnU-Net's predictor with only ``members``' weights, restored to every fold afterwards."""
        self.predictor.list_of_parameters = [self._fold_weights[f] for f in members]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield self.predictor
        finally:
            self.predictor.list_of_parameters = list(self._fold_weights.values())

    def predict_preprocessed(self, data: torch.Tensor, members: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, int]:
        """nnU-Net's mean logits over ``members`` and the per-pass probability std, on nnU-Net's grid."""
        with self._using(members) as predictor:
            predictor.start_recording(self._nonlin)
            mean_logits = predictor.predict_logits_from_preprocessed_data(data)
            std, n_passes = predictor.finish_recording()
        return mean_logits.float(), std, n_passes

    def _to_original_space(self, array: np.ndarray, properties: dict) -> np.ndarray:
        """A (K, ...) map on nnU-Net's grid -> the original grid, as nnU-Net's export resamples probabilities."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        spacing = [properties["spacing"][i] for i in self.plans_manager.transpose_forward]
        resampled = self.configuration_manager.resampling_fn_probabilities(
            array, properties["shape_after_cropping_and_before_resampling"], self.configuration_manager.spacing, spacing
        )
        resampled = resampled.numpy() if isinstance(resampled, torch.Tensor) else np.asarray(resampled)
        full = np.zeros((array.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
        full = insert_crop_into_image(full, resampled.astype(np.float32), properties["bbox_used_for_cropping"])
        return full.transpose([0] + [i + 1 for i in self.plans_manager.transpose_backward])

    def _to_distill_axes(self, array: np.ndarray) -> np.ndarray:
        if self.plans_manager.image_reader_writer_class.__name__ in _TRANSPOSED_READERS:
            array = array.transpose(0, 3, 2, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def _checked_members(self, members: Sequence[str] | None) -> tuple[str, ...]:
        members = tuple(members) if members is not None else self.folds
        unknown = [m for m in members if m not in self._fold_weights]
        if unknown:
            raise TeacherError(f"{self.model_dir}: folds {unknown} are not loaded (loaded: {', '.join(self.folds)})")
        return members

    def _export_probabilities(self, mean_logits: torch.Tensor, properties: dict) -> np.ndarray:
        """nnU-Net's own export: logits on its grid -> probabilities on the original grid (distill axes)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        with contextlib.redirect_stdout(io.StringIO()):
            _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                mean_logits, self.plans_manager, self.configuration_manager, self.label_manager, properties,
                return_probabilities=True, num_threads_torch=torch.get_num_threads(),
            )  # fmt: skip
        return self._to_distill_axes(probabilities)

    def predict(self, case: Case, members: Sequence[str] | None = None) -> SoftPrediction:
        """Soft maps for ``case`` on its original grid, channels in ``self.channels`` order."""
        members = self._checked_members(members)
        data, properties = self._preprocess(case)
        mean_logits, std, n_passes = self.predict_preprocessed(data, members)
        return SoftPrediction(
            probabilities=self._export_probabilities(mean_logits, properties),
            uncertainty=self._to_distill_axes(self._to_original_space(std, properties)),
            n_passes=n_passes,
        )

    def predict_timed(self, case: Case, members: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Probabilities only, exactly as nnU-Net's predictor makes them (no per-pass spread is
        recorded), and the seconds of each stage: ``preprocess``, ``model`` (every fold and
        mirror pass), ``postprocess`` (nnU-Net's export to the original grid). For latency
        comparisons: :meth:`predict` also resamples the uncertainty, which deployment would not.
        """
        members = self._checked_members(members)
        start = time.perf_counter()
        data, properties = self._preprocess(case)
        preprocessed_at = time.perf_counter()
        with self._using(members) as predictor:
            mean_logits = predictor.predict_logits_from_preprocessed_data(data).float()
        inferred_at = time.perf_counter()
        probabilities = self._export_probabilities(mean_logits, properties)
        timings = {"preprocess": preprocessed_at - start, "model": inferred_at - preprocessed_at,
                   "postprocess": time.perf_counter() - inferred_at}  # fmt: skip
        return probabilities, timings


def _spread_recording_predictor_class():
    """nnUNetPredictor plus a record of every forward pass's probabilities (see the module docstring)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    base = _quiet_import_predictor()

    class SpreadRecordingPredictor(base):
        _nonlin = None

        def start_recording(self, nonlin) -> None:
            self._nonlin, self._spread = nonlin, PassAccumulator()

        def finish_recording(self) -> tuple[np.ndarray, int]:
            spread, self._nonlin, self._spread = self._spread, None, None
            return spread.std(), int(spread.count)

        def predict_sliding_window_return_logits(self, input_image):
            from acvl_utils.cropping_and_padding.padding import pad_nd_image

            if self._nonlin is None:
                return super().predict_sliding_window_return_logits(input_image)
            # nnU-Net pads small images up to the patch; the per-pass maps live on that padded grid.
            _, unpad = pad_nd_image(
                input_image, self.configuration_manager.patch_size, "constant", {"value": 0}, True, None
            )
            logits = super().predict_sliding_window_return_logits(input_image)
            weight = self._pass_weight[(slice(None), *unpad[1:])]
            for pass_map in self._pass_maps:  # one whole-volume map per flip of this member
                self._spread.add((pass_map[(slice(None), *unpad[1:])] / weight).numpy())
            self._pass_maps = None
            return logits

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            if self._nonlin is not None:
                self._slicers, self._tile_index, self._pass_maps = list(slicers), 0, None
                self._pass_weight = torch.zeros((1, *image_size), dtype=torch.float32)
                self._gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1.0 / 8,
                                                  value_scaling_factor=10,
                                                  device=torch.device("cpu")).float()  # fmt: skip
            return slicers

        @torch.inference_mode()
        def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
            if self._nonlin is None:
                return super()._internal_maybe_mirror_and_predict(x)
            # Same passes, order and arithmetic as nnU-Net's own method, plus the record.
            mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
            prediction = self.network(x)
            passes = [prediction.clone()]  # ``prediction`` is summed into in place below
            if mirror_axes is not None:
                axes = [m + 2 for m in mirror_axes]
                combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
                for flip in combinations:
                    single = torch.flip(self.network(torch.flip(x, flip)), flip)
                    passes.append(single)
                    prediction += single
                prediction /= len(combinations) + 1
            self._record_tile(passes)
            return prediction

        def _record_tile(self, passes: list[torch.Tensor]) -> None:
            """Add each pass's probabilities to that pass's whole-volume map, weighted as nnU-Net weights tiles."""
            sl = self._slicers[self._tile_index]
            self._tile_index += 1
            if self._pass_maps is None:
                shape = (len(passes), self.label_manager.num_segmentation_heads, *self._pass_weight.shape[1:])
                self._pass_maps = torch.zeros(shape, dtype=torch.float32)
            weight = self._gaussian if self.use_gaussian else torch.ones_like(self._gaussian)
            for pass_map, single in zip(self._pass_maps, passes):
                pass_map[sl] += self._nonlin(single.detach().float().cpu())[0] * weight
            self._pass_weight[sl] += weight

    return SpreadRecordingPredictor


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
