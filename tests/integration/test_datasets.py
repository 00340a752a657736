"""A run records its train/val/test splits as MLflow dataset inputs (the UI's Dataset column): source, a digest
per split that a rebuild of the same data reproduces, the input tensor's schema, and row counts."""
import json

from mlflow import MlflowClient

from tests.conftest import dlp_in_process

DIGITS = ("experiment=digits_cnn", "trainer.progress_bar=false", "trainer.max_epochs=1")


def test_a_run_logs_each_split_as_a_dataset_input(store, capsys):
    import datamodules
    from pipelines.config.compose import compose

    proc = dlp_in_process(capsys, "train", *DIGITS)
    assert proc.returncode == 0, proc.stderr
    run_id = next(line.split()[2] for line in proc.stdout.splitlines() if line.strip().startswith("run id:"))
    inputs = MlflowClient(store).get_run(run_id).inputs.dataset_inputs
    found = {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags}) for i in inputs}
    assert sorted(found) == ["digits_cnn-test", "digits_cnn-train", "digits_cnn-val"]

    cfg = compose(["experiment=digits_cnn"])
    dm = datamodules.build(cfg.data, cfg.seed)
    digests, fp = dm.split_digests(), dm.fingerprint()
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        dataset, tags = found[f"digits_cnn-{split}"]
        assert tags["mlflow.data.context"] == context and tags["rows"] == str(fp[f"n_{split}"])
        assert dataset.digest == digests[split][:32]
        assert json.loads(dataset.source) == {"tags": {"dlp.source": "sklearn:digits"}}
        spec = json.loads(dataset.schema)["mlflow_colspec"][0]["tensor-spec"]
        assert spec == {"dtype": "float32", "shape": [-1, 1, 8, 8]}
    assert len({d.digest for d, _ in found.values()}) == 3
