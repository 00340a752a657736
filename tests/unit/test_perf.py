"""perf.py's FLOP count (the analytic number, and no trace left on the model or any random stream), its per-epoch
metrics inside a real Lightning fit, and peaks.py's table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.tracking import names
from pipelines.training import peaks, perf


def mlp(n_in=64, hidden=32, n_out=10):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, n_out))


def test_mlp_flops_are_the_analytic_count():
    # Linear(i, o) forward is 2*i*o per sample; backward computes the weight gradient (2*i*o) and, except for
    # the first layer, whose input needs no gradient, the input gradient (2*i*o)
    n = 8
    flops = perf.count_flops(mlp(), torch.randn(n, 64))
    assert flops == n * (2 * 64 * 32 * 2 + 2 * 32 * 10 * 3)


def test_cnn_flops_are_the_analytic_count():
    n, c, h, w = 4, 3, 8, 8
    net = nn.Sequential(nn.Conv2d(c, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1), nn.Flatten(),
                        nn.Linear(6 * h * w, 10))
    conv1, conv2, head = 2 * c * 5 * 9 * h * w, 2 * 5 * 6 * 9 * h * w, 2 * 6 * h * w * 10
    assert perf.count_flops(net, torch.randn(n, c, h, w)) == n * (conv1 * 2 + conv2 * 3 + head * 3)


def _snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()},
            torch.get_rng_state())


def _assert_unchanged(net, before):
    state, grads, rng = before
    after_state, after_grads, after_rng = _snapshot(net)
    for k, v in state.items():   # weights, BatchNorm running_mean/var, num_batches_tracked
        assert torch.equal(v, after_state[k]), k
    for k, g in grads.items():
        assert (g is None and after_grads[k] is None) or torch.equal(g, after_grads[k]), k
    assert torch.equal(rng, after_rng), "the CPU random stream moved"


def test_counting_leaves_the_model_and_the_random_streams_as_they_were():
    torch.manual_seed(0)
    net = mlp()
    x = torch.randn(8, 64)
    net(x).sum().backward()    # real gradients and BatchNorm statistics to keep
    before = _snapshot(net)
    perf.count_flops(net, x)
    _assert_unchanged(net, before)
    # the next dropout mask is the one it would have been without the count
    torch.manual_seed(1)
    expected = net(x)
    torch.manual_seed(1)
    perf.count_flops(net, x)
    assert torch.equal(net(x), expected)


def test_a_net_compiled_in_place_is_counted_eagerly_on_its_copy():
    net = mlp()
    # a copy that kept the compiled call would run the original net (and move its statistics); torch's own
    # Module.__getstate__ drops it on deepcopy, and count_flops drops it as well
    net.compile(backend="eager")
    x = torch.randn(8, 64)
    before = _snapshot(net)
    assert perf.count_flops(net, x) == 8 * (2 * 64 * 32 * 2 + 2 * 32 * 10 * 3)
    _assert_unchanged(net, before)
    assert net._compiled_call_impl is not None     # the real network stays compiled


class Tiny:
    """A LightningModule with a `net` (BatchNorm, dropout) and a dataset of 40 rows in batches of 8."""

    @staticmethod
    def module():
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = mlp(6, 16, 3)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return nn.functional.cross_entropy(self.net(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Module()

    @staticmethod
    def loader():
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))
        return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)


def _fit(with_throughput: bool, epochs: int = 2):
    import lightning as L
    from omegaconf import OmegaConf

    L.seed_everything(3, verbose=False)
    model = Tiny.module()
    cfg = OmegaConf.create({"trainer": {"precision": "32-true", "matmul_precision": "highest"}})
    callbacks = [perf.Throughput(cfg)] if with_throughput else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, Tiny.loader())
    return model, trainer


def test_throughput_in_a_fit_logs_every_epoch_and_changes_no_weight():
    model, trainer = _fit(True)
    plain, _ = _fit(False)
    for (k, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k   # the same training, bit for bit: no random draw or statistic taken
    m = trainer.callback_metrics
    assert float(m[names.FLOPS_PER_SAMPLE]) == 2 * 6 * 16 * 2 + 2 * 16 * 3 * 3
    assert float(m[names.STEPS_PER_SECOND]) > 0 and float(m[names.SAMPLES_PER_SECOND]) > 0
    assert float(m[names.SAMPLES_PER_SECOND]) == pytest.approx(8 * float(m[names.STEPS_PER_SECOND]), rel=1e-3)
    assert float(m[names.TFLOPS]) == pytest.approx(float(m[names.FLOPS_PER_SAMPLE]) * float(m[names.SAMPLES_PER_SECOND])
                                                   / 1e12, rel=1e-4)
    assert names.MFU not in m   # a CPU has no peak


def test_metrics_from_samples_steps_seconds_and_peak():
    t = perf.Throughput(None)
    t._start, t._end, t._samples, t._steps, t.flops_per_sample = 10.0, 12.0, 1000, 10, 3e9
    out = t.metrics(world_size=2)
    assert out[names.SAMPLES_PER_SECOND] == 1000.0 and out[names.STEPS_PER_SECOND] == 5.0
    assert out[names.TFLOPS] == pytest.approx(3.0) and names.MFU not in out
    t.peak = 12.0
    assert t.metrics(world_size=2)[names.MFU] == pytest.approx(0.25)


@pytest.mark.parametrize("device, precision, matmul, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", "highest", 989.5),     # the SXM part
    ("NVIDIA H100 80GB HBM3", "32-true", "high", 494.5),
    ("NVIDIA H100 80GB HBM3", "32-true", "highest", 67.0),
    ("NVIDIA H100 PCIe", "16-mixed", "highest", 756.5),
    ("NVIDIA H100 NVL", "bf16-true", "highest", 835.5),
    ("NVIDIA H200", "bf16-true", "highest", 989.5),
    ("NVIDIA H200 NVL", "32-true", "medium", 417.5),
    ("NVIDIA GH200 480GB", "bf16-mixed", "highest", 989.5),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", "highest", 312.0),
    ("NVIDIA A100 80GB PCIe", "32-true", "high", 156.0),
    ("NVIDIA A100-PCIE-40GB", "32-true", "highest", 19.5),
    ("NVIDIA L4", "bf16-mixed", "highest", 121.0),
    ("NVIDIA L40S", "bf16-mixed", "highest", 362.05),
    ("NVIDIA A10", "16-mixed", "highest", 125.0),
    ("Tesla V100-SXM2-16GB", "16-mixed", "highest", 125.0),
    ("Tesla V100-PCIE-32GB", "32-true", "high", 14.0),   # no TF32 before Ampere: fp32
    ("Tesla V100-SXM2-16GB", "bf16-mixed", "highest", None),   # no bf16 tensor cores
    ("Tesla T4", "16-mixed", "highest", 65.0),
    ("NVIDIA GeForce RTX 4090", "bf16-mixed", "highest", 165.2),
    ("NVIDIA A10G", "bf16-mixed", "highest", None),      # figures NVIDIA does not publish: unknown
    ("NVIDIA H100 80GB HBM3", "64-true", "highest", None),
    ("cpu", "32-true", "highest", None),
    (None, "bf16-mixed", "highest", None),
    ("", "bf16-mixed", "highest", None),
])
def test_peak_tflops_picks_the_precisions_column(device, precision, matmul, peak):
    assert peaks.peak_tflops(device, precision, matmul) == peak


def test_no_peak_on_a_cpu_device():
    assert perf.device_peak(torch.device("cpu"), "bf16-mixed", "high") is None
