"""Kiln's command line: each task parses its arguments and calls the kiln library.

Run `invoke --list` for the tasks and `invoke --help TASK` for one task's options.
"""

from invoke import task

from kiln import locks
from kiln.bake import Baker, dump_json, images_table
from kiln.cli import kiln_task, print_table, settings
from kiln.console import say
from kiln.images import DockerImageStore, docker_client


@task(
    help={
        "role": "role to bake (a folder under images/)",
        "target": "docker (default, this machine), amazon-ebs or openstack",
        "force": "rebake the role even when an image of its version exists",
        "locked": "fail instead of resolving when the role's packages.lock is missing or stale",
    }
)
@kiln_task
def bake(c, role, target="docker", force=False, locked=False):
    """Bake a role's golden image (and any missing or stale parent) with Packer."""
    for outcome in Baker(settings(), target).bake(role, force=force, locked=locked):
        print(f"{outcome.role}\t{outcome.version}\t{outcome.image}")


@task(help={"role": "only this role's images", "json": "print JSON instead of a table"})
@kiln_task
def images(c, role=None, json=False):
    """List baked images with their version, status, lock hash and freshness."""
    store = DockerImageStore(docker_client(), settings())
    rows = images_table(store.list(role))
    if json:
        print(dump_json(rows))
    else:
        columns = ["role", "version", "status", "lock-hash", "security-pending", "built", "image"]
        print_table(rows, columns)


@task(help={"role": "role to render", "target": "docker, amazon-ebs or openstack"})
@kiln_task
def render(c, role, target="docker"):
    """Write a role's Packer template for a target and `packer validate` it."""
    path, version = Baker(settings(), target).render(role)
    print(f"{role}\t{version}\t{path}")


@task(help={"role": "role whose packages.lock to re-resolve", "update": "write the new lock"})
@kiln_task
def lock(c, role, update=False):
    """Re-resolve a role's packages against the mirror and show the diff to its lock."""
    baker = Baker(settings())
    target_role = baker.catalog.get(role)
    parent_image, _ = baker.parent_of(target_role)
    old = locks.read_lock(target_role)
    resolution = locks.resolve(baker.client, parent_image, target_role, baker.settings)
    print(locks.diff(old, resolution).render())
    if update:
        locks.write_lock(target_role, resolution.lock)
        say(f"wrote {target_role.display(target_role.lock_file)}")
    elif old is None or locks.diff(old, resolution).is_empty() is False:
        say(f"run `invoke lock {role} --update` to write these changes")


@task(help={"unit": "only the fast unit tests (no Docker, no Packer)", "k": "pytest -k filter"})
def test(c, unit=False, k=""):
    """Lint (ruff, shellcheck) and run the test suite, integration tests included."""
    c.run("ruff check .", echo=True)
    c.run(
        "shellcheck -x setup.sh .ci/run provisioners/*.sh images/*/files/etc/kiln/start.d/* "
        "images/base/files/usr/local/sbin/kiln-init",
        echo=True,
    )
    selection = "-m 'not integration'" if unit else ""
    keyword = f"-k '{k}'" if k else ""
    c.run(f"pytest {selection} {keyword}", echo=True, pty=False)
