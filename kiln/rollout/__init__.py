"""Rolling an image out to an environment, zone by zone, behind its load balancer.

- `planning`: pure functions from the instances that exist to the next step (what `--plan` prints).
- `state`: the typed rollout record, its store (state file, audit log, timelines) and the lock.
- `engine`: drives the steps through a provider; rolls back on failure; resumes after a crash.
- `lifecycle`: what the CLI calls (up, status, down, plan, deploy, rollback), each taking the lock.
"""
