"""The local provider hands the engine Kiln's errors only: docker's API errors are translated."""

from __future__ import annotations

import docker.errors
import pytest

from kiln.errors import OperationFailed
from kiln.providers.local import docker_errors_fail


class ProviderMethods:
    @docker_errors_fail
    def launch(self, name: str) -> str:
        if name == "missing":
            raise docker.errors.ImageNotFound("404", explanation="No such image: kiln/web:1")
        return name


def test_docker_api_errors_become_one_line_operation_failures():
    assert ProviderMethods().launch("web1") == "web1"
    with pytest.raises(OperationFailed, match=r"^docker: No such image: kiln/web:1$") as caught:
        ProviderMethods().launch("missing")
    assert isinstance(caught.value.__cause__, docker.errors.APIError)
