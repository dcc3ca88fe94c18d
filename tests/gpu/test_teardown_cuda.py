"""On a CUDA machine: every holder's teardown returns GPU memory to within the 64 MiB budget."""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_teardown_returns_gpu_memory_to_baseline(capsys):
    from tests.gpu.measure_teardown import main

    exit_code = main(["--cycles", "2", "--device", "cuda"])
    print(capsys.readouterr().out)
    assert exit_code == 0
