"""Shared test configuration: GPU tests skip themselves on machines without CUDA, the
fault-injection suite prints its summary table at the end of the session, and irregular data
(permuted/oblique affines, anisotropic voxels, organs touching at a corner; see tiny.py) is
offered as fixtures to every module."""

import logging

import numpy as np
import pytest
import torch

from tiny import IRREGULAR_AFFINES, corner_touching_labels


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print what the fault-injection suite tried and how it was answered (see faults_report.py)."""
    import faults_report

    lines = faults_report.summary_lines()
    if lines:
        terminalreporter.section("fault-injection summary")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``item.rep_call``) for fixtures that record outcomes."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's in-process training on one thread: its subprocesses get the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_swinbob_log_level():
    """Entry points run in-process (here or in a module's fixture) set the ``swinbob`` logger's level
    (``--log_level WARNING``); each test starts from the default, so that ``caplog`` sees what it asks for."""
    logging.getLogger("swinbob").setLevel(logging.NOTSET)


@pytest.fixture(params=sorted(IRREGULAR_AFFINES))
def irregular_affine(request) -> np.ndarray:
    """Each irregular geometry in turn: a sagittal (permuted), an oblique and an anisotropic axial affine."""
    return IRREGULAR_AFFINES[request.param]


@pytest.fixture
def corner_touching_organs() -> np.ndarray:
    """A 12^3 label volume whose organs touch at a corner (1), an edge (2), or not at all (3)."""
    return corner_touching_labels()
