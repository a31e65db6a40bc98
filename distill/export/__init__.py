"""Model packages: export a trained student with its preprocessing and label mapping, and open one.

    from distill.export.run import ExportConfig, export_package
    result = export_package(ExportConfig(run_dir="runs/s30k", out="packages/s30k"))
    package = ModelPackage.open("packages/s30k")        # verifies format version and every sha256

Only this package knows the folder layout (:mod:`distill.package`). The exporter and
parity gate live in :mod:`distill.export.onnx_export`, TensorRT engine building in
:mod:`distill.export.tensorrt_build` (guarded: nothing here needs TensorRT to import); what
runs the results (onnxruntime sessions, loading and finding engines) is
:mod:`distill.infer.onnxruntime_session` and :mod:`distill.infer.tensorrt_runtime`.
Importing this package loads only the layout module, so a predictor or service that opens
packages pulls in neither the exporter nor the teacher cache.
"""

from distill.package import FORMAT_VERSION, PACKAGE_FORMAT, EngineEntry, InferenceSettings, ModelPackage, PackageError

__all__ = ["FORMAT_VERSION", "PACKAGE_FORMAT", "EngineEntry", "InferenceSettings", "ModelPackage", "PackageError"]
