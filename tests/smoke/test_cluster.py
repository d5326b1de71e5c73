"""The release's namespace as kubectl sees it: services served, components present, no crashes."""

from __future__ import annotations

import hashlib
import time

import pytest
import yaml

from tasks.steps import rollout_status
from tasks.steps.smoke import COMPONENTS, declared
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
        kube.refresh()
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
    while True:
        problem = component_problem(kube, target, component)
        # A workload's status counts its ready pods a moment after they became ready.
        if not problem or time.monotonic() >= target.warm_until:
            break
        time.sleep(target.settings.retry_seconds)
        kube.refresh()
    if problem:
        pytest.fail(problem, pytrace=False)


def component_problem(kube: Kube, target: Target, component: str) -> str:
    """Why the component does not run with a ready pod; "" when it does."""
    state = target.components[component]
    for name in state.component.objects:
        found = kube.find(state.component.kind.lower() + "s", name)
        if found is None:
            return (
                f"{state.component.kind} {name} (component {component}) is missing from namespace "
                f"{kube.namespace}, though the environment {state.reason}"
            )
        status = found.get("status") or {}
        if state.component.kind == "DaemonSet":
            wanted, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
        else:
            wanted = (found.get("spec") or {}).get("replicas", 1)
            ready = status.get("readyReplicas", 0)
        if wanted and not ready:
            return (
                f"{state.component.kind} {name} (component {component}) in {kube.namespace} "
                f"has no ready pod (0 of {wanted})"
            )
    return ""


WORKLOADS = [pytest.param(c.name, c.kind, name, id=name) for c in COMPONENTS for name in c.objects]


@pytest.mark.parametrize(("component", "kind", "name"), WORKLOADS)
def test_every_pod_ready(kube: Kube, target: Target, component: str, kind: str, name: str) -> None:
    """Every pod the workload wants runs and is Ready: its rollout finished."""
    target.require(component)
    while True:
        found = kube.find(kind.lower() + "s", name)
        if found is None:
            pytest.fail(
                f"{kind} {name} is missing from namespace {kube.namespace}, though the "
                f"environment {target.components[component].reason}",
                pytrace=False,
            )
        pods = kube.pods_of(found)
        unready = [p for p in pods if not rollout_status.pod_ready(p)]
        status = found.get("status") or {}
        wanted = (
            status.get("desiredNumberScheduled", 0)
            if kind == "DaemonSet"
            else (found.get("spec") or {}).get("replicas", 1)
        )
        if (not unready and len(pods) >= wanted) or time.monotonic() >= target.warm_until:
            break
        time.sleep(target.settings.retry_seconds)
        kube.refresh()
    if unready or len(pods) < wanted:
        states = [f"{p['metadata']['name']}: {rollout_status.pod_state(p)}" for p in unready]
        pytest.fail(
            f"{kind} {name} in {kube.namespace} has {len(pods) - len(unready)} ready pod(s) of "
            f"{wanted}" + ("".join(f"\n  {line}" for line in states)),
            pytrace=False,
        )


def workload(kube: Kube, kind: str, name: str) -> dict:
    found = kube.find(kind.lower() + "s", name)
    if found is None:
        pytest.fail(f"{kind} {name} is missing from namespace {kube.namespace}", pytrace=False)
    return found


def containers(found: dict) -> list[dict]:
    return found["spec"]["template"]["spec"].get("containers") or []


def secret_volume(found: dict, mounted_at: str) -> str:
    """The Secret mounted at `mounted_at` in the workload's pods ("" when none is)."""
    volumes = {
        v["name"]: (v.get("secret") or {}).get("secretName", "")
        for v in found["spec"]["template"]["spec"].get("volumes") or []
    }
    for container in containers(found):
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath", "").rstrip("/") == mounted_at.rstrip("/"):
                return volumes.get(mount["name"], "")
    return ""


def secret_reference(found: dict, variable: str) -> tuple[str, str] | None:
    """(Secret, key) that environment variable `variable` of the workload's pods comes from."""
    for container in containers(found):
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if entry.get("name") == variable and ref:
                return ref.get("name", ""), ref.get("key", "")
    return None


def digest(value: object) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()


def test_binder_uses_the_hub_url_the_environment_declares(kube: Kube, target: Target) -> None:
    """BinderHub runs with the hub URL the environment's values (and registry) declare."""
    target.require("binderhub")
    wanted = declared(target.env, "binderhub", "config", "BinderHub", "hub_url")
    if not wanted:
        pytest.fail(
            f"environment {target.env.name} declares no binderhub.config.BinderHub.hub_url: "
            "BinderHub would not know where to launch",
            pytrace=False,
        )
    public = target.env.urls.get("hub", "")
    if public and public.rstrip("/") != str(wanted).rstrip("/"):
        pytest.fail(
            f"binderhub.config.BinderHub.hub_url is {wanted} in the values of "
            f"{target.env.name}, but its registry entry says the hub is {public} (urls.hub)",
            pytrace=False,
        )
    binder = workload(kube, "Deployment", "binder")
    source = secret_volume(binder, "/etc/binderhub/config")
    config = (kube.secret_data(source) or {}).get("values.yaml") if source else None
    if config is None:
        pytest.fail(
            f"Deployment binder in {kube.namespace} mounts no configuration Secret holding "
            f"values.yaml at /etc/binderhub/config (found: {source or 'none'})",
            pytrace=False,
        )
    running = (((yaml.safe_load(config) or {}).get("config") or {}).get("BinderHub") or {}).get(
        "hub_url"
    )
    if str(running or "").rstrip("/") != str(wanted).rstrip("/"):
        pytest.fail(
            f"Deployment binder in {kube.namespace} runs with hub_url {running} (Secret "
            f"{source}), but the environment declares {wanted}: the release is not the one "
            "the values describe (run invoke diff)",
            pytrace=False,
        )


def test_hub_api_token_is_shared_by_hub_and_binder(kube: Kube, target: Target) -> None:
    """binder's JupyterHub API token comes from the Secret the hub reads, which holds it."""
    target.require("binderhub")
    hub = workload(kube, "Deployment", "hub")
    binder = workload(kube, "Deployment", "binder")
    hub_secret = secret_volume(hub, "/usr/local/etc/jupyterhub/secret")
    reference = secret_reference(binder, "JUPYTERHUB_API_TOKEN")
    key = "hub.services.binder.apiToken"
    if reference != (hub_secret, key):
        pytest.fail(
            f"binder takes JUPYTERHUB_API_TOKEN from {reference or 'no Secret'}, but the hub "
            f"reads the binder service's token as {key} of Secret {hub_secret or '(none)'}",
            pytrace=False,
        )
    token = (kube.secret_data(hub_secret) or {}).get(key, "")
    if not token:
        pytest.fail(f"Secret {hub_secret} in {kube.namespace} holds no {key}", pytrace=False)
    configured = declared(
        target.env, "binderhub", "jupyterhub", "hub", "services", "binder", "apiToken"
    )
    if configured and digest(configured) != digest(token):
        pytest.fail(
            f"Secret {hub_secret} holds another {key} than the environment's secret values set "
            "(the values are not deployed: run invoke diff)",
            pytrace=False,
        )


def test_proxy_token_is_shared_by_hub_and_proxy(kube: Kube, target: Target) -> None:
    """The hub and its proxy take the proxy's API token from one Secret key, which is set."""
    target.require("binderhub")
    hub = secret_reference(workload(kube, "Deployment", "hub"), "CONFIGPROXY_AUTH_TOKEN")
    proxy = secret_reference(workload(kube, "Deployment", "proxy"), "CONFIGPROXY_AUTH_TOKEN")
    if hub is None or hub != proxy:
        pytest.fail(
            f"the hub takes CONFIGPROXY_AUTH_TOKEN from {hub or 'no Secret'}, the proxy from "
            f"{proxy or 'no Secret'}: they could not talk to each other",
            pytrace=False,
        )
    if not (kube.secret_data(hub[0]) or {}).get(hub[1]):
        pytest.fail(f"Secret {hub[0]} in {kube.namespace} holds no {hub[1]}", pytrace=False)


def test_hub_database_claim_is_bound(kube: Kube, target: Target) -> None:
    """The claim the hub keeps its database on (hub.db.type sqlite-pvc) is Bound."""
    target.require("binderhub")
    hub = workload(kube, "Deployment", "hub")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in hub["spec"]["template"]["spec"].get("volumes") or []
        if v.get("persistentVolumeClaim")
    ]
    if not claims:
        pytest.skip("the hub keeps its database on no claim (hub.db.type is not sqlite-pvc)")
    for name in claims:
        found = kube.find("persistentvolumeclaims", name)
        phase = ((found or {}).get("status") or {}).get("phase", "missing")
        if phase != "Bound":
            storage_class = ((found or {}).get("spec") or {}).get("storageClassName") or "default"
            pytest.fail(
                f"the hub's database claim {name} in {kube.namespace} is {phase} (StorageClass "
                f"{storage_class}): kubectl describe pvc {name} -n {kube.namespace} says why",
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
    # The end of the run, not the snapshot its first checks took.
    kube.refresh()
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
