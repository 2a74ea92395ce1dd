"""--device: one check at the command line's edge, with errors that say what to do."""

from __future__ import annotations

import pytest
import torch

from cryoconf.devices import parse_device
from cryoconf.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")


def test_parse_device():
    assert parse_device("cpu") == torch.device("cpu") and parse_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match=r"--device 'gpu0' is not a torch device; use cpu, cuda or cuda:N"):
        parse_device("gpu0")
    with pytest.raises(InputError, match=r"--device meta: cryoconf runs on cpu or cuda"):
        parse_device("meta")


@no_cuda
def test_cuda_on_a_machine_without_it():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=rf"--device {name}: CUDA is not available on this machine; use --device cpu"):
            parse_device(name)


@no_cuda
def test_commands_refuse_cuda_without_it_before_reading_anything(tmp_path, capsys):
    """Before: torch's 'Torch not compiled with CUDA enabled' traceback (simulate) or 'cannot be read as a
    checkpoint' (sbi infer), from deep inside."""
    from cryoconf.cli.main import main

    assert main(["simulate", str(tmp_path / "absent.pdb"), "-o", str(tmp_path / "s"), "-n", "2", "--box", "16",
                 "--apix", "2", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.1.pt").write_bytes(b"")
    assert main(["sbi", "infer", str(run), str(tmp_path / "p.star"), "-o", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
