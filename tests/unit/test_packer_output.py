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


def test_a_failed_provisioner_is_named_with_its_last_words():
    result, _, _ = feed(
        [
            "1,,ui,say,==> docker: Provisioning with shell script: /p/harden-ssh.sh",
            "1,,ui,message,    docker: sshd ok",
            "1,,ui,say,==> docker: Provisioning with shell script: /p/harden-firewall.sh",
            "1,,ui,message,    docker: writing /etc/nftables.conf",
            "1,,ui,error,==> docker: ln: failed to create a link",
            "1,,ui,say,==> docker: Provisioning step had errors: Running the cleanup provisioner...",
            "1,,ui,say,==> docker: Killing the container: 1a6f",
            "1,,ui,error,Build 'docker' errored after 47 seconds: Script exited with non-zero exit status: 1",
        ]
    )
    assert result.failure() == (
        "provisioner harden-firewall.sh failed: writing /etc/nftables.conf / ln: failed to create a link"
    )


def test_a_failure_outside_provisioners_quotes_packers_errors():
    result, _, _ = feed(["1,,ui,error,Build 'docker' errored: Error pulling Docker image"])
    result.returncode = 1
    assert result.failure() == "Build 'docker' errored: Error pulling Docker image"
