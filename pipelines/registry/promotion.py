"""`dlp promote` and `dlp rollback`: `champion` moves to a challenger only if it beats the champion on the same
frozen test split, scored here and now; every decision is recorded on the challenger's version (tags and a
description line) and every champion change on the registered model's `dlp.champion_history`, so `rollback` can
step back and anyone can audit why a version serves. Aliases only: stages are deprecated in MLflow."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipelines.errors import UserError, first_line
from pipelines.registry import evaluation, versions
from pipelines.registry.lock import champion_lock
from pipelines.tracking import names

HISTORY_KEEP = 100                     # MLflow caps a tag value; a hundred versions is plenty of rollback


@dataclass
class Decision:
    """The outcome of one `promote`: what was compared, how, and whether `champion` moved."""
    name: str
    challenger: str                  # version
    champion: Optional[str]          # version holding `champion` at decision time (None: there was none)
    metric: str                      # e.g. "acc"; scored on the rebuilt test split
    higher_is_better: bool
    challenger_score: float
    champion_score: Optional[float]
    promoted: bool
    reason: str
    at: str
    user: str

    def line(self) -> str:
        vs = (f"{self.champion_score:.4f} (champion v{self.champion})" if self.champion is not None
              else "no champion")
        verdict = "PROMOTED" if self.promoted else "REFUSED"
        return (f"{verdict} {self.name} v{self.challenger}: test {self.metric} {self.challenger_score:.4f} vs {vs}"
                f" — {self.reason}")


def history(client, name: str) -> List[str]:
    """The versions that held `champion`, oldest first (the registered model's dlp.champion_history tag)."""
    raw = client.get_registered_model(name).tags.get(names.CHAMPION_HISTORY)
    try:
        return [str(v) for v in json.loads(raw)] if raw else []
    except ValueError:
        return []


def _set_champion(client, name: str, version: str, past: List[str]) -> None:
    client.set_registered_model_alias(name, names.CHAMPION, version)
    client.set_registered_model_tag(name, names.CHAMPION_HISTORY, json.dumps(past[-HISTORY_KEEP:]))


def _check_alias(client, name: str, version: str) -> None:
    """Detect (not prevent) a writer outside the lock that moved `champion` while we held it."""
    now = versions.version_by_alias(client, name, names.CHAMPION)
    if now is None or str(now.version) != str(version):
        raise UserError(f"promote: champion of '{name}' was moved to "
                        f"v{getattr(now, 'version', None)} by someone outside dlp's lock while v{version} "
                        f"was being promoted; re-run dlp promote {name}")


def _record(client, name: str, version: str, fields: Dict[str, str], line: str) -> None:
    """Write a decision onto a version: `dlp.<event>.*` tags (the latest) and a line in its description
    (all of them)."""
    for key, value in fields.items():
        client.set_model_version_tag(name, version, key, value)
    old = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=(old + "\n" if old else "") + line)


def _record_decision(client, d: Decision) -> None:
    p = names.PROMOTE_PREFIX
    fields = {names.PROMOTE_DECISION: "promoted" if d.promoted else "refused", p + "reason": d.reason,
              p + "metric": d.metric, p + "challenger_score": f"{d.challenger_score:.6g}",
              p + "champion_version": str(d.champion or ""),
              p + "champion_score": "" if d.champion_score is None else f"{d.champion_score:.6g}",
              p + "at": d.at, p + "by": d.user}
    _record(client, d.name, d.challenger, fields, f"{d.at} promote by {d.user}: {d.line()}")


def _refuse(client, name: str, version: str, reason: str) -> None:
    """A refusal that is the user's to fix (wrong data, incompatible or broken model): recorded, then raised."""
    at, user = versions.now(), versions.user()
    _record(client, name, version, {names.PROMOTE_DECISION: "refused", names.PROMOTE_PREFIX + "reason": reason,
                                    names.PROMOTE_PREFIX + "at": at, names.PROMOTE_PREFIX + "by": user},
            f"{at} promote by {user}: REFUSED {name} v{version}: {reason}")
    raise UserError(f"promote: {name} v{version} refused: {reason}")


def _load(name: str, version: str):
    """(pyfunc model, None), or (None, why it does not load): files that do not match their logged digests, or
    hold pickle data, do not load (model_trust.load_verified)."""
    from pipelines.tracking.model_trust import load_verified

    try:
        return load_verified(f"models:/{name}/{version}", "promote"), None
    except UserError as e:
        return None, str(e).removeprefix("promote: ")
    except Exception as e:
        return None, f"{type(e).__name__}: {first_line(e)[:200]}"


def _inputs(model) -> Optional[set]:
    schema = model.metadata.get_input_schema()
    return set(schema.input_names()) if schema is not None else None


def _score_or_refuse(client, name: str, version: str, model, split, metric: str) -> float:
    try:
        value = evaluation.score(model, split, metric)
    except UserError:
        raise
    except Exception as e:
        _refuse(client, name, version, f"does not predict on the test split ({type(e).__name__}: "
                                       f"{first_line(e)[:200]})")
    if not np.isfinite(value):
        _refuse(client, name, version, f"test {metric} is {value}")
    return value


def promote(name: str, metric: Optional[str] = None, min_delta: float = 0.0,
            version: Optional[str] = None) -> Decision:
    """Make the challenger (or `version`) champion if it beats the champion on the frozen test split.

    Checks, in order: both versions were trained on the same data (fingerprint), the test split rebuilt
    from the training config is that data, the challenger loads, takes the champion's input columns and
    predicts. Then both are scored on the raw test rows; `champion` moves only if the challenger is better
    by more than zero and at least `min_delta` (direction from the metric: lower is better for losses and
    errors). Equal scores keep the champion. Without a champion, a challenger that loads and predicts
    becomes it. The whole read-score-decide-move sequence runs under `champion_lock`.

    A worse challenger returns a Decision with promoted=False; the refusals that are the user's to fix
    (unknown model, no challenger, fingerprint mismatch, incompatible or broken model) raise UserError.
    Either way the decision is recorded on the challenger's version.
    """
    client = versions.client()
    candidate = (versions.version(client, name, version) if version
                 else versions.version_by_alias(client, name, names.CHALLENGER))
    if candidate is None:
        raise UserError(f"promote: model '{name}' has no '{names.CHALLENGER}' alias; dlp register runs:/<id>/model "
                        f"--name {name} first")
    challenger = str(candidate.version)
    with champion_lock(name):
        current = versions.version_by_alias(client, name, names.CHAMPION)
        if current is not None and str(current.version) == challenger:
            raise UserError(f"promote: {name} v{challenger} already is the champion")
        split = _frozen_split(client, name, candidate, current)
        metric_name, higher = evaluation.resolve_metric(split.task, split.monitor, metric)
        new_model, old_model = _models(client, name, challenger, current)
        new_score = _score_or_refuse(client, name, challenger, new_model, split, metric_name)
        old_score = evaluation.score(old_model, split, metric_name) if old_model is not None else None
        promoted, reason = _judge(new_score, old_score, higher, min_delta)
        decision = Decision(name, challenger, str(current.version) if current is not None else None, metric_name,
                            higher, new_score, old_score, promoted, reason, versions.now(), versions.user())
        if promoted:
            past = history(client, name)
            if current is not None and (not past or past[-1] != str(current.version)):
                past.append(str(current.version))  # the alias was set outside dlp: keep it rollback-able
            _set_champion(client, name, challenger, past + [challenger])
        _record_decision(client, decision)
        if promoted:
            _check_alias(client, name, challenger)
    return decision


def _frozen_split(client, name: str, candidate, current):
    """The challenger's test split, rebuilt and checked; refused when the champion trained on other data."""
    fp = evaluation.fingerprint(client, candidate.run_id)
    if current is not None:
        theirs = evaluation.fingerprint(client, current.run_id)
        if theirs != fp:
            diff = ", ".join(f"{k} {fp[k][:12]} vs {theirs[k][:12]}" for k in names.FINGERPRINT_KEYS
                             if fp[k] != theirs[k])
            _refuse(client, name, str(candidate.version), f"trained on other data than champion v{current.version} "
                                                          f"(dataset fingerprint differs: {diff})")
    return evaluation.rebuild_test_split(client, candidate.run_id, fp)


def _models(client, name: str, challenger: str, current) -> tuple:
    """(challenger, champion or None) loaded; the challenger refused if it does not load or takes other columns."""
    new_model, why = _load(name, challenger)
    if new_model is None:
        _refuse(client, name, challenger, f"does not load ({why})")
    if current is None:
        return new_model, None
    old_model, why = _load(name, str(current.version))
    if old_model is None:  # a champion that stopped loading is not the challenger's fault: stop, move nothing
        raise UserError(f"promote: champion {name} v{current.version} does not load ({why}); "
                        f"fix it or move the alias by hand")
    if _inputs(old_model) is not None and _inputs(new_model) != _inputs(old_model):
        missing = sorted(_inputs(old_model) - (_inputs(new_model) or set()))
        extra = sorted((_inputs(new_model) or set()) - _inputs(old_model))
        _refuse(client, name, challenger, f"input columns differ from champion v{current.version} "
                                          f"(missing {missing[:5]}, extra {extra[:5]})")
    return new_model, old_model


def _judge(new: float, old: Optional[float], higher: bool, min_delta: float) -> Tuple[bool, str]:
    if old is None:
        return True, "no champion yet; the challenger loads and predicts"
    gain = (new - old) if higher else (old - new)
    if gain > 0 and gain >= min_delta:
        return True, f"better by {gain:.4g} (min delta {min_delta:g})"
    if gain > 0:
        return False, f"better by only {gain:.4g} < min delta {min_delta:g}"
    return False, "not better than the champion" + (f" (worse by {-gain:.4g})" if gain < 0 else " (equal)")


def rollback(name: str) -> Tuple[str, str]:
    """Move `champion` back to the version that held it before the current one; returns (from, to).

    The step back is recorded like a promotion (tags `dlp.rollback.*` and a description line on the
    version leaving) and popped off `dlp.champion_history`, so a second rollback goes one further back.
    """
    client = versions.client()
    versions.registered(client, name)
    with champion_lock(name):
        current = versions.version_by_alias(client, name, names.CHAMPION)
        if current is None:
            raise UserError(f"rollback: model '{name}' has no champion to roll back")
        past = history(client, name)
        if not past or past[-1] != str(current.version):
            past.append(str(current.version))
        if len(past) < 2:
            raise UserError(f"rollback: '{name}' v{current.version} is the only champion it has had; "
                            f"nothing to roll back to")
        leaving, back = past[-1], past[-2]
        _set_champion(client, name, back, past[:-1])
        at, user = versions.now(), versions.user()
        r = names.ROLLBACK_PREFIX
        _record(client, name, leaving, {r + "at": at, r + "by": user, r + "to": back},
                f"{at} rollback by {user}: champion {name} v{leaving} -> v{back}")
        _check_alias(client, name, back)
    return leaving, back
