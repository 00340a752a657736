"""The steps of `dlp pipeline`: each returns (its run id, its outputs), which later steps take as inputs.

Every step receives the plan (plan.Pipeline), the experiment, the tags that nest its run under the pipeline run,
its parameters from conf/pipeline.yaml and its upstream steps' outputs.
"""
from __future__ import annotations

from typing import Callable, Dict

from omegaconf import OmegaConf

from pipelines.errors import UserError
from pipelines.tracking import names, runs


def _in_step_run(client, experiment_id: str, tags: dict, name: str, body: Callable[[str], dict]):
    """Run `body(run_id)` in a fresh step run that ends FINISHED (reusable only once the runner has tagged its
    outputs), KILLED on Ctrl-C or FAILED."""
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    with runs.ending_run(run_id):
        outputs = body(run_id)
    return run_id, outputs


def step_prepare(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    import datamodules

    def body(run_id):
        dm = datamodules.build(p.cfg.data, p.cfg.seed)
        dm.setup("fit")
        fp = {k: str(v) for k, v in dm.fingerprint().items()}
        client.log_dict(run_id, fp, names.FINGERPRINT)
        runs.set_tags(client, run_id, names.data_tags(fp))
        return {"data_hash": fp["hash"], "n_train": int(fp["n_train"]), "n_test": int(fp["n_test"])}
    return _in_step_run(client, experiment_id, tags, "prepare", body)


def step_train(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.config.compose import validate
    from pipelines.training.driver import train

    plain = OmegaConf.to_container(p.cfg, resolve=True)
    plain["mlflow"]["registered_model_name"] = None     # the register step does it
    plain["mlflow"]["log_model"] = True                 # evaluate and register need the model
    plain["mlflow"]["experiment_name"] = client.get_experiment(experiment_id).name
    out = train(validate(OmegaConf.create(plain)), run_tags=tags)
    return out.run_id, {"run_id": out.run_id, **names.headline(out.fit.test_metrics)}


def step_tune(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.sweeps import spec, tuner

    sweep = spec.prepare([*p.tune_args, *p.overrides,
                          f"mlflow.experiment_name={client.get_experiment(experiment_id).name}"])
    result = tuner.run(sweep, run_tags=tags)
    if result.best is None:
        raise UserError("pipeline: the sweep finished with no completed trial to carry on with")
    version = result.challenger_version
    return result.run_id, {"run_id": result.best.run_id, "sweep_run_id": result.run_id,
                           **({"version": version} if version else {})}


def step_evaluate(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.registry.evaluation import evaluate

    run_id = upstream["train"]["run_id"]

    def body(step_run):
        out = evaluate(names.run_model_uri(run_id), params.get("metric"))
        runs.log_metrics(client, step_run, {names.EVAL_PREFIX + out["metric"]: out["value"]})
        return {"metric": out["metric"], "value": out["value"], "model_run_id": run_id}
    return _in_step_run(client, experiment_id, tags, "evaluate", body)


def step_register(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.registry import versions

    name = params.get("name") or p.cfg.mlflow.registered_model_name or p.cfg.name

    def body(step_run):
        version = upstream["train"].get("version")   # a sweep registered its best trial already
        if version is None:
            version, _ = versions.register(names.run_model_uri(upstream["train"]["run_id"]), name)
        return {"model": name, "version": str(version)}
    return _in_step_run(client, experiment_id, tags, "register", body)


def step_promote(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.registry import promotion, versions

    reg = upstream["register"]

    def body(step_run):
        current = versions.version_by_alias(versions.client(), reg["model"], names.CHAMPION)
        if current is not None and str(current.version) == str(reg["version"]):
            # a re-run with other promote settings, after this version won: nothing to decide again
            client.set_tag(step_run, names.STEP_DECISION, f"{reg['model']} v{reg['version']} already is the champion")
            return {"model": reg["model"], "version": reg["version"], "promoted": False, "champion": reg["version"]}
        decision = promotion.promote(reg["model"], metric=params.get("metric"),
                                     min_delta=float(params.get("min_delta") or 0.0), version=reg["version"])
        client.set_tag(step_run, names.STEP_DECISION, decision.line()[:5000])
        return {"model": reg["model"], "version": reg["version"], "promoted": decision.promoted,
                "champion": decision.challenger if decision.promoted else decision.champion}
    return _in_step_run(client, experiment_id, tags, "promote", body)


def step_train_or_tune(client, p, experiment_id: str, tags: dict, params: dict, upstream: dict):
    return (step_tune if p.tune_args else step_train)(client, p, experiment_id, tags, params, upstream)


STEPS: Dict[str, Callable] = {"prepare": step_prepare, "train": step_train_or_tune, "evaluate": step_evaluate,
                              "register": step_register, "promote": step_promote}
