"""The fixture role's own suite: its declared service runs under systemd and answers."""


def test_declared_service_is_active(host):
    assert host.service("kiln-health").is_running


def test_health_answers_inside_the_vm(host):
    fetch = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/health').status)\""
    assert host.check_output(fetch) == "200"
