from kiln import packer


def feed(lines):
    result, steps = packer.BuildResult(), []
    logged = []
    for line in lines:
        logged += packer._handle_line(line, result, steps.append)
    return result, steps, logged


def test_steps_facts_and_missing_packages_are_picked_from_machine_readable_output():
    result, steps, logged = feed(
        [
            "1,,ui,say,==> docker: Provisioning with shell script: packages.sh",
            "1,,ui,message,    docker: kiln-missing-package: nginx=0.1",
            "1,,ui,message,    docker: kiln-fact: security-pending=3",
            "1,,ui,error,Build 'docker' errored: exit status 3",
            "1,docker,artifact,0,id,kiln/web:abc",
        ]
    )
    assert steps == ["docker: Provisioning with shell script: packages.sh"]
    assert result.missing_packages == ["nginx=0.1"]
    assert result.facts == {"security-pending": "3"}
    assert result.error_lines == ["Build 'docker' errored: exit status 3"]
    assert result.artifact_ids == ["kiln/web:abc"]
    assert len(logged) == 4


def test_escaped_commas_and_newlines_are_decoded():
    _, _, logged = feed(["1,,ui,message,    docker: a%!(PACKER_COMMA) b\\n    docker: c"])
    assert logged == ["    docker: a, b", "    docker: c"]
