"""The eval-mode switch restores the module's previous mode, also when the block raises."""

import pytest
import torch

from cryoconf.module_modes import evaluating


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluating_restores_the_previous_mode(start_training):
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5))
    net.train(start_training)
    with evaluating(net) as m:
        assert m is net
        assert not any(layer.training for layer in net.modules())
    assert all(layer.training == start_training for layer in net.modules())


def test_evaluating_restores_the_mode_after_an_error():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    net.train()
    with pytest.raises(RuntimeError, match="inside"), evaluating(net):
        raise RuntimeError("inside")
    assert all(layer.training for layer in net.modules())


def test_evaluating_uses_running_statistics():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(2)
    x = torch.randn(8, 2) * 3 + 5
    with evaluating(bn), torch.no_grad():
        out = bn(x)  # running mean 0, var 1 at initialisation: the input comes back (ε aside)
    torch.testing.assert_close(out, x / (1 + bn.eps) ** 0.5)
    assert torch.all(bn.running_mean == 0)
