"""The project's committed DVC config holds no credentials, and the file that may hold them is never
committed (README: "Sharing artifacts through a DVC remote")."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# options of DVC remotes that carry secrets (s3, gs, azure, ssh, webdav, http, oss, gdrive)
SECRET_OPTIONS = {"access_key_id", "secret_access_key", "session_token", "password", "ask_password", "key_file",
                  "account_key", "sas_token", "connection_string", "client_secret", "gdrive_client_secret",
                  "oss_key_secret", "token", "custom_auth_header"}


def committed(path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def test_the_committed_dvc_config_names_no_secret():
    text = committed(".dvc/config")
    if text is None:  # not a git checkout (an sdist): the working file is what would be committed
        text = (ROOT / ".dvc" / "config").read_text()
    config = configparser.ConfigParser()
    config.read_string(text)
    found = [f"[{section}] {option}" for section in config.sections() for option in config[section]
             if option in SECRET_OPTIONS]
    assert found == [], f".dvc/config holds credentials: {found}; use `dvc remote modify --local`"


def test_the_local_dvc_config_is_never_committed():
    assert committed(".dvc/config.local") is None
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=ROOT)
    assert ignored.returncode == 0, ".dvc/config.local is not git-ignored"
