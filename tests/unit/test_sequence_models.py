"""Fast tests of the sequence families: rnn_classifier, forecaster, transformer and pretrained embeddings
(pytest tests/unit/test_sequence_models.py).
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

import models
from datamodules.base import DataSpec
from models.embeddings import load_pretrained
from models.forecaster import Forecaster, ForecasterModule
from models.rnn_classifier import RNNClassifier, RNNClassifierModule
from models.transformer import TransformerEncoderNet, TransformerModule
from models.errors import ModelError as UserError
from pipelines.config.model_schema import ForecasterConfig, RNNClassifierConfig, TransformerConfig
from pipelines.config.schema import CHOICES, RootConfig

torch.set_num_threads(1)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
VOCAB = ["<pad>", "<unk>"] + [f"w{i}" for i in range(28)]


def Spec(**kw) -> DataSpec:
    """The real DataSpec, defaulting to 2-class token ids of length 10 over VOCAB's size."""
    return DataSpec(**{"task": "classification", "num_classes": 2, "input_shape": (10,), "target_name": "y",
                       "vocab_size": len(VOCAB), **kw})


TEXT = Spec()
SERIES = Spec(task="regression", num_classes=0, input_shape=(12, 2), vocab_size=0, lookback=12, horizon=4)


def make_cfg(model, **overrides):
    cfg = OmegaConf.structured(RootConfig)
    cfg.model = OmegaConf.structured(model)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def tokens(n: int, length: int = 10, seed: int = 0) -> torch.Tensor:
    """(n, length) right-padded ids, real lengths 1..length, the longest row filling the batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, len(VOCAB), (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    lengths[0] = length
    return x.masked_fill(torch.arange(length) >= lengths[:, None], 0)


def windows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sine windows: (n, 12, 2) inputs (target, cos phase) and the next 4 target values."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(2 * n + 16, dtype=torch.float32) * 0.4
    series = torch.sin(t) + 0.1 * torch.randn(len(t), generator=g)
    starts = torch.arange(n) * 2
    steps = starts[:, None] + torch.arange(16)
    x = torch.stack([series[steps[:, :12]], torch.cos(t[steps[:, :12]])], -1)
    return x, series[steps[:, 12:]]


def loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=len(x))


class LossTrace(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def trainer(max_epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    kwargs = {"enable_checkpointing": False, **kwargs}
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                     logger=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks), **kwargs)


def pad_more(x: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(x.shape[0], extra)], 1)


def random_biases(net: RNNClassifier) -> RNNClassifier:
    """Freshly initialised RNNs keep a zero state over zero (pad) inputs, which would hide pads read first."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "rnns" in name and "bias" in name:
                p.normal_(0.0, 0.5)
    return net


# ---------------------------------------------------------------------------------------------- build


@pytest.mark.parametrize("model_cfg, spec, module, out", [
    (RNNClassifierConfig(embedding_dim=8, hidden_size=8), Spec(num_classes=3), RNNClassifierModule, (5, 3)),
    (ForecasterConfig(hidden_size=8), SERIES, ForecasterModule, (5, 4)),
    (TransformerConfig(d_model=8, nhead=2, dim_feedforward=16), Spec(num_classes=3), TransformerModule, (5, 3)),
    (TransformerConfig(d_model=8, nhead=2, dim_feedforward=16), SERIES, TransformerModule, (5, 4)),
])
def test_build_by_name_and_output_shape(model_cfg, spec, module, out):
    model = models.build(make_cfg(model_cfg), spec)
    assert isinstance(model, module)
    x = tokens(5) if spec.vocab_size else windows(5)[0]
    assert model(x).shape == out


def test_family_configs_list_the_schema_defaults():
    for name, schema in (("rnn_classifier", RNNClassifierConfig), ("forecaster", ForecasterConfig),
                         ("transformer", TransformerConfig)):
        path = CONF_DIR / f"{name}.yaml"
        assert path.read_text().startswith("# "), path
        assert "dlp train model=" + name in path.read_text().splitlines()[0]
        assert OmegaConf.to_container(OmegaConf.load(path)) == OmegaConf.to_container(OmegaConf.structured(schema))


@pytest.mark.parametrize("cell", CHOICES["model.cell"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_every_rnn_option_builds_and_runs(cell, pooling, bidirectional):
    net = RNNClassifier(len(VOCAB), 3, 0, cell, 8, 6, 2, bidirectional, 0.2, pooling, "xavier")
    out = net(tokens(4))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("cell", CHOICES["model.cell"])
@pytest.mark.parametrize("residual, head_hidden", [(True, []), (False, [8])])
def test_every_forecaster_option_builds_and_runs(cell, residual, head_hidden):
    net = Forecaster(2, 4, cell, 8, 2, 0.1, head_hidden, residual, "kaiming")
    out = net(windows(4)[0])
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    out.sum().backward()
    one = Forecaster(1, 3, cell, 8, 1)(torch.randn(2, 5, 1))   # univariate works too
    assert one.shape == (2, 3)


@pytest.mark.parametrize("positional", CHOICES["model.positional"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
@pytest.mark.parametrize("norm_first, activation", [(True, "gelu"), (False, "relu")])
def test_every_transformer_option_builds_and_runs(positional, pooling, norm_first, activation):
    for shape, vocab, x in (((10,), len(VOCAB), tokens(4)), ((12, 2), 0, windows(4)[0])):
        net = TransformerEncoderNet(shape, 3, vocab, 0, 8, 2, 1, 16, 0.1, activation, pooling, positional,
                                    16, norm_first, True, "xavier")
        out = net(x)
        assert out.shape == (4, 3) and torch.isfinite(out).all()
        out.sum().backward()


def test_all_pad_rows_give_finite_logits():
    x = tokens(3)
    x[1] = 0
    for net in (RNNClassifier(len(VOCAB), 2, pooling="max"), RNNClassifier(len(VOCAB), 2, pooling="last"),
                TransformerEncoderNet((10,), 2, len(VOCAB), pooling="mean"),
                TransformerEncoderNet((10,), 2, len(VOCAB), pooling="last")):
        assert torch.isfinite(net.eval()(x)).all()


def test_transformer_rejects_sequences_longer_than_max_length():
    cfg = make_cfg(TransformerConfig(d_model=8, nhead=2, max_length=10))
    models.build(cfg, Spec(input_shape=(9,)))   # 9 tokens + CLS fit
    with pytest.raises(UserError, match=r"model.max_length=10 .*set model.max_length=11"):
        models.build(cfg, Spec(input_shape=(10,)))
    cfg.model.pooling = "mean"
    models.build(cfg, Spec(input_shape=(10,)))


def test_rnn_init_is_orthogonal_with_forget_bias_one():
    net = RNNClassifier(len(VOCAB), 2, cell="lstm", embedding_dim=8, hidden_size=6)
    rnn = net.backward_rnns[0]
    for gate in rnn.weight_hh_l0.split(6, 0):
        assert torch.allclose(gate @ gate.T, torch.eye(6), atol=1e-5)
    total = rnn.bias_ih_l0 + rnn.bias_hh_l0
    assert torch.equal(total, torch.tensor([0.0] * 6 + [1.0] * 6 + [0.0] * 12))


# ---------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("cell", CHOICES["model.cell"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_logits_ignore_extra_padding(cell, bidirectional):
    torch.manual_seed(0)
    x = tokens(6)
    for pooling in ("last", "mean", "max"):
        net = random_biases(RNNClassifier(len(VOCAB), 3, 0, cell, 8, 8, 2, bidirectional, 0.3, pooling)).eval()
        assert torch.allclose(net(x), net(pad_more(x, 5)), atol=1e-6), pooling


def test_backward_direction_reads_the_last_real_token_first():
    torch.manual_seed(0)
    net = random_biases(RNNClassifier(len(VOCAB), 2, 0, "gru", 8, 6, 1, True, 0.0, "last")).eval()
    x = tokens(4)
    pooled = []
    net.head.register_forward_hook(lambda m, inputs, out: pooled.append(inputs[0]))
    net(x)
    for row, got in zip(x, pooled[0]):
        e = net.embedding(row[row != 0])[None]   # the real tokens alone, no padding at all
        forward = net.forward_rnns[0](e)[0][0, -1]
        backward = net.backward_rnns[0](e.flip(1))[0][0, -1]
        assert torch.allclose(got, torch.cat([forward, backward]), atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_transformer_logits_ignore_extra_padding(pooling):
    torch.manual_seed(0)
    net = TransformerEncoderNet((16,), 3, len(VOCAB), 0, 16, 2, 2, 32, 0.1, "gelu", pooling).eval()
    x = tokens(6)
    with torch.no_grad():   # eval + no_grad takes PyTorch's fused fast path, the one serving predictions
        assert torch.allclose(net(x), net(pad_more(x, 6)), atol=1e-5)
    assert torch.allclose(net(x), net(pad_more(x, 6)), atol=1e-5)


# ---------------------------------------------------------------------------------------------- export


EXPORTS = {
    "rnn-lstm-bi": (lambda: RNNClassifier(len(VOCAB), 3, 0, "lstm", 8, 8, 1, True, 0.1, "last"), "text"),
    "rnn-gru-bi": (lambda: RNNClassifier(len(VOCAB), 3, 0, "gru", 8, 8, 2, True, 0.1, "max"), "text"),
    "forecaster": (lambda: Forecaster(2, 4, "lstm", 8, 2, 0.1, [8], True), "series"),
    "transformer-cls": (lambda: TransformerEncoderNet((10,), 3, len(VOCAB), 0, 8, 2, 1, 16, pooling="cls"), "text"),
    "transformer-mean": (lambda: TransformerEncoderNet((10,), 3, len(VOCAB), 0, 8, 2, 1, 16, pooling="mean",
                                                       positional="learned"), "text"),
    "transformer-series": (lambda: TransformerEncoderNet((12, 2), 4, 0, 0, 8, 2, 1, 16, pooling="last",
                                                         residual=True), "series"),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_with_dynamic_batch_matches_eager(name):
    """As pipelines.tracking.model.log_model exports: batch dynamic, sequence length fixed by the example."""
    torch.manual_seed(0)
    build, kind = EXPORTS[name]
    net = build().eval()
    batch = (lambda n: tokens(n, seed=n)) if kind == "text" else (lambda n: windows(n, seed=n)[0])
    with warnings.catch_warnings():   # nn.LSTM/GRU re-assign _flat_weights while tracing: harmless
        warnings.simplefilter("ignore", UserWarning)
        program = torch.export.export(net, (batch(4),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    exported = program.module()
    for n in (3, 7):
        x = batch(n)
        with torch.no_grad():
            assert torch.allclose(exported(x), net(x), atol=1e-5), n


# ---------------------------------------------------------------------------------------------- training


def text_data(n: int = 16):
    x = tokens(n, seed=1)
    return x, (torch.arange(n) % 2)[torch.randperm(n, generator=torch.Generator().manual_seed(2))]


@pytest.mark.parametrize("model_cfg, spec, lr, steps", [
    (RNNClassifierConfig(embedding_dim=16, hidden_size=16, dropout=0.0), TEXT, 2e-2, 40),
    (RNNClassifierConfig(cell="gru", embedding_dim=16, hidden_size=16, dropout=0.0, pooling="last"), TEXT, 2e-2, 40),
    (TransformerConfig(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.0), TEXT, 1e-2, 40),
    (ForecasterConfig(hidden_size=16, num_layers=1, dropout=0.0, residual=False), SERIES, 2e-2, 60),
    (TransformerConfig(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.0, pooling="last",
                       residual=False), SERIES, 1e-2, 60),
])
def test_family_overfits_a_tiny_batch(model_cfg, spec, lr, steps):
    torch.manual_seed(0)
    model = models.build(make_cfg(model_cfg, optim__lr=lr), spec)
    data = text_data() if spec.vocab_size else windows(24)
    trace = LossTrace()
    trainer(steps, [trace]).fit(model, loader(*data))   # full batch: one step per epoch
    assert trace.losses[-1] <= 0.1 * trace.losses[0], trace.losses[::10]


def test_forecaster_residual_predicts_the_change():
    net = Forecaster(2, 4, residual=True)
    for p in net.head.parameters():
        torch.nn.init.zeros_(p)
    x = windows(3)[0]
    assert torch.equal(net(x), x[:, -1, :1].expand(-1, 4))


# ---------------------------------------------------------------------------------------------- embeddings


def glove(tmp_path: Path, lines: list[str], name: str = "vectors.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_load_pretrained_copies_found_rows(tmp_path):
    vocab = ["<pad>", "<unk>", "good", "Bad", "movie", "absent"]
    path = glove(tmp_path, ["6 3", "good 1 2 3", "bad 4 5 6", "movie 7 8 9", "<pad> 9 9 9", "other 1 1 1"])
    init = torch.full((6, 3), -1.0)
    weights, found = load_pretrained(path, vocab, 3, init)
    assert found == 4   # good, Bad (lowercase fallback), movie, <pad>
    assert weights[2].tolist() == [1, 2, 3] and weights[3].tolist() == [4, 5, 6] and weights[4].tolist() == [7, 8, 9]
    assert weights[0].tolist() == [0, 0, 0]   # <pad> stays zero
    assert weights[1].tolist() == weights[5].tolist() == [-1, -1, -1]   # not in the file: init kept
    assert init[2].tolist() == [-1, -1, -1]   # the caller's tensor is not modified


def test_exact_case_wins_over_lowercase_fallback(tmp_path):
    path = glove(tmp_path, ["apple 1 1", "Apple 2 2"])
    weights, found = load_pretrained(path, ["<pad>", "Apple", "apple"], 2)
    assert found == 2 and weights[1].tolist() == [2, 2] and weights[2].tolist() == [1, 1]


@pytest.mark.parametrize("config, dim_key", [
    (RNNClassifierConfig(embedding_dim=3, hidden_size=4), "model.embedding_dim"),
    (TransformerConfig(d_model=4, nhead=2), "model.d_model"),
])
def test_pretrained_embedding_errors_are_one_line(tmp_path, config, dim_key):
    dim = 3 if dim_key == "model.embedding_dim" else 4
    spec = Spec(vocab=VOCAB)
    vec = " ".join(["0.5"] * dim)
    cases = [
        (str(tmp_path / "missing.txt"), spec, "is not a file"),
        (glove(tmp_path, ["w1 " + " ".join(["1"] * (dim + 1))], "wide.txt"), spec,
         f"{dim + 1}-dimensional vectors but {dim_key}={dim}; set {dim_key}={dim + 1}"),
        (glove(tmp_path, [f"w1 {vec}"], "ok.txt"), Spec(vocab=None), "needs the data's vocabulary"),
        (glove(tmp_path, [f"zebra {vec}"], "none.txt"), spec, "none of the 30 vocabulary tokens"),
    ]
    for path, case_spec, needle in cases:
        with pytest.raises(UserError, match="model.embedding_path") as err:
            models.build(make_cfg(replace(config, embedding_path=path)), case_spec)
        assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config, attr", [
    (RNNClassifierConfig(embedding_dim=3, hidden_size=4), "embedding"),
    (TransformerConfig(d_model=3, nhead=1), "embed"),
])
@pytest.mark.parametrize("freeze", [True, False])
def test_build_loads_and_freezes_pretrained_vectors(tmp_path, config, attr, freeze, caplog):
    config = replace(config, embedding_path=glove(tmp_path, ["w0 1 2 3", "W1 4 5 6"]), freeze_embedding=freeze)
    with caplog.at_level("INFO", logger="models.embeddings"):
        model = models.build(make_cfg(config), Spec(vocab=VOCAB))
    weight = getattr(model.net, attr).weight
    assert weight[2].tolist() == [1, 2, 3] and weight[3].tolist() == [4, 5, 6]
    assert weight.requires_grad is not freeze
    assert all(id(p) != id(weight) for group in model.decay_split() for p in group) is freeze
    assert "2 of 30 vocabulary tokens" in caplog.text


def test_checkpoint_rebuild_needs_no_embedding_file(tmp_path):
    """models.load_checkpoint clears model.embedding_path: the trained vectors come from the state dict."""
    torch.manual_seed(0)
    vectors = Path(glove(tmp_path, ["w0 1 2 3 4 5 6 7 8"]))
    cfg = make_cfg(RNNClassifierConfig(embedding_dim=8, hidden_size=8, embedding_path=str(vectors)))
    spec = Spec(vocab=VOCAB)
    model = models.build(cfg, spec)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(1, [ckpt], enable_checkpointing=True).fit(model, loader(*text_data()))
    vectors.unlink()

    x = tokens(5)
    restored = models.load_checkpoint(tmp_path / "last.ckpt")
    assert isinstance(restored, RNNClassifierModule) and restored.cfg.model.embedding_path is None
    assert torch.equal(restored(x), model.eval()(x))

    again = models.build(make_cfg(RNNClassifierConfig(embedding_dim=8, hidden_size=8)), spec)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.eval()(x), model(x))
