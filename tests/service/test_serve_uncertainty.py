"""``/segment?outputs=uncertainty`` with a real package whose student has the distilled-uncertainty head.

The package holds an untrained ~6k-parameter student with the head (what it learnt does not
matter: the test checks that the service returns exactly the Predictor's map, on the input
grid, described from the manifest). The refusal for packages without the head is tested with
the fake predictor in ``test_serve_app.py``.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from service_helpers import SHAPE, case_files, case_images, make_client, oblique_affine, read_nifti_response

from distill.export.run import ExportConfig, export_package
from distill.infer.predictor import Predictor
from distill.train.chain import save_untrained_student


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    root = tmp_path_factory.mktemp("serve_uncertainty")
    run = save_untrained_student(root / "run", 6000, uncertainty_head=True)
    package = export_package(ExportConfig(run_dir=run, out=root / "pkg", n_phantoms=1, phantom_spacing=4.0))
    return Predictor.from_package(package.package_dir, "torch", threads=2)


@pytest.fixture(scope="module")
def client(predictor):
    client = make_client(predictor)
    yield client
    client.__exit__(None, None, None)


def test_outputs_uncertainty_returns_the_distilled_map_on_the_input_grid(client, predictor):
    response = client.post("/segment", params={"outputs": "uncertainty,entropy"}, files=case_files())
    assert response.status_code == 200, response.text[:500]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["entropy.nii.gz", "labels.nii.gz", "outputs.json", "uncertainty.nii.gz"]
    image = read_nifti_response(archive.read("uncertainty.nii.gz"))
    assert image.shape == (*SHAPE, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-5)
    expected = predictor.segment(case_images().astype(np.float32), image.affine, return_distilled_uncertainty=True)
    np.testing.assert_array_equal(np.moveaxis(np.asanyarray(image.dataobj), -1, 0), expected.distilled_uncertainty)
    description = json.loads(archive.read("outputs.json"))["uncertainty"]
    assert description["range"] == [0.0, 0.5] and "not a calibrated probability" in description["meaning"]
    assert description["units"].startswith("probability")
    info = client.get("/v1/model").json()["manifest"]
    assert info["uncertainty"]["output"]["name"] == "uncertainty"
