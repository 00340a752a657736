"""TPE over a finite space (pipelines.sweeps.search.DistinctConfigs around Ray's real OptunaSearch, no cluster needed):
no config is proposed twice, TPE still learns from every trial, and a saved searcher resumes without repeats."""
import json

from omegaconf import OmegaConf
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from pipelines.sweeps import spec as tune
from pipelines.sweeps.search import DistinctConfigs, finite_choices, make_searcher

SPACE = {"optim.lr": {"choice": [1e-3, 1e-2, 1e-1]}, "model.channels": {"choice": [[8, 16], [32, 64]]}}


def searcher(seed: int = 0, samples: int = 9) -> DistinctConfigs:
    sweep = tune.prepare(["experiment=digits_cnn", "tune=digits_asha", f"tune.num_samples={samples}", f"tune.seed={seed}"])
    search = make_searcher(sweep)
    assert isinstance(search, DistinctConfigs)
    assert search.set_search_properties("val/acc", "max", tune.tune_space(OmegaConf.create(SPACE), "optuna",
                                                                          ["model.channels"]))
    return search


def score(config: dict) -> float:    # a landscape TPE homes in on: one config best, so it keeps proposing it
    return 0.9 if config["optim.lr"] == 1e-2 and config["model.channels"] == "[32, 64]" else 0.5


def run(search: DistinctConfigs, start: int, stop: int) -> list:
    proposed = []
    for i in range(start, stop):
        config = search.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            proposed.append(config)
            break
        proposed.append(json.dumps(config, sort_keys=True))
        search.on_trial_result(f"t{i}", {"val/acc": score(config), "training_iteration": 1})
        search.on_trial_complete(f"t{i}", {"val/acc": score(config), "training_iteration": 1})
    return proposed


def test_every_config_of_a_finite_space_is_proposed_once_then_the_search_is_finished():
    proposed = run(searcher(), 0, 9)
    assert len(proposed) == 7 and proposed[-1] == Searcher.FINISHED        # 3 x 2 configs, then no more
    assert len(set(proposed[:-1])) == 6


def test_tpe_learns_from_every_trial_including_the_replacements():
    search = searcher()
    run(search, 0, 6)
    study = search.searcher._ot_study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and {t.value for t in complete} == {0.9, 0.5}
    withdrawn = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(json.dumps(t.params, sort_keys=True) in {json.dumps(c.params, sort_keys=True) for c in complete}
               for t in withdrawn)                                            # only repeats were withdrawn


def test_a_resumed_sweeps_searcher_does_not_repeat_what_it_proposed_before(tmp_path):
    """Saved and restored the way Tune checkpoints a sweep's search (SearchGenerator.save_to_dir /
    restore_from_dir, with the ConcurrencyLimiter that max_concurrent_trials adds)."""
    first = SearchGenerator(ConcurrencyLimiter(searcher(seed=3), max_concurrent=2))
    before = run(first.searcher.searcher, 0, 3)
    first.save_to_dir(str(tmp_path), session_str="sweep")
    resumed = SearchGenerator(ConcurrencyLimiter(searcher(seed=99), max_concurrent=2))
    resumed.restore_from_dir(str(tmp_path))
    after = run(resumed.searcher.searcher, 3, 9)
    assert after[-1] == Searcher.FINISHED and len(set(before) | set(after[:-1])) == 6


def test_only_spaces_of_choices_count_as_finite():
    assert finite_choices(tune.tune_space(OmegaConf.create(SPACE), "optuna", ["model.channels"])) == {
        "optim.lr": [1e-3, 1e-2, 1e-1], "model.channels": ["[8, 16]", "[32, 64]"]}
    mixed = OmegaConf.create({**SPACE, "model.dropout": {"uniform": [0.0, 0.5]}})
    assert finite_choices(tune.tune_space(mixed, "optuna", ["model.channels"])) is None
