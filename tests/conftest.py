"""Fixtures shared across the test suite: the real datasets beside the repository, and a small
generated shapes dataset built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from detkeeper.data.synthetic import generate_shapes_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(path: Path, name: str) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data/{name} not found: the shared datasets sit beside the "
                    "repository in CI and developer checkouts")
    return path


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The BCCD blood-cell dataset in VOC layout (364 images, 3 classes)."""
    return _shared(SHARED_DATA / "bccd" / "BCCD", "bccd")


@pytest.fixture(scope="session")
def coco_fake100_dir() -> Path:
    """COCO val2014 ground truth for 100 images and the reference fake detections."""
    return _shared(SHARED_DATA / "coco-fake100", "coco-fake100")


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24/8/8 images at 128 px, seed 0), generated once per session.

    Its parameters are in its manifest.json; read them from there rather than repeating them.
    """
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes",
                                   num_train=24, num_val=8, num_test=8, image_size=128)
