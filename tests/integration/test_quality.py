"""The main job reaches its quality target: the digits CNN preset, as shipped, on CPU."""
from pipelines.config.compose import compose
from pipelines.training.fit import fit


def test_digits_cnn_preset_reaches_98_percent(tmp_path):
    cfg = compose(["experiment=digits_cnn", "trainer.progress_bar=false", "trainer.threads=1", f"output_dir={tmp_path}"])
    result = fit(cfg, run_id=None)
    assert result.epochs == cfg.trainer.max_epochs   # the preset's whole cosine schedule, no early stop
    assert result.test_metrics["test/acc"] >= 0.98, result.test_metrics
