"""The demo's model update: `muse-stream deploy` on the live stream (its figures: deploy_report.py).

The deployment runs the command's own code (the Deployer) in a thread of the demo's process, so its start-up
costs nothing the command would not, while the replay thread keeps producing: shadow, fit, guards, activation by
event time, the watch and its refresh all happen on the traffic as it arrives.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

from muse_stream.config import Settings, TenantConfig
from muse_stream.deploy.controller import Deployer
from muse_stream.errors import MuseError
from muse_stream.models.calibration_size import calibration_need
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.records import DeploymentRecord
from muse_stream.models.store import now_ms

# Wall-clock seconds of replayed traffic between publishing an activation and the first event it governs: the
# workers read the models topic within a fraction of that (runtime.change_lead_ms is this in event time).
LEAD_WALL_S = 1.5
MAX_LEAD_MS = 3_600_000  # runtime.change_lead_ms's limit


def change_lead_ms(rate: int, events_per_day: int, day_span_ms: int) -> int:
    """runtime.change_lead_ms for LEAD_WALL_S of the replay: a replayed day packs hours of event time into
    seconds, so the default lead (5 s of event time) would be over in a few milliseconds of wall time."""
    if not rate:
        return MAX_LEAD_MS
    event_ms_per_s = rate * day_span_ms / max(1, events_per_day)
    return int(min(MAX_LEAD_MS, max(5_000, math.ceil(LEAD_WALL_S * event_ms_per_s))))


def deploy_settings(tenants: list[TenantConfig], intent: str, reference: ReferenceDistribution,
                    overrides: dict) -> dict:
    """The demo's [deploy] section: the shadow window as small as the tenants' top band allows, and a watch of one
    window of that size (judged, then the map refreshed on it). Timeouts stay short: the replay is finite."""
    holdout = overrides.get("holdout_share", 0.3)
    window = max(overrides.get("shadow_events", 1000),
                 math.ceil(calibration_need(tenants, intent, reference).events / (1.0 - holdout)))
    # Every tenant scores the same transactions here, so a map of its own would be fitted on a third of the window
    # (a third of the events above the top band) and gain nothing: the intent's map serves them all.
    return {"shadow_events": 1000, "watch_events": window, "shadow_timeout_s": 60, "watch_timeout_s": 30,
            "poll_s": 0.2, "min_tenant_events": 1_000_000_000, **overrides}


class LiveDeploy(threading.Thread):
    """`muse-stream deploy MODEL --intent INTENT`, run in a thread; its lines go to `say` as they come."""

    def __init__(self, settings: Settings, intent: str, model: Path, say: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name="deploy")
        self.settings, self.intent, self.model, self.say = settings, intent, model, say
        self.lines: list[str] = []
        self.record: DeploymentRecord | None = None
        self.error: str | None = None
        self.started_ms = 0
        self.halt = threading.Event()

    @property
    def command(self) -> str:
        return f"muse-stream deploy {self.model.name} --intent {self.intent}"

    def _out(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)

    def run(self) -> None:
        self.started_ms = now_ms()
        try:
            self.record = Deployer(self.settings, self.intent, out=self._out, stop=self.halt).deploy(self.model)
        except MuseError as e:  # refused before it began, or stopped (Interrupted)
            self.error = str(e)
            self._out(f"deploy: {e}")

    def finish(self, timeout: float) -> None:
        """Wait for the deployment to end; past `timeout`, stop it where it is (the models topic keeps its state)."""
        self.join(timeout)
        if self.is_alive():
            self.halt.set()
            self.join(30)
