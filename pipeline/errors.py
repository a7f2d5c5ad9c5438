"""The base of every error whose message is written for the user (a bad param, a bad image, a missing
model or artifact). The command line shows such an error as one line, without a traceback. This module
imports nothing, so reporting an error never pays for a heavy import."""


class UserError(Exception):
    """An error that names the file, image id or parameter at fault and what was expected."""
