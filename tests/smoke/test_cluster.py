"""The release's namespace as kubectl sees it: services served, components present, no crashes."""

from __future__ import annotations

import time

import pytest

from tasks.smoke import COMPONENTS
from tests.smoke.kube import ContainerRestarts, Kube
from tests.smoke.target import Target

pytestmark = pytest.mark.cluster


def test_services_have_ready_endpoints(kube: Kube, target: Target) -> None:
    """Every Service of the release's namespace has at least one ready endpoint."""
    while True:
        unserved = [name for name in selecting_services(kube) if kube.ready_endpoints(name) == 0]
        # EndpointSlices follow pods that just became ready a moment later.
        if not unserved or time.monotonic() >= target.warm_until:
            break
        time.sleep(target.settings.retry_seconds)
    if unserved:
        pytest.fail(
            f"in namespace {kube.namespace}, no ready endpoint serves: {', '.join(unserved)} "
            "(its pods are missing or not ready: kubectl describe service NAME)",
            pytrace=False,
        )


def selecting_services(kube: Kube) -> list[str]:
    """The Services whose endpoints Kubernetes manages: those that select pods."""
    names = []
    for service in kube.items("services"):
        spec = service.get("spec") or {}
        if spec.get("selector") and spec.get("type") != "ExternalName":
            names.append(service["metadata"]["name"])
    return names


@pytest.mark.parametrize("component", [c.name for c in COMPONENTS])
def test_component_present(kube: Kube, target: Target, component: str) -> None:
    """Every component the environment's values enable runs, with at least one ready pod."""
    target.require(component)
    state = target.components[component]
    for name in state.component.objects:
        found = kube.find(state.component.kind.lower() + "s", name)
        if found is None:
            pytest.fail(
                f"{state.component.kind} {name} (component {component}) is missing from namespace "
                f"{kube.namespace}, though the environment {state.reason}",
                pytrace=False,
            )
        status = found.get("status") or {}
        if state.component.kind == "DaemonSet":
            wanted, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
        else:
            wanted = (found.get("spec") or {}).get("replicas", 1)
            ready = status.get("readyReplicas", 0)
        if wanted and not ready:
            pytest.fail(
                f"{state.component.kind} {name} (component {component}) in {kube.namespace} "
                f"has no ready pod (0 of {wanted})",
                pytrace=False,
            )


@pytest.mark.end_of_run
def test_no_pod_restarting(
    kube: Kube, restarts_at_start: dict[tuple[str, str], ContainerRestarts] | None
) -> None:
    """No container restarted while the suite ran, and none is in CrashLoopBackOff."""
    if restarts_at_start is None:
        pytest.fail("the restart counts could not be read when the run began", pytrace=False)
    problems = []
    for now in kube.container_restarts():
        before = restarts_at_start.get(now.key)
        grew = now.restarts - (before.restarts if before else 0)
        # Whatever its count says (simulated clusters start it at 0), a back-off is a crash.
        crash_looping = now.waiting_reason == "CrashLoopBackOff"
        if grew > 0 or crash_looping:
            why = [f"{now.restarts} restarts"]
            if grew > 0:
                why.append(f"{grew} during this run")
            if now.waiting_reason:
                why.append(now.waiting_reason)
            if now.last_exit:
                why.append(now.last_exit)
            problems.append(f"{now.pod}/{now.container}: {', '.join(why)}")
    if problems:
        pytest.fail(
            f"containers restarting in {kube.namespace} (kubectl logs --previous POD -c "
            "CONTAINER shows why):\n  " + "\n  ".join(problems),
            pytrace=False,
        )
