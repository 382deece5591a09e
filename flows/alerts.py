"""``towerflow alerts install``: the automations a team wants on day one, created on the server at
PREFECT_API_URL.

Each automation notifies through a Prefect notification block the user names (Slack, Teams, a
webhook, e-mail...) when a night fails (``towerflow.night.failed``), is refused by the quality gate
(``towerflow.night.gate-refused``), drifts past :data:`tasks.evaluation.drift.DRIFT_ALERT`
(``towerflow.night.drifted``), or crashes (Prefect's own ``prefect.flow-run.Crashed`` event of the
``towerflow-nightly`` flow: a killed process cannot emit anything itself). Installing is idempotent:
an automation of the same name is updated in place, never duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.events import EVENTS, RESOURCE_PREFIX
from tasks.errors import ConfigError, TowerflowError

FLOW_NAME = "towerflow-nightly"
_WHERE = "{{ event.resource['prefect.resource.name'] }}"
_REASON = "{{ event.payload.reason }}"


@dataclass(frozen=True)
class Alert:
    """One automation: its name, the events it reacts to, the resources it matches, what it says."""

    name: str
    expect: str
    subject: str
    body: str
    # matches Prefect's flow-run event (related to the towerflow-nightly flow), not a towerflow
    # event
    crash: bool = False

    def trigger(self) -> Any:
        from prefect.automations import EventTrigger, Posture

        if self.crash:
            related = {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME}
            return EventTrigger(
                expect={self.expect},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=related,
                posture=Posture.Reactive,
            )
        return EventTrigger(
            expect={self.expect},
            match={"prefect.resource.id": RESOURCE_PREFIX + "*"},
            posture=Posture.Reactive,
        )


ALERTS = (
    Alert(
        "towerflow: night failed",
        EVENTS["failed"],
        "towerflow: the night of {{ event.payload.run_date }} failed",
        f"Nothing was published in {_WHERE}; downstream jobs still read the previous run. "
        f"Reason: {_REASON}",
    ),
    Alert(
        "towerflow: night refused by the quality gate",
        EVENTS["refused"],
        "towerflow: the quality gate refused the night of {{ event.payload.run_date }}",
        f"Model {{{{ event.payload.model_version }}}} was not published in {_WHERE}. {_REASON}",
    ),
    Alert(
        "towerflow: recommendations drifted",
        EVENTS["drifted"],
        "towerflow: recommendations of {{ event.payload.run_date }} moved far from the "
        "published run",
        f"In {_WHERE}, model {{{{ event.payload.model_version }}}}: drift (1 - mean top-k Jaccard) "
        "{{ event.payload.drift.drift }}, {{ event.payload.drift.changed_share }} of the "
        "lists changed.",
    ),
    Alert(
        "towerflow: night crashed",
        "prefect.flow-run.Crashed",
        "towerflow: a nightly flow run crashed",
        "Flow run {{ event.resource['prefect.resource.name'] }} of towerflow-nightly crashed "
        "(killed or its machine lost); "
        "nothing was published. Run the same command again to resume.",
        crash=True,
    ),
)

BLOCK_HELP = (
    "create a notification block first, in the UI (Blocks > + > e.g. Slack Webhook, "
    "Microsoft Teams Webhook, Custom Webhook) "
    "or in Python, e.g. `from prefect.blocks.notifications import SlackWebhook; "
    "SlackWebhook(url='https://hooks.slack.com/services/...').save('towerflow-alerts')`, "
    "then run `towerflow alerts install --block towerflow-alerts` (see docs/operations.md)"
)


def _notification_block(client: Any, name: str | None) -> Any:
    """The block document ``name`` if it is a notification block; otherwise an error that says what
    to create.
    """
    documents = client.read_block_documents()
    notifiers = [
        d for d in documents if "notify" in (getattr(d.block_schema, "capabilities", None) or [])
    ]
    if name is None:
        known = ", ".join(sorted(d.name for d in notifiers)) or "none on this server"
        raise ConfigError(
            "alerts need a notification block (--block NAME; notification blocks here: "
            f"{known}): {BLOCK_HELP}"
        )
    match = [d for d in notifiers if d.name == name]
    if not match:
        other = [d for d in documents if d.name == name]
        what = "is not a notification block" if other else "does not exist on this server"
        raise ConfigError(f"block {name!r} {what}: {BLOCK_HELP}")
    return match[0]


def install(block: str | None) -> list[tuple[str, str]]:
    """Create or update the automations of :data:`ALERTS`; return (name, 'created' | 'updated') per
    automation.
    """
    from prefect.automations import AutomationCore, SendNotification
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "alerts live on a Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL"
        )
    with get_client(sync_client=True) as client:
        try:
            document = _notification_block(client, block)
        except ConfigError:
            raise
        except Exception as exc:  # the server is down or unreachable
            raise TowerflowError(
                f"cannot reach the Prefect API at {PREFECT_API_URL.value()} ({exc})"
            ) from None
        done = []
        for alert in ALERTS:
            action = SendNotification(
                block_document_id=document.id, subject=alert.subject, body=alert.body
            )
            existing = client.read_automations_by_name(alert.name)
            description = (
                f"installed by towerflow alerts install: notify when {alert.expect} happens"
            )
            automation = AutomationCore(
                name=alert.name,
                description=description,
                enabled=True,
                trigger=alert.trigger(),
                actions=[action],
            )
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # an earlier, duplicated install: keep one
                    client.delete_automation(extra.id)
                done.append((alert.name, "updated"))
            else:
                client.create_automation(automation)
                done.append((alert.name, "created"))
    return done
