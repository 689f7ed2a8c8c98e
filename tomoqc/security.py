"""Who may talk to the dask clusters tomoqc starts or joins, and what they expose.

A dask scheduler runs whatever code a connected client sends it, as the user who
started it. On a shared machine (a login node, the nodes of a cluster) a scheduler that
accepts any connection is an open door. tomoqc therefore

- binds local clusters (scheduler, workers, nannies) to the loopback interface
  :data:`LOOPBACK`, and gives them TLS with credentials made for the run and kept in
  memory (:func:`temporary_security`), so that other users of the same machine cannot
  connect either;
- gives SLURM clusters TLS with credentials made for the run; the files that the worker
  jobs need are kept in a folder only the user can read, on a file system the compute
  nodes share (:func:`credential_folder`), and removed when the cluster closes;
- keeps the dashboard off unless asked for, and on the loopback interface unless an
  address says otherwise (:func:`dashboard_address`); with the dashboard off, the HTTP
  servers that dask always starts serve only a health check (:func:`http_config`);
- joins an existing scheduler over ``tls://`` with the credentials given
  (:func:`client_security`) and warns about a plain ``tcp://`` connection to another
  host (:func:`warn_if_unauthenticated`).

``insecure`` turns TLS off where tomoqc would use it, with a warning
(:class:`tomoqc.errors.SecurityWarning`).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

from tomoqc.errors import InputError, OptionError, SecurityWarning

__all__ = [
    "DEFAULT_DASHBOARD_PORT",
    "LOOPBACK",
    "client_security",
    "credential_folder",
    "dashboard_address",
    "http_config",
    "is_loopback",
    "remove_credential_folder",
    "temporary_security",
    "warn",
    "warn_if_unauthenticated",
]

#: The only interface local clusters listen on.
LOOPBACK = "127.0.0.1"

#: Port of the dashboard when ``--dashboard`` gives none (another one is used when it is taken).
DEFAULT_DASHBOARD_PORT = 8787

#: Protocols that authenticate both ends (or never leave the process).
_SECURE_PROTOCOLS = ("tls", "wss", "inproc")

#: HTTP routes served when the dashboard is off: a health check, nothing about the work.
_QUIET_ROUTES = ["distributed.http.health"]


def warn(message: str) -> None:
    """Issue a :class:`~tomoqc.errors.SecurityWarning` (the CLI prints it as one line)."""
    warnings.warn(message, SecurityWarning, stacklevel=3)


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or an address) only reaches this machine."""
    host = host.strip().strip("[]")
    if not host:
        return False  # "all interfaces"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def temporary_security():
    """TLS credentials made for this run (:meth:`distributed.security.Security.temporary`).

    A certificate authority, certificate and key that exist only in this process's memory
    (and in the files :func:`credential_folder` holds for SLURM worker jobs); every
    connection must present them, in both directions.
    """
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError:
        raise OptionError(
            "TLS for the dask cluster needs the 'cryptography' package: pip install cryptography "
            "(or pass --insecure to run without TLS, not recommended)"
        ) from None


def credential_folder(parent: str | os.PathLike) -> Path:
    """A new folder that only this user can read (mode 0700) inside ``parent``.

    Parameters
    ----------
    parent : path-like
        A folder that the compute nodes see at the same path (home, project space);
        created if needed. ``~`` and ``$VARS`` are expanded.

    Raises
    ------
    InputError
        ``parent`` cannot be created or written.
    """
    parent = Path(os.path.expandvars(os.path.expanduser(os.fspath(parent))))
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="tomoqc-tls-", dir=parent))
        os.chmod(folder, 0o700)
    except OSError as err:
        raise InputError(parent, f"cannot create a folder for the run's TLS credentials here: "
                                 f"{err.strerror or err}") from None
    return folder


def remove_credential_folder(folder: str | os.PathLike | None) -> None:
    """Delete a folder made by :func:`credential_folder` and everything in it."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def http_config(dashboard: bool) -> dict:
    """dask settings for the HTTP servers of schedulers and workers started here.

    dask starts an HTTP server on every scheduler and worker whether or not a dashboard
    is asked for; without one it serves only a health check here.
    """
    if dashboard:
        return {}
    return {"distributed.scheduler.http.routes": list(_QUIET_ROUTES),
            "distributed.worker.http.routes": list(_QUIET_ROUTES)}


def dashboard_address(value, *, warn_public: bool = True) -> str | None:
    """The address the dashboard should listen on, or None for no dashboard.

    Parameters
    ----------
    value : None, bool or str
        ``None``, ``False``, ``""``, ``"off"``: no dashboard. ``True`` or ``"on"``:
        ``127.0.0.1:8787``. ``"PORT"`` or ``":PORT"``: that port on the loopback
        interface. ``"HOST:PORT"``: as given; a host other than loopback exposes the
        dashboard, which has no authentication, to everyone who can reach it (a
        warning says so, unless ``warn_public`` is false).

    Raises
    ------
    OptionError
        ``value`` is not an address.
    """
    if value is None or value is False:
        return None
    if value is True:
        return f"{LOOPBACK}:{DEFAULT_DASHBOARD_PORT}"
    text = str(value).strip()
    if text.lower() in ("", "off", "false", "no", "none"):
        return None
    if text.lower() in ("on", "true", "yes"):
        return f"{LOOPBACK}:{DEFAULT_DASHBOARD_PORT}"
    for prefix in ("http://", "https://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionError(f"--dashboard: {value!r} is not an address such as 8787, :8787 or 127.0.0.1:8787")
    if not host:
        return f"{LOOPBACK}:{int(port)}"
    if warn_public and not is_loopback(host):
        warn(f"the dashboard at {host}:{port} has no authentication: anyone who can reach this machine "
             "can see the tasks and file names of this run")
    return f"{host}:{int(port)}"


def _scheme_and_host(address: str) -> tuple[str, str]:
    scheme, _, rest = address.partition("://")
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):  # [ipv6]:port
        host = hostport[1:].split("]", 1)[0]
    else:
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    return scheme.lower(), host


def warn_if_unauthenticated(address: str) -> None:
    """Warn when joining ``address`` sends work over an unauthenticated connection to another host."""
    scheme, host = _scheme_and_host(address)
    if scheme in _SECURE_PROTOCOLS or is_loopback(host):
        return
    warn(f"the connection to {address} is not authenticated or encrypted: anyone who can reach that "
         "scheduler can run code as its owner, and see the data sent; use a tls:// address with "
         "--tls-ca-file, --tls-cert and --tls-key")


def client_security(address: str, *, tls_ca_file=None, tls_cert=None, tls_key=None):
    """The :class:`~distributed.security.Security` for joining the scheduler at ``address``.

    Parameters
    ----------
    address : str
        Scheduler address; ``tls://`` needs credentials.
    tls_ca_file, tls_cert, tls_key : path-like, optional
        The certificate authority that signed the scheduler's certificate, and this
        client's certificate and key (the key may be inside the certificate file). When
        none is given, dask's own configuration (``distributed.comm.tls`` in a dask
        config file or ``DASK_DISTRIBUTED__COMM__TLS__...`` variables) is used.

    Returns
    -------
    distributed.security.Security or None
        None: let dask use its configuration.

    Raises
    ------
    InputError
        A credential file is missing.
    OptionError
        Credentials for a non-TLS address, or a ``tls://`` address without any.
    """
    from distributed.security import Security

    scheme, _ = _scheme_and_host(address)
    given = {"--tls-ca-file": tls_ca_file, "--tls-cert": tls_cert, "--tls-key": tls_key}
    named = [k for k, v in given.items() if v]
    if named and scheme not in ("tls", "wss"):
        raise OptionError(f"{', '.join(named)} need a tls:// scheduler address, not {address}")
    for opt, path in given.items():
        if path and not os.path.isfile(path):
            raise InputError(path, f"no such file (given as {opt})")
    if not named:
        if scheme in ("tls", "wss") and not Security().get_connection_args("client").get("ssl_context"):
            raise OptionError(f"{address} needs TLS credentials: give --tls-ca-file, --tls-cert and --tls-key "
                              "(or set distributed.comm.tls in a dask config file)")
        return None
    if not (tls_ca_file and tls_cert):
        raise OptionError("joining a tls:// scheduler needs --tls-ca-file and --tls-cert (and --tls-key "
                          "unless the key is in the certificate file)")
    return Security(tls_ca_file=os.fspath(tls_ca_file), tls_client_cert=os.fspath(tls_cert),
                    tls_client_key=os.fspath(tls_key) if tls_key else None, require_encryption=True)
