"""Publishing a pipeline's images: the newest of every role must be verified; it becomes promoted
and its version goes to a dotenv file, which GitLab hands to the deploy jobs (`KILN_RELEASE_<ROLE>`).

The docker target keeps its images in this machine's engine, so promoting relabels them there;
nothing is pushed to a registry. Cloud targets keep theirs as AMIs and Glance images, whose
`kiln.status` tag the cloud catalog owns (see README "Clouds").
"""

from __future__ import annotations

from pathlib import Path

from kiln import images as image_catalog
from kiln.errors import OperationFailed
from kiln.images import DockerImageStore
from kiln.roles import RoleCatalog
from kiln.settings import Settings


def release_variable(role: str) -> str:
    return "KILN_RELEASE_" + role.upper().replace("-", "_")


def publish(settings: Settings, store: DockerImageStore, dotenv: Path | None = None) -> dict[str, str]:
    """Promote the newest image of every role; role -> version. Refuses, promoting nothing, when
    one of them is not verified (its verification failed or never ran)."""
    newest = {role: image_catalog.require_image(store, role, None) for role in RoleCatalog(settings).names()}
    unfit = [f"{r.image} is {r.status}" for r in newest.values() if r.status not in ("verified", "promoted")]
    if unfit:
        raise OperationFailed(f"nothing published: {'; '.join(unfit)} (only verified images ship)")
    versions = {role: image_catalog.promote(store, role, r.version).version for role, r in newest.items()}
    if dotenv is not None:
        dotenv.write_text("".join(f"{release_variable(role)}={v}\n" for role, v in versions.items()))
    return versions
