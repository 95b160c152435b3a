"""Shared fixtures, and the `slow` mark: tests that run the scripts as commands or train for seconds.

    python3 -m pytest -q tests -n 2                  # the whole suite, two tests at a time (pytest-xdist)
    python3 -m pytest -q tests -n 2 -m "not slow"    # the quick loop
"""
import math
import socket
from unittest import mock

import pytest
import torch


def free_port() -> int:
    """A TCP port free right now, for a launcher's --main_process_port: tests may run side by side (-n 2)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for in-process tiny tensor work: on a shared 2-core machine two threads
    contend with the other processes and can make a tiny forward take seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Paths of random-init InceptionV3 weights in torch-fidelity's state-dict layout: finite and NaN logits."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    # the constructor loads weights (download when no path): skip that to keep the random init
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        fe = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    for m in fe.modules():  # variance-preserving init, so features are O(1) through the BN layers at identity
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    folder = tmp_path_factory.mktemp("weights")
    sd = fe.state_dict()
    torch.save(sd, folder / "random.pth")
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], math.nan)  # like fid_inception_weights.py: no classifier
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], math.nan)
    torch.save(sd, folder / "nan_logits.pth")
    return {"random": str(folder / "random.pth"), "nan": str(folder / "nan_logits.pth")}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the repo's scripts as commands, or trains for seconds; "
                                       "leave out with -m 'not slow' for a quick loop")
