"""A channel base for tests that only run commands: streaming and file transfer are not theirs."""

from kiln.channels.base import Channel


class CommandOnlyChannel(Channel):
    def execute_stream(self, argv, user, env, timeout, deliver):
        raise AssertionError("not used")

    def put_tar(self, folder, archive, timeout=0):
        raise AssertionError("not used")

    def get_tar(self, path, timeout=0):
        raise AssertionError("not used")
