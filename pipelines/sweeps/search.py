"""The search algorithm and the scheduler of a sweep, and a TPE search over a finite space that never trains the
same config twice.

Over a space of choices only, Optuna's TPE proposes configs it has already tried: once it models one
region as good, the most likely candidate it draws there is the config it already has. dlpipe's training
is seeded, so a repeat costs its epochs and teaches nothing -- in a 12-trial sweep of the 30-config digits
space, TPE alone tries about 10 distinct configs (benchmarks/tune_sim.py). `DistinctConfigs` wraps Ray's
OptunaSearch: a repeated proposal is withdrawn (told FAILED, which TPE ignores) and replaced by the untried
config nearest to it -- fewest steps along the ordered choice lists, ties broken by the sweep's seed --
entered into the same Optuna study, so TPE learns from its result like any other. Once every config has been
tried the search is finished, whatever num_samples says.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import random
from typing import Any, Dict, List, Optional

from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical

MAX_CONFIGS = 100_000      # beyond this many combinations, enumerating the untried ones costs more than a repeat


def finite_choices(space: Dict[str, Any]) -> Optional[Dict[str, List[Any]]]:
    """Each key's ordered choices when every key of a Ray Tune param space is a small tune.choice, else None."""
    if not space or not all(isinstance(domain, Categorical) for domain in space.values()):
        return None
    choices = {key: list(domain.categories) for key, domain in space.items()}
    return choices if math.prod(len(values) for values in choices.values()) <= MAX_CONFIGS else None


class DistinctConfigs(Searcher):
    """An OptunaSearch that proposes each config of a finite choice space at most once (module docstring)."""

    def __init__(self, searcher: Searcher, seed: int = 0):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.choices: Optional[Dict[str, List[Any]]] = None
        self.tried: set = set()
        self.inner: Dict[str, str] = {}          # Tune's trial id -> the id the wrapped searcher knows it by
        self.rng = random.Random(seed)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: Dict, **spec) -> bool:
        if not self.searcher.set_search_properties(metric, mode, config, **spec):
            return False
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        self.choices = finite_choices(config)
        return True

    def suggest(self, trial_id: str) -> Optional[Dict]:
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict) or self.choices is None:    # None (wait), FINISHED, or not a finite space
            return config
        inner = trial_id
        if self._key(config) in self.tried:
            self.searcher.on_trial_complete(trial_id, error=True)     # withdrawn: TPE ignores failed trials
            untried = self._nearest_untried(config)
            if untried is None:
                return Searcher.FINISHED
            # OptunaSearch keeps its study private; enqueue_trial is how Optuna takes a given config
            self.searcher._ot_study.enqueue_trial(untried)
            inner = f"{trial_id}_distinct"
            config = self.searcher.suggest(inner)
        self.tried.add(self._key(config))
        self.inner[trial_id] = inner
        return config

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        self.searcher.on_trial_result(self.inner.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(self.inner.get(trial_id, trial_id), result=result, error=error)

    # Tune checkpoints a wrapper (anything with a `.searcher`) through get_state/set_state and the searcher it
    # wraps through save/restore, as for its own ConcurrencyLimiter
    def get_state(self) -> Dict:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: Dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    @staticmethod
    def _key(config: Dict) -> str:
        return json.dumps(config, sort_keys=True, default=str)

    def _nearest_untried(self, config: Dict) -> Optional[Dict]:
        keys = list(self.choices)
        at = {k: self.choices[k].index(config[k]) for k in keys}
        best, best_distance = [], None
        for combo in itertools.product(*(range(len(self.choices[k])) for k in keys)):
            candidate = {k: self.choices[k][i] for k, i in zip(keys, combo)}
            if self._key(candidate) in self.tried:
                continue
            distance = sum(abs(i - at[k]) for k, i in zip(keys, combo))
            if best_distance is None or distance < best_distance:
                best, best_distance = [candidate], distance
            elif distance == best_distance:
                best.append(candidate)
        return self.rng.choice(best) if best else None


def make_searcher(sweep, concurrent: Optional[int] = None):
    """The search algorithm of a sweep (spec.Sweep): Optuna TPE (seeded, repeats withdrawn) or Tune's grid/random
    generator, `concurrent` trials at a time (default: tune.max_concurrent_trials, else 2)."""
    spec = sweep.spec
    concurrent = concurrent or spec.max_concurrent_trials or 2
    if spec.search != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a SearchGenerator, not a Searcher: Tune ignores TuneConfig.max_concurrent_trials for it (with a warning)
        # and would start every grid point's trial at once, so the generator itself holds the limit
        return BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # TPE models the good and bad trials once a few exist; Optuna's default of 10 random ones first
    # would leave a small sweep purely random
    startup = max(2, min(10, spec.num_samples // 3))
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup))
    # over a space of choices only, TPE re-proposes configs it has tried; seeded training makes a repeat pure waste
    return DistinctConfigs(searcher, seed=spec.seed)


def make_scheduler(sweep):
    """FIFO, ASHA or HyperBand, with every rung strictly before the last epoch and no stop *at* max_t: a trial that
    trained every epoch ends on its own, after testing and logging its model, instead of being killed at the finish."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    spec, last = sweep.spec, max(1, sweep.cfg.trainer.max_epochs - 1)
    if spec.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=last, grace_period=min(spec.grace_period, last),
                             reduction_factor=spec.reduction_factor, stop_last_trials=False)
    if spec.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=last, reduction_factor=spec.reduction_factor,
                                  stop_last_trials=False)
    return FIFOScheduler()
