"""What helm and kubectl say when they fail, what it means and what to do: one catalogue.

Every step that runs helm or kubectl explains their failures from here, so a
failure reads the same whichever step met it (validate's render and an
upgrade's, for one). `{env}` in a fix stands for the environment's name.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.core.errors import Diagnosis


def for_env(catalogue: Iterable[Diagnosis], env: str) -> list[Diagnosis]:
    """The catalogue with `{env}` in its fixes naming the environment."""
    return [Diagnosis(d.pattern, d.why, d.fix.replace("{env}", env)) for d in catalogue]


RENDERING = Diagnosis(
    r"((?:parse error|execution error|template:|YAML parse error|error converting YAML)[^\n]*)",
    "The chart did not render: {0}",
    "Fix the template or the value it names; `invoke validate --env={env}` renders "
    "it offline with `helm template`.",
)


# A refusal of the deployer's identity or rights; "is forbidden" alone is also
# what quotas and pod security say, which are not about credentials.
CREDENTIALS_REFUSED = (
    r"(Unauthorized|You must be logged in|asked for the client to provide credentials"
    r'|forbidden: User "|cannot \w+ resource|certificate has expired|x509: certificate'
    r"|credentials)"
)

# What helm says when a release operation (upgrade, diff, rollback, ...) fails, and kubectl
# when it reads the revisions helm keeps.
HELM_FAILURES = (
    Diagnosis(
        r"another operation \(install/upgrade/rollback\) is in progress",
        "The release is locked by an earlier helm operation that never finished "
        "(a deploy that was cancelled or killed mid-way).",
        "Run `invoke recover-release --env={env}` to roll back to the last deployed revision.",
    ),
    Diagnosis(
        CREDENTIALS_REFUSED,
        "The cluster refused the deployer's credentials (expired, revoked, or lacking "
        "permission in this namespace).",
        "Check the credentials in the environment's secrets (`invoke doctor --env={env}` "
        "checks certificate expiry and `kubectl auth can-i`); renew them if expired.",
    ),
    Diagnosis(
        r"(connection refused|no such host|i/o timeout|dial tcp [^ ]+: connect"
        r"|Kubernetes cluster unreachable|context deadline exceeded|TLS handshake timeout)",
        "The deploy could not reach the cluster's API server: the cluster is down, unreachable "
        "from here, or the kubeconfig points at the wrong address.",
        "Check the cluster (`invoke doctor --env={env}`; for a local cluster "
        "`invoke cluster.status`). If it is a cloud cluster, check its status page; "
        "re-run the step once it answers.",
    ),
    RENDERING,
    Diagnosis(
        r'(\S+ "[^"]+") is invalid: ([^\n]+)',
        "The API server refused {0}: {1}",
        "Fix the value in the environment's values files. `helm template` (and so "
        "`invoke validate`) cannot see this: only the API server checks it. "
        "`invoke diff --env={env}` asks the API server without changing anything.",
    ),
    Diagnosis(
        r'(admission webhook "[^"]+" denied the request: [^\n]+'
        r'|\S+ "[^"]+" is forbidden: [^\n]+)',
        "A policy of the cluster refused the change: {0}",
        "Change the values so the objects meet the cluster's policy (quota, pod security, "
        "admission webhook), or ask the cluster's administrators. `invoke diff --env={env}` "
        "asks the API server without changing anything.",
    ),
)


# What `helm template` and `helm lint` say when the chart does not render.
RENDER_FAILURES = (
    Diagnosis(
        r"missing in charts/ directory: ([^\n]+)",
        "The chart's dependencies are not built ({0} missing).",
        "Run `invoke helm-deps` first.",
    ),
    RENDERING,
)


# What kubectl says when it cannot reach or is refused by the API server.
KUBECTL_FAILURES = (
    Diagnosis(
        r"(?:The connection to the server |dial tcp )([^\s:]+:\d+)"
        r"(?: was refused|: connect: connection refused)",
        "Nothing answers at {0}: the API server is down or the address is wrong.",
        "Start the cluster, or check the server address in its kubeconfig.",
    ),
    Diagnosis(
        r"(no such host|i/o timeout|Client\.Timeout|network is unreachable|context deadline)",
        "The API server cannot be reached over the network ({0}).",
        "Check the network, VPN or bastion between here and the cluster.",
    ),
    Diagnosis(
        r"certificate has expired|x509: .*(expired|not yet valid)",
        "TLS with the API server failed: a certificate has expired.",
        "Renew the cluster's certificates or the kubeconfig's client certificate.",
    ),
    Diagnosis(
        r"x509: (.*)",
        "The API server's TLS certificate is not the one the kubeconfig trusts: {0}.",
        "Check certificate-authority(-data) and the server address in the kubeconfig.",
    ),
    Diagnosis(
        r"(Unauthorized|You must be logged in|provide credentials)",
        "The API server rejected the credentials.",
        "Renew the kubeconfig's credentials (or the service-account key) for this cluster.",
    ),
)
