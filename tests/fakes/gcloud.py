"""A fake `gcloud` executable that records how it was called.

Google cannot be reached from the test machine, so the exact commands the
pipeline sends to gcloud are checked here instead: each call appends its
arguments and the gcloud-relevant environment to a JSON-lines file. Like the
real one, `get-credentials` writes a kubeconfig to $KUBECONFIG (here a copy of
a local cluster's, so kubectl really works afterwards) and `activate-service-
account` stores its login under $CLOUDSDK_CONFIG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECORDED_VARIABLES = (
    "CLOUDSDK_CONFIG",
    "KUBECONFIG",
    "CLOUDSDK_CORE_DISABLE_PROMPTS",
    "USE_GKE_GCLOUD_AUTH_PLUGIN",
    "HOME",
)

_SCRIPT = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open({record!r}, "a") as log:
    log.write(json.dumps({{
        "argv": args,
        "env": {{k: os.environ.get(k) for k in {variables!r}}},
    }}) + "\\n")
if args[:2] == ["auth", "activate-service-account"]:
    os.makedirs(os.environ["CLOUDSDK_CONFIG"], exist_ok=True)
    with open(os.path.join(os.environ["CLOUDSDK_CONFIG"], "credentials.db"), "w") as db:
        db.write("logged in")
    print("Activated service account credentials for: [deployer@example.iam]", file=sys.stderr)
elif args[:3] == ["container", "clusters", "get-credentials"]:
    shutil.copyfile({kubeconfig!r}, os.environ["KUBECONFIG"])
    print("Fetching cluster endpoint and auth data.", file=sys.stderr)
    print("kubeconfig entry generated for " + args[3] + ".", file=sys.stderr)
"""


def install(bin_dir: Path, record: Path, kubeconfig: Path) -> Path:
    """Write the fake `gcloud` into `bin_dir`; its calls go to `record`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "gcloud"
    script.write_text(
        _SCRIPT.format(
            python=sys.executable,
            record=str(record),
            variables=RECORDED_VARIABLES,
            kubeconfig=str(kubeconfig),
        )
    )
    script.chmod(0o755)
    return script


def calls(record: Path) -> list[dict]:
    """Every recorded call, in order."""
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]
