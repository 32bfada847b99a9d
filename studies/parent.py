"""A study's MLflow experiment and parent run, recorded exactly once however many workers join.

The worker whose ``create_study`` succeeds records them (:meth:`StudyParent.record`); the others
wait for the record (:meth:`StudyParent.wait`) and, when the creator died before it, elect one of
themselves through numbered claims in the study storage.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from paramcrop import sinks
from studies.conventions import describe_study
from studies.spec import StudySpec
from studies.storage import settled
from studies.tracking import call, get_or_create_experiment, source_tags

PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
SPEC_ATTR = "spec"
OVERRIDES_ATTR = "overrides"  # the study's `study run --set` overrides: part of its identity, with the spec


class StudyParent:
    """The experiment and parent run of ``spec``'s study in ``client``'s store; ``overrides``: the
    command's ``--set`` values (stored key-sorted), ``runs_root``: where ``<study>/study.yaml`` is written."""

    def __init__(self, spec: StudySpec, client, storage, runs_root: Path, overrides: dict[str, Any],
                 console: Console) -> None:
        self.spec, self.client, self.storage, self.console = spec, client, storage, console
        self.runs_root = Path(runs_root)
        self.overrides = dict(sorted(overrides.items()))
        self.config = spec.base_config().with_overrides(overrides)  # what every trial starts from

    def check_same(self, study: optuna.Study) -> None:
        """``ValueError`` unless the existing ``study`` was run with this spec and these ``--set`` overrides."""
        spec = self.spec
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is not None and StudySpec.identity(stored) != StudySpec.identity(spec.to_yaml()):
            raise ValueError(f"study {spec.name!r} already exists in this storage with a different spec; "
                             f"give a new --name, or run the same spec to resume it")
        stored_sets = study.user_attrs.get(OVERRIDES_ATTR, {}) if stored is not None else self.overrides
        if stored_sets != self.overrides:
            def shown(sets: dict) -> str:
                return " ".join(f"--set {k}={v}" for k, v in sets.items()) or "no --set"

            raise ValueError(f"study {spec.name!r} was run with {shown(stored_sets)}, this command has "
                             f"{shown(self.overrides)}: resume it with the same --set values, or give a "
                             f"new --name for the new configuration")

    def record(self, study: optuna.Study) -> tuple[str, str]:
        """Create the experiment and the parent run (or adopt a parent run of this study that a
        creator which died before recording it left), then record both in the study."""
        spec = self.spec
        experiment_id = get_or_create_experiment(self.client, spec.name)
        orphans = call(self.client.search_runs, [experiment_id], order_by=["attributes.start_time ASC"],
                       filter_string=f"tags.`{sinks.TAG_ROLE}` = 'study' and tags.`{sinks.TAG_STUDY}` = '{spec.name}'")
        if orphans:
            parent_id = orphans[0].info.run_id
            call(self.client.update_run, parent_id, status="RUNNING")
        else:
            parent_id = call(self.client.create_run, experiment_id, run_name=spec.name, tags={
                sinks.TAG_ROLE: "study", sinks.TAG_STUDY: spec.name,
                sinks.TAG_OBJECTIVE: ",".join(o.metric for o in spec.objectives),
                **source_tags(),
            }).info.run_id
        # (again) on an adopted parent: its creator may have died before this; same values, so idempotent
        describe_study(self.client, experiment_id, parent_id, spec.description, self.config.flatten())
        spec_path = self.runs_root / spec.name / "study.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec.to_yaml())
        call(self.client.log_artifact, parent_id, str(spec_path))
        study.set_user_attr(OVERRIDES_ATTR, self.overrides)
        study.set_user_attr(SPEC_ATTR, spec.to_yaml())
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        study.set_user_attr(PARENT_ATTR, parent_id)
        return parent_id, experiment_id

    def wait(self, study: optuna.Study) -> tuple[str, str]:
        """A worker that joins a study another worker is creating waits for its parent run. A creator
        that recorded nothing for three heartbeats is taken for dead: the waiting workers take turns
        through numbered claims (``<study>:parent-claim-<k>``, a study name the storage creates
        atomically, so one worker holds claim k) and the holder records the parent; claim 0 is the
        creator's own ``create_study``. The claims are deleted once the parent is recorded. A creator
        is not taken for dead while the storage has not answered for a grace period (an outage
        stalls the creator as much as the waiting workers)."""
        grace, claim = 3 * self.spec.heartbeat, 0
        deadline = time.monotonic() + grace
        while True:
            attrs = optuna.load_study(study_name=self.spec.name, storage=self.storage).user_attrs
            if PARENT_ATTR in attrs and SPEC_ATTR in attrs:
                call(self.client.update_run, attrs[PARENT_ATTR], status="RUNNING")
                self._drop_claims(claim)
                return attrs[PARENT_ATTR], attrs[EXPERIMENT_ATTR]
            if time.monotonic() > deadline and settled(self.storage, grace):
                claim += 1
                try:
                    self.storage.create_new_study(directions=[optuna.study.StudyDirection.MINIMIZE],
                                                  study_name=f"{self.spec.name}:parent-claim-{claim}")
                except optuna.exceptions.DuplicatedStudyError:
                    deadline = time.monotonic() + grace  # another worker holds this claim: give it its turn
                    continue
                self.console.print(f"[yellow]study {self.spec.name!r} has no MLflow parent run (its creator died "
                                   f"before recording it): recording it here[/]")
                parent = self.record(study)
                self._drop_claims(claim)
                return parent
            time.sleep(0.5)

    def _drop_claims(self, up_to: int) -> None:
        for k in range(1, up_to + 1):
            try:
                optuna.delete_study(study_name=f"{self.spec.name}:parent-claim-{k}", storage=self.storage)
            except KeyError:
                pass
