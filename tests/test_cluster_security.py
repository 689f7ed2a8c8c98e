"""Clusters that only their owner can use: TLS, loopback binding, no dashboard unless asked.

Everything here runs on real sockets on the loopback interface.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tomoqc.errors import InputError, OptionError, SecurityWarning

REPO = Path(__file__).resolve().parents[1]


def _listening(pids) -> set[tuple[int, str, int]]:
    return {(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _family() -> set[int]:
    me = psutil.Process()
    return {me.pid} | {p.pid for p in me.children(recursive=True)}


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _scheduler_http_port(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.port)


# ----------------------------------------------------------------------------- SLURM-style TLS


@pytest.fixture
def slurm_style_cluster(tmp_path):
    """A scheduler started exactly as `--cluster slurm` starts it, that submits no job."""
    pytest.importorskip("dask_jobqueue")
    from tomoqc.slurm import close_slurm_cluster, make_slurm_cluster

    shared = tmp_path / "shared"
    cluster = make_slurm_cluster({"interface": "lo", "cores": 1, "memory": "1GB", "walltime": "00:05:00",
                                  "shared_temp_directory": str(shared), "log_directory": str(tmp_path / "logs")})
    cluster.adapt(minimum_jobs=0, maximum_jobs=0)  # no sbatch here: the "job" is started by the test
    try:
        yield cluster, shared
    finally:
        close_slurm_cluster(cluster)


def _start_job_worker(cluster, name: str):
    """Run the worker command line of the cluster's job script, as a SLURM job would."""
    launch = cluster.job_script().strip().splitlines()[-1].replace("dummy-name", name)
    return subprocess.Popen(shlex.split(launch), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)



def _identify(address, security=None):
    """Connect to a dask scheduler on a real socket and ask who it is (dask's first message)."""
    import asyncio

    from distributed.comm import connect

    async def attempt():
        kwargs = security.get_connection_args("client") if security is not None else {}
        comm = await connect(address, timeout="5s", **kwargs)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    return asyncio.run(attempt())


def test_slurm_scheduler_refuses_clients_without_the_run_credentials(slurm_style_cluster, tmp_path):
    from distributed import Client
    from distributed.security import Security

    cluster, shared = slurm_style_cluster
    address = cluster.scheduler_address
    assert address.startswith("tls://127.0.0.1:")
    # the worker jobs' copy of the credentials: a folder only this user can read, on the shared file system
    (folder,) = shared.iterdir()
    assert folder == cluster.tomoqc_credentials
    assert folder.stat().st_mode & 0o777 == 0o700
    launch = cluster.job_script().strip().splitlines()[-1]
    assert f" {address} " in launch and f"--tls-key {folder}/" in launch and f"--tls-ca-file {folder}/" in launch
    worker = _start_job_worker(cluster, "job-1")
    marker = tmp_path / "ran"
    try:
        with Client(cluster) as owner:  # the run's own client: credentials in memory
            owner.wait_for_workers(1, timeout=120)
            # no credentials, plain TCP to the TLS port, or credentials of another run: refused
            # (raw connections with dask's handshake, not Clients: a refused Client leaves an IO-loop
            # thread behind, and a busy machine may take longer than dask's 10 s to start the next)
            with pytest.raises(TypeError, match="TLS expects a `ssl_context`"):
                _identify(address)
            with pytest.raises(OSError):
                _identify(address.replace("tls://", "tcp://"))
            with pytest.raises(OSError, match="TLS certificate does not match"):
                _identify(address, Security.temporary())
            n_clients = owner.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))
            n_tasks = owner.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
            assert not marker.exists() and n_tasks == 0 and n_clients <= 2  # ours (and the scheduler's own)
            # the run's credentials: the task runs in the "job" worker
            pid = owner.submit(lambda p: (open(p, "w").close(), os.getpid())[1], str(marker), pure=False).result(60)
            job_pids = {worker.pid} | {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
            assert marker.exists() and pid in job_pids  # ran in the job's worker (under its nanny)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_closing_a_slurm_cluster_removes_its_credentials(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from tomoqc.slurm import slurm_client

    shared = tmp_path / "shared"
    opts = {"interface": "lo", "cores": 1, "memory": "1GB", "shared_temp_directory": str(shared),
            "log_directory": str(tmp_path / "logs")}
    with slurm_client(opts) as client:
        assert client.scheduler.address.startswith("tls://")
        (folder,) = shared.iterdir()
        assert len(list(folder.iterdir())) == 3  # CA, certificate, key
    assert list(shared.iterdir()) == []


def test_insecure_slurm_cluster_says_so_and_writes_no_credentials(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from tomoqc.slurm import close_slurm_cluster, make_slurm_cluster

    shared = tmp_path / "shared"
    with pytest.warns(SecurityWarning, match="insecure: .* without authentication"):
        cluster = make_slurm_cluster({"interface": "lo", "insecure": True, "shared_temp_directory": str(shared),
                                      "log_directory": str(tmp_path / "logs")})
    try:
        assert cluster.scheduler_address.startswith("tcp://")
        assert "--tls" not in cluster.job_script()
        assert not shared.exists()
    finally:
        close_slurm_cluster(cluster)


def test_slurm_yaml_security_options_are_checked(tmp_path):
    from tomoqc.slurm import load_cluster_config

    good = tmp_path / "good.yaml"
    good.write_text("insecure: true\ndashboard: ':8799'\nshared-temp-directory: ~/shared\n")
    opts = load_cluster_config(good)
    assert opts["insecure"] is True and opts["dashboard"] == ":8799"
    assert opts["shared_temp_directory"] == os.path.expanduser("~/shared")
    bad = tmp_path / "bad.yaml"
    bad.write_text("insecure: perhaps\n")
    with pytest.raises(InputError, match=f"^{bad}: insecure: expected true or false"):
        load_cluster_config(bad)
    bad.write_text("dashboard: 'somewhere'\n")
    with pytest.raises(InputError, match="dashboard: .*is not an address"):
        load_cluster_config(bad)


# ----------------------------------------------------------------------------- local clusters


def test_local_cluster_listens_on_loopback_only_and_opens_no_dashboard():
    from distributed import Client

    from tomoqc.cluster import start_cluster

    before = _listening(_family())
    with start_cluster("local", workers=1) as client:
        address = client.scheduler.address
        new = _listening(_family()) - before
        # scheduler, nanny, worker and their HTTP servers: every one on 127.0.0.1
        assert len(new) >= 4 and {ip for _, ip, _ in new} == {"127.0.0.1"}, new
        assert address.startswith("tls://127.0.0.1:")
        http = f"http://127.0.0.1:{_scheduler_http_port(client)}"
        assert _http_status(f"{http}/health") == 200  # dask's HTTP server is there ...
        for page in ("/status", "/info/main/workers.html", "/json/counts.json", "/metrics"):
            assert _http_status(http + page) == 404, page  # ... but shows nothing of the work
        # other users of this machine reach 127.0.0.1 too: they are refused without the run's credentials
        # (set_as_default=False: a refused client that set dask's default scheduler would, when the
        # garbage collector closes it after ours, restore "dask.distributed" with no client left)
        with pytest.raises(TypeError, match="ssl_context"):
            Client(address, timeout="5s", set_as_default=False)
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout="5s", set_as_default=False)
        assert client.submit(sum, [1, 2]).result() == 3


def test_dashboard_when_asked_for_stays_on_loopback_and_is_printed(capsys):
    from tomoqc.cluster import start_cluster

    before = _listening(_family())
    with start_cluster("local", workers=1, options={"dashboard": ":0"}) as client:
        new = _listening(_family()) - before
        assert {ip for _, ip, _ in new} == {"127.0.0.1"}, new
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:") and _http_status(link) == 200
    assert f"tomoqc: dask dashboard at {link}" in capsys.readouterr().err


def test_insecure_local_cluster_warns_and_uses_plain_tcp_on_loopback():
    from tomoqc.cluster import start_cluster

    with pytest.warns(SecurityWarning, match="--insecure"):
        with start_cluster("local", workers=1, options={"insecure": True}) as client:
            assert client.scheduler.address.startswith("tcp://127.0.0.1:")


# ----------------------------------------------------------------------------- joining a scheduler


def test_join_a_tls_scheduler_with_credential_files(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    from tomoqc.cluster import start_cluster

    sec = Security.temporary()
    files = {}
    for name, pem in (("ca", sec.tls_ca_file), ("cert", sec.tls_client_cert), ("key", sec.tls_client_key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(pem)
    with LocalCluster(n_workers=1, processes=False, security=sec, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        opts = {"tls_ca_file": str(files["ca"]), "tls_cert": str(files["cert"]), "tls_key": str(files["key"])}
        with start_cluster(address, options=opts) as client:
            assert client.submit(lambda x: x + 1, 41).result() == 42
        with pytest.raises(OptionError, match="needs TLS credentials"):
            with start_cluster(address):
                pass
        with pytest.raises(InputError, match="no such file"):
            with start_cluster(address, options=dict(opts, tls_key=str(tmp_path / "missing.pem"))):
                pass
        other = Security.temporary()  # another run's credentials
        for name, pem in (("ca", other.tls_ca_file), ("cert", other.tls_client_cert), ("key", other.tls_client_key)):
            (tmp_path / f"other-{name}.pem").write_text(pem)
        wrong = {k: str(tmp_path / f"other-{n}.pem") for k, n in
                 (("tls_ca_file", "ca"), ("tls_cert", "cert"), ("tls_key", "key"))}
        with pytest.raises(OptionError, match="cannot connect"):
            with start_cluster(address, options=dict(wrong, timeout="5s")):
                pass


def test_plain_tcp_to_another_host_warns_but_loopback_and_tls_do_not(recwarn):
    from tomoqc.security import warn_if_unauthenticated

    with pytest.warns(SecurityWarning, match="tcp://192.0.2.7:8786 is not authenticated"):
        warn_if_unauthenticated("tcp://192.0.2.7:8786")
    recwarn.clear()
    for address in ("tcp://127.0.0.1:8786", "tcp://localhost:8786", "tls://192.0.2.7:8786", "tcp://[::1]:8786"):
        warn_if_unauthenticated(address)
    assert not [w for w in recwarn if issubclass(w.category, SecurityWarning)]


def test_tls_options_need_a_tls_address():
    from tomoqc.cluster import start_cluster

    with pytest.raises(OptionError, match="need a tls:// scheduler address"):
        with start_cluster("tcp://127.0.0.1:9", options={"tls_ca_file": __file__, "tls_cert": __file__}):
            pass
    with pytest.raises(OptionError, match="applies to a scheduler address, not to --cluster local"):
        with start_cluster("local", workers=1, options={"tls_cert": __file__}):
            pass
    with pytest.raises(OptionError, match="unknown cluster option 'insecur'"):
        with start_cluster("local", workers=1, options={"insecur": True}):
            pass


# ----------------------------------------------------------------------------- addresses and the CLI


@pytest.mark.parametrize("value, expected", [
    (None, None), (False, None), ("off", None), (True, "127.0.0.1:8787"), ("on", "127.0.0.1:8787"),
    ("8799", "127.0.0.1:8799"), (":8799", "127.0.0.1:8799"), ("localhost:8799", "localhost:8799"),
    ("http://127.0.0.1:0", "127.0.0.1:0"),
])
def test_dashboard_addresses_default_to_loopback(value, expected, recwarn):
    from tomoqc.security import dashboard_address

    assert dashboard_address(value) == expected
    assert not [w for w in recwarn if issubclass(w.category, SecurityWarning)]


def test_a_public_dashboard_address_warns():
    from tomoqc.security import dashboard_address

    with pytest.warns(SecurityWarning, match="no authentication"):
        assert dashboard_address("0.0.0.0:8787") == "0.0.0.0:8787"
    with pytest.raises(OptionError, match="not an address"):
        dashboard_address("port-eighty")


@pytest.mark.parametrize("argv, expected", [
    (["score", "v.zarr", "--dashboard"], ["score", "v.zarr", "--dashboard", "on"]),
    (["score", "--dashboard", "v.zarr"], ["score", "--dashboard", "on", "v.zarr"]),
    (["score", "--dashboard", ":8799", "v.zarr"], ["score", "--dashboard", ":8799", "v.zarr"]),
    (["score", "--dashboard", "10.0.0.1:8787"], ["score", "--dashboard", "10.0.0.1:8787"]),
    (["score", "--dashboard=:1", "v"], ["score", "--dashboard=:1", "v"]),
    (["score", "--", "--dashboard"], ["score", "--", "--dashboard"]),
])
def test_dashboard_option_takes_an_optional_address(argv, expected):
    from tomoqc.cli.cluster_opts import expand_optional_values

    assert expand_optional_values(argv) == expected


def test_cli_cluster_options_go_where_they_apply(tmp_path):
    from tomoqc.cli.cluster_opts import cluster_options

    assert cluster_options("local") == {}
    assert cluster_options("local", insecure=True, dashboard="on") == {"insecure": True, "dashboard": "on"}
    ca = tmp_path / "ca.pem"
    assert cluster_options("tls://h:1", tls_ca_file=ca, tls_cert=ca) == {"tls_ca_file": str(ca), "tls_cert": str(ca)}
    slurm = cluster_options("slurm", insecure=True, dashboard=":8799", queue="batch")
    assert slurm["insecure"] is True and slurm["dashboard"] == ":8799" and slurm["queue"] == "batch"
    with pytest.raises(OptionError, match="--tls-cert need a tls:// scheduler address"):
        cluster_options("local", tls_cert=ca)
    with pytest.raises(OptionError, match="--insecure, --dashboard apply to a cluster tomoqc starts"):
        cluster_options("tls://h:1", insecure=True, dashboard="on")
    with pytest.raises(OptionError, match="--queue need --cluster slurm"):
        cluster_options("local", queue="batch")


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == __import__("socket").AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_cli_prints_a_security_warning_as_one_line(tmp_path, capsys):
    import socket

    import numpy as np

    from tomoqc.cli import main

    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no network interface besides loopback")
    with socket.socket() as s:  # a port on this machine's network address that nothing listens on
        s.bind((ip, 0))
        port = s.getsockname()[1]
    vol = tmp_path / "v.npy"
    np.save(vol, np.zeros((2, 8, 8), np.float32))
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):  # give up soon
        rc = main(["score", str(vol), "--cluster", f"tcp://{ip}:{port}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 2, err
    assert err[0].startswith(f"tomoqc: warning: the connection to tcp://{ip}:{port} is not authenticated")
    assert err[1].startswith(f"tomoqc: error: cannot connect to the dask scheduler at tcp://{ip}:{port}")


# ----------------------------------------------------------------------------- structure


def _tomoqc_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("tomoqc")}


def test_cluster_imports_slurm_and_never_the_reverse():
    assert "tomoqc.slurm" in _tomoqc_imports(REPO / "tomoqc" / "cluster.py")
    for module in ("slurm.py", "security.py", "worker_env.py", "logs.py", "locks.py"):
        assert "tomoqc.cluster" not in _tomoqc_imports(REPO / "tomoqc" / module), module
    code = "import sys, tomoqc.slurm; sys.exit(5 if 'tomoqc.cluster' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
