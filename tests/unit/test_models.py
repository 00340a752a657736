"""Fast tests of models/: families, loss, metrics, optimisers and schedules (pytest tests/unit/test_models.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import models
from models.layers import make_activation
from models.metrics import make_metrics
from models.cnn import CNN, CNNModule
from models.mlp import MLP, MLPModule
from pipelines.config.model_schema import CNNConfig, MLPConfig
from pipelines.config.schema import CHOICES, RootConfig


@dataclass
class Spec:
    """Stand-in for datamodules.base.DataSpec."""
    task: str = "classification"
    num_classes: int = 3
    input_shape: tuple = (6,)
    class_names: list = field(default_factory=list)
    class_weights: Optional[list] = None
    feature_names: list = field(default_factory=list)
    target_name: str = "y"


def make_cfg(model=None, **overrides):
    """Root config with `model` (default: small MLP) and dotted-key overrides such as optim__lr=0.1."""
    cfg = OmegaConf.structured(RootConfig)
    cfg.model = OmegaConf.structured(model or MLPConfig(hidden=[16]))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def make_data(spec: Spec, n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *spec.input_shape, generator=g)
    if spec.task == "classification":
        y = torch.arange(n) % spec.num_classes  # every class present, so AUROC is defined
    else:
        y = torch.randn(n, generator=g)
    return x, y


def loader(x, y, batch_size: Optional[int] = None):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size or len(x))


def trainer(max_epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    kwargs = {"enable_checkpointing": False, **kwargs}
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                     logger=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks), **kwargs)


class LossTrace(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class StopAfter(L.Callback):
    """Ends fit after `epochs` epochs while max_epochs stays the real one: an interrupted run."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


class LRTrace(L.Callback):
    """Learning rate of param group 0 at the start of every epoch (or every step)."""

    def __init__(self, per_step: bool = False):
        self.per_step, self.lrs = per_step, []

    def on_train_epoch_start(self, trainer, pl_module):
        if not self.per_step:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.per_step:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------- build


def test_build_picks_family_and_rejects_unknown():
    assert isinstance(models.build(make_cfg(), Spec()), MLPModule)
    cnn_cfg = make_cfg(CNNConfig(channels=[4], head_hidden=[]))
    assert isinstance(models.build(cnn_cfg, Spec(input_shape=(1, 8, 8))), CNNModule)
    cfg = make_cfg()
    cfg.model = OmegaConf.create({"name": "nope"})
    with pytest.raises(ValueError, match="model.name='nope'.*mlp, cnn"):
        models.build(cfg, Spec())


def test_cnn_rejects_tabular_input():
    with pytest.raises(ValueError, match="model=cnn needs images"):
        models.build(make_cfg(CNNConfig()), Spec(input_shape=(6,)))


# ---------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("family, spec, model_cfg, lr, steps", [
    ("mlp", Spec(), MLPConfig(hidden=[64]), 3e-2, 60),
    ("mlp-regression", Spec(task="regression", num_classes=0), MLPConfig(hidden=[64]), 3e-2, 60),
    ("cnn", Spec(num_classes=4, input_shape=(1, 8, 8)),
     CNNConfig(channels=[8, 16], dropout=0.0, head_hidden=[32]), 1e-2, 40),
])
def test_family_overfits_32_samples(family, spec, model_cfg, lr, steps):
    torch.manual_seed(0)
    model = models.build(make_cfg(model_cfg, optim__lr=lr), spec)
    trace = LossTrace()
    trainer(steps, [trace]).fit(model, loader(*make_data(spec)))  # full batch: one step per epoch
    assert len(trace.losses) == steps
    assert trace.losses[-1] <= 0.1 * trace.losses[0], trace.losses[::10]


@pytest.mark.parametrize("activation", CHOICES["model.activation"])
@pytest.mark.parametrize("init", CHOICES["model.init"])
def test_every_activation_and_init_builds_and_runs(activation, init):
    torch.manual_seed(0)
    mlp = MLP(6, 3, [8, 8], activation=activation, norm="layer", dropout=0.1, init=init)
    cnn = CNN((3, 8, 8), 3, [4, 4], activation=activation, init=init)
    for net, x in ((mlp, torch.randn(5, 6)), (cnn, torch.randn(5, 3, 8, 8))):
        out = net(x)
        assert out.shape == (5, 3) and torch.isfinite(out).all()
        out.sum().backward()


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="model.activation='swish'"):
        make_activation("swish")


@pytest.mark.parametrize("task, k, outputs", [("classification", 4, 4), ("regression", 0, 1)])
def test_zero_hidden_layers_is_a_linear_model(task, k, outputs):
    model = models.build(make_cfg(MLPConfig(hidden=[])), Spec(task=task, num_classes=k, input_shape=(6,)))
    assert sum(p.numel() for p in model.parameters()) == 6 * outputs + outputs
    assert [type(m) for m in model.net.modules() if not isinstance(m, (MLP, nn.Sequential))] == [nn.Linear]
    assert model(torch.randn(5, 6)).shape == ((5, outputs) if task == "classification" else (5,))


@pytest.mark.parametrize("norm", CHOICES["model.norm"])
def test_mlp_flattens_images(norm):
    model = models.build(make_cfg(MLPConfig(hidden=[16], norm=norm)), Spec(num_classes=10, input_shape=(1, 8, 8)))
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("norm, pool", [("batch", "max"), ("layer", "avg"), ("none", "max")])
def test_cnn_accepts_image_sizes(shape, norm, pool):
    cfg = make_cfg(CNNConfig(channels=[4, 8, 8, 8], convs_per_block=2, norm=norm, pool=pool, head_hidden=[8]))
    model = models.build(cfg, Spec(num_classes=10, input_shape=shape))
    assert model(torch.randn(2, *shape)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------- loss


def test_loss_name_must_fit_the_task():
    with pytest.raises(ValueError, match="loss.name=mse"):
        models.build(make_cfg(loss__name="mse"), Spec())
    with pytest.raises(ValueError, match="loss.name=cross_entropy"):
        models.build(make_cfg(loss__name="cross_entropy"), Spec(task="regression", num_classes=0))
    with pytest.raises(ValueError, match="loss.name=bce"):
        models.build(make_cfg(loss__name="bce"), Spec(num_classes=3))


def test_class_weights_change_the_loss():
    x, y = make_data(Spec())
    plain = models.build(make_cfg(), Spec())
    weighted = models.build(make_cfg(), Spec(class_weights=[1.0, 5.0, 0.5]))
    weighted.load_state_dict(plain.state_dict())
    logits = plain(x)
    expected = nn.functional.cross_entropy(logits, y, weight=torch.tensor([1.0, 5.0, 0.5]))
    assert torch.allclose(weighted.criterion(logits, y), expected)
    assert not torch.allclose(plain.criterion(logits, y), expected)


@pytest.mark.parametrize("weights, smoothing", [(None, 0.0), ([1.0, 3.0], 0.0), (None, 0.1)])
def test_bce_matches_two_class_cross_entropy(weights, smoothing):
    spec = Spec(num_classes=2, class_weights=weights)
    bce = models.build(make_cfg(loss__name="bce", loss__label_smoothing=smoothing), spec).criterion
    ce = models.build(make_cfg(loss__label_smoothing=smoothing), spec).criterion
    logits, y = torch.randn(16, 2), torch.arange(16) % 2
    assert torch.allclose(bce(logits, y), ce(logits, y), atol=1e-6)


def test_regression_losses():
    spec = Spec(task="regression", num_classes=0)
    out, y = torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.0])
    assert torch.isclose(models.build(make_cfg(), spec).criterion(out, y), torch.tensor((0.25 + 9) / 2))
    huber = models.build(make_cfg(loss__name="huber", loss__huber_delta=1.0), spec).criterion
    assert torch.isclose(huber(out, y), torch.tensor((0.5 * 0.25 + (3 - 0.5)) / 2))


def test_l1_penalty_adds_its_weight_sum():
    spec = Spec(input_shape=(6,))
    x, y = make_data(spec)
    cfg = make_cfg(MLPConfig(hidden=[8], norm="batch"))
    plain = models.build(cfg, spec)
    cfg.optim.l1 = 0.01
    l1 = models.build(cfg, spec)
    l1.load_state_dict(plain.state_dict())
    weights = [plain.net.body[0].weight, plain.net.head.weight]  # no biases, no BatchNorm affine
    expected = 0.01 * sum(w.abs().sum() for w in weights)
    gap = l1.training_step((x, y), 0) - plain.training_step((x, y), 0)
    assert torch.isclose(gap, expected)


def test_weight_decay_skips_biases_and_norm_parameters():
    torch.manual_seed(0)
    cfg = make_cfg(MLPConfig(hidden=[8], norm="layer", activation="prelu"), optim__name="sgd",
                   optim__momentum=0.0, optim__lr=1.0, optim__weight_decay=0.5)
    model = models.build(cfg, Spec())
    opt = model.configure_optimizers()
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model.net.body[0].weight), id(model.net.head.weight)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only weight decay moves anything
    for n, p in model.named_parameters():
        factor = 0.5 if id(p) in decayed else 1.0
        assert torch.allclose(p, before[n] * factor), n


# ---------------------------------------------------------------------------------------------- metrics


CLS_METRICS = {"acc", "precision", "recall", "f1", "auroc", "log_loss", "loss"}
REG_METRICS = {"loss", "mse", "rmse", "mae", "r2"}


@pytest.mark.parametrize("spec, names", [
    (Spec(num_classes=3), CLS_METRICS),
    (Spec(num_classes=2), CLS_METRICS),
    (Spec(task="regression", num_classes=0), REG_METRICS),
])
def test_metric_names(spec, names):
    x, y = make_data(spec)
    model = models.build(make_cfg(), spec)
    t = trainer(2)
    t.fit(model, loader(x, y, 8), loader(x, y, 8))
    train = {"train/loss", "train/lr"} | ({"train/acc"} if spec.task == "classification" else set())
    assert set(t.callback_metrics) == train | {f"val/{n}" for n in names}
    t.test(model, loader(x, y, 8), verbose=False)
    assert {f"test/{n}" for n in names} <= set(t.callback_metrics)


def test_classification_metrics_match_sklearn():
    torch.manual_seed(0)
    for k in (2, 4):
        probs, y = torch.randn(40, k, dtype=torch.float64).softmax(-1), torch.arange(40) % k
        got = make_metrics(Spec(num_classes=k))(probs, y)
        auroc = roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr")
        assert math.isclose(got["auroc"], auroc, rel_tol=1e-5)
        assert math.isclose(got["log_loss"], sk_log_loss(y, probs), rel_tol=1e-5)
        assert math.isclose(got["acc"], (probs.argmax(1) == y).float().mean(), rel_tol=1e-6)


def test_regression_metrics_on_perfect_predictions():
    spec = Spec(task="regression", num_classes=0, input_shape=(3,))
    model = models.build(make_cfg(MLPConfig(hidden=[])), spec)
    with torch.no_grad():  # output = first feature
        model.net.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        model.net.head.bias.zero_()
    x = torch.randn(20, 3)
    t = trainer(1)
    t.test(model, loader(x, x[:, 0].clone(), 8), verbose=False)
    m = t.callback_metrics
    assert float(m["test/r2"]) == pytest.approx(1.0)
    assert float(m["test/mse"]) == pytest.approx(0.0) and float(m["test/rmse"]) == pytest.approx(0.0, abs=1e-6)


def test_predict_returns_probabilities_and_values():
    x, y = make_data(Spec())
    model = models.build(make_cfg(), Spec())
    probs = torch.cat(trainer(1).predict(model, loader(x, y, 8)))
    assert probs.shape == (32, 3) and torch.allclose(probs.sum(1), torch.ones(32))
    reg = models.build(make_cfg(), Spec(task="regression", num_classes=0))
    assert reg.predict_step(x, 0).shape == (32,)


# ---------------------------------------------------------------------------------------------- optimisation


@pytest.mark.parametrize("name", CHOICES["optim.name"])
def test_every_optimizer_trains(name):
    torch.manual_seed(0)
    spec = Spec()
    model = models.build(make_cfg(optim__name=name, optim__lr=0.01, optim__nesterov=name == "sgd"), spec)
    x, y = make_data(spec)
    trace = LossTrace()
    trainer(10, [trace]).fit(model, loader(x, y))
    assert trace.losses[-1] < trace.losses[0]


LR = 0.1
COS = [0.01 * LR + (LR - 0.01 * LR) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
SCHEDULES = {  # (sched.name, warmup_epochs) -> learning rate at the start of each of 6 epochs, / LR
    ("constant", 0): [1, 1, 1, 1, 1, 1],
    ("constant", 2): [0.01, 0.505, 1, 1, 1, 1],
    ("step", 0): [1, 1, 0.5, 0.5, 0.25, 0.25],
    ("step", 2): [0.01, 0.505, 1, 1, 0.5, 0.5],
    ("exponential", 0): [1, 0.5, 0.25, 0.125, 0.0625, 0.03125],
    ("exponential", 2): [0.01, 0.505, 1, 0.5, 0.25, 0.125],
    ("cosine", 0): [0.01 + 0.99 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)],
    ("cosine", 2): [0.01, 0.505] + [c / LR for c in COS],
    # monitor train/lr in mode max: the rate never rises again, so every epoch after the first is a plateau
    ("plateau", 0): [1, 1, 0.5, 0.25, 0.125, 0.0625],
    ("plateau", 2): [0.01, 0.505, 1, 1, 0.5, 0.25],
}


@pytest.mark.parametrize("name, warmup", list(SCHEDULES))
def test_schedule_follows_its_curve(name, warmup):
    cfg = make_cfg(optim__name="sgd", optim__lr=LR, sched__name=name, sched__warmup_epochs=warmup,
                   sched__step_size=2, sched__gamma=0.5, sched__min_lr=0.01 * LR, sched__factor=0.5,
                   sched__patience=0, monitor__metric="train/lr", monitor__mode="max", trainer__max_epochs=6)
    model = models.build(cfg, Spec())
    trace = LRTrace()
    trainer(6, [trace]).fit(model, loader(*make_data(Spec())))
    assert trace.lrs == pytest.approx([LR * f for f in SCHEDULES[(name, warmup)]], rel=1e-6)


@pytest.mark.parametrize("warmup, peak_step", [(0, 6), (2, 7)])
def test_onecycle_steps_per_batch(warmup, peak_step):
    cfg = make_cfg(optim__lr=LR, sched__name="onecycle", sched__warmup_epochs=warmup, trainer__max_epochs=6)
    model = models.build(cfg, Spec())
    trace = LRTrace(per_step=True)
    trainer(6, [trace]).fit(model, loader(*make_data(Spec()), batch_size=8))  # 4 steps per epoch
    lrs = trace.lrs
    assert len(lrs) == 24 and lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR, rel=1e-2) and lrs.index(max(lrs)) == peak_step
    assert lrs[-1] < LR / 1000


@pytest.mark.parametrize("name", ["cosine", "plateau", "onecycle"])
def test_resume_continues_the_schedule_exactly(tmp_path, name):
    cfg = make_cfg(optim__lr=LR, sched__name=name, sched__warmup_epochs=2, sched__patience=0,
                   monitor__metric="train/lr", monitor__mode="max", trainer__max_epochs=6)
    data = make_data(Spec())
    torch.manual_seed(0)
    straight = LRTrace(per_step=True)
    trainer(6, [straight]).fit(models.build(cfg, Spec()), loader(*data, batch_size=16))

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    torch.manual_seed(0)
    first = LRTrace(per_step=True)
    trainer(6, [first, StopAfter(3), ckpt], enable_checkpointing=True).fit(models.build(cfg, Spec()),
                                                                             loader(*data, batch_size=16))
    assert len(first.lrs) == 6
    resumed = LRTrace(per_step=True)
    model = models.build(cfg, Spec())
    trainer(6, [resumed]).fit(model, loader(*data, batch_size=16), ckpt_path=tmp_path / "last.ckpt")
    assert first.lrs + resumed.lrs == pytest.approx(straight.lrs, rel=1e-9)

    restored = models.load_checkpoint(tmp_path / "last.ckpt")  # cfg and spec come from the file alone
    assert isinstance(restored, MLPModule) and restored.cfg.sched.name == name
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["dlp_spec"]["input_shape"] == (6,)
