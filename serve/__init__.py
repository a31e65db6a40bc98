"""``distill serve``: a hardened HTTP service over one Distill model package.

Nothing happens at import. :func:`serve.app.create_app` builds the FastAPI app from
:class:`serve.settings.ServeSettings`; :func:`serve.server.run` runs it under uvicorn with
graceful draining. The service imports only Distill's core, data, errors, infer and package
stages (no training, teacher, cache, export, nnU-Net, MONAI, zarr, Ray or onnx).
"""
