#!/usr/bin/env bash
# VM test fixture: the health service can no longer read its page, so it never becomes ready.
set -euo pipefail
chmod 0000 /srv/fixture/health
