"""The base of every error whose message is written for the user (a bad param, a bad image, a missing
model or artifact). The command line shows such an error as one line, without a traceback. This module
imports nothing, so reporting an error never pays for a heavy import."""


class UserError(Exception):
    """An error that names the file, image id or parameter at fault and what was expected."""


class ParamsError(UserError, ValueError):
    """A params value or key is wrong; the message names the dotted key and what was expected."""


class DiskFull(UserError):
    """The disk filled while a stage wrote its outputs; everything already stored is kept."""


def disk_full(err: BaseException | None) -> str | None:
    """The path named by a full-disk (or full-quota) error anywhere in `err`'s chain ('' when it names
    none); None when `err` is not one."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(err.filename) if err.filename else ""
        err = err.__cause__ or err.__context__
    return None
