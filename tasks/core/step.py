"""A step, declared once: its name, what it changes, and what answers its failure.

Each step module declares its steps as `Step` values beside their domain
functions (`UPGRADE` in tasks/steps/release.py, say). Everything else reads
them: `perform` (tasks/flows/pipeline.py) runs one, with the cluster's
credentials when it needs them and the checkout held when it rewrites it;
the chain (tasks/cli/chain.py) is a list of them; the closing screen says
what an interrupted one left; a federation's member and `--rollback-on-failure`
roll back after the steps that say so. Adding a step is a module that
declares it and a line in the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Changes(Enum):
    """What a step changes, if anything."""

    NOTHING = "nothing"
    # The working tree: decrypted secrets, fetched charts. Held against other runs from
    # this checkout (tasks/core/checkout.py).
    CHECKOUT = "the checkout"
    # What the pipeline keeps in the cluster beside the release: the deploy lock, the
    # verified revisions, the promotion record.
    BOOKKEEPING = "the cluster's bookkeeping"
    # The helm release itself.
    RELEASE = "the release"


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    `action(ctx, **options)` does the work, given the step's context
    (tasks/config/context.py) and the options of the task that runs it, and
    returns the note the summary shows.
    """

    name: str
    action: Callable[..., str | None]
    changes: Changes = Changes.NOTHING
    # What it does, in one line: the help of the task made from it (tasks/cli/steps.py).
    summary: str = ""
    needs_env: bool = True
    needs_cluster: bool = False
    # Runs once for each release of an environment that lists several, in order.
    per_release: bool = False
    # Runs only for an environment that a gate (staging) must have verified first.
    gated_only: bool = False
    # It checks a release that runs a new version not yet verified: its failure, or an
    # interrupt of it, is answered by a rollback (--rollback-on-failure).
    rolls_back: bool = False
    # The options of a deploy (tasks/cli/chain.py's Options) its action takes.
    takes: tuple[str, ...] = ()

    def aftermath(self, env: str) -> str:
        """What an interrupt of this step on `env` may have left, where it did not say itself."""
        if self.changes is Changes.RELEASE:
            return (
                "helm may have left the release locked in a pending state; if the next "
                f"upgrade says so, run: invoke recover-release --env={env}"
            )
        if self.rolls_back:
            return (
                f"{env} runs the new version, not yet verified. Deploy again, or return "
                f"to the last verified revision: invoke rollback --env={env}"
            )
        return ""
