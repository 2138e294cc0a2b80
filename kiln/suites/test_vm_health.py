"""What a load balancer would see of a VM: the role's health path through its forwarded port.
Kiln adds this suite on VM targets for roles that declare `health:`; it runs on the host."""

import os
import urllib.request


def test_health_answers_on_the_forwarded_port():
    url = os.environ["KILN_VERIFY_HEALTH_URL"]
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode(errors="replace")
        assert response.status == 200, f"{url} answered {response.status}: {body[:200]}"
