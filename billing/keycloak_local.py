"""A local Keycloak (``keycloak-quarkus-dist`` from Maven Central) for the SSO tests.

No PyPI or Debian package runs Keycloak; its release zip is on Maven Central, fetched with
Maven like the Kafka jars (billing/kafka_local.py) and unpacked once into the cache. Each
server runs ``kc.sh start-dev`` on loopback with its H2 database in its own directory, so
servers never share state. The first start rebuilds the distribution (~30 s, more under
load); later starts take ~10 s. The realm, clients, roles and users are made through the
admin REST API (:class:`KeycloakAdmin`) with the bootstrap admin.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

KEYCLOAK_VERSION = "26.7.3"
_MARKER = ".complete"


class KeycloakSetupError(RuntimeError):
    """Keycloak cannot be fetched or started."""


def default_cache_dir(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cinema-billing" / f"keycloak-{version}"


def fetch_keycloak(version: str = KEYCLOAK_VERSION, cache_dir: Path | None = None) -> Path:
    """The unpacked distribution (holding ``bin/kc.sh``), fetched with Maven once. Unpacked
    into a temporary directory renamed into place after a marker is written, under a file
    lock: an interrupted fetch is never taken for a cache hit."""
    target = cache_dir or default_cache_dir(version)
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file():
            return target
        mvn = shutil.which("mvn")
        if mvn is None or shutil.which("java") is None:
            raise KeycloakSetupError("Keycloak needs `mvn` and Java 17+ on PATH")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            proc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                    f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip",
                    f"-DoutputDirectory={tmp}",
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            archive = tmp / f"keycloak-quarkus-dist-{version}.zip"
            if proc.returncode != 0 or not archive.is_file():
                raise KeycloakSetupError(
                    f"mvn could not fetch Keycloak {version} (exit {proc.returncode}):\n"
                    f"{(proc.stdout + proc.stderr)[-3000:]}"
                )
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            archive.unlink()
            home = tmp / f"keycloak-{version}"
            (home / "bin" / "kc.sh").chmod(0o755)
            (home / _MARKER).write_text(version + "\n")
            if target.exists():
                shutil.rmtree(target)
            home.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class KeycloakServer:
    """One ``start-dev`` Keycloak on 127.0.0.1 with its database under ``data_dir``."""

    def __init__(
        self,
        home: Path,
        data_dir: Path,
        *,
        port: int | None = None,
        admin_user: str = "admin",
        admin_password: str = "admin-password",
    ) -> None:
        self.home = home
        self.data_dir = data_dir
        self.port = port or free_port()
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "keycloak.log"

    def issuer(self, realm: str) -> str:
        return f"{self.url}/realms/{realm}"

    def start(self, timeout: float = 180) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KC_BOOTSTRAP_ADMIN_USERNAME": self.admin_user,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password,
            # Start-up is mostly class loading: the C1 compiler alone starts it sooner.
            "JAVA_OPTS_APPEND": "-XX:TieredStopAtLevel=1 -Xms64m -Xmx768m",
        }
        db = self.data_dir / "h2" / "keycloakdb"
        # The first start rebuilds the shared distribution: one at a time.
        with (self.home.parent / f".{self.home.name}.start.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        "bash",
                        str(self.home / "bin" / "kc.sh"),
                        "start-dev",
                        "--http-host=127.0.0.1",
                        f"--http-port={self.port}",
                        "--db=dev-file",
                        f"--db-url=jdbc:h2:file:{db};NON_KEYWORDS=VALUE",
                        "--log-level=WARN",
                    ],
                    cwd=self.data_dir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends kc.sh + java
                )
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = f"{self.url}/realms/master/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise KeycloakSetupError(f"Keycloak exited:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(probe, timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise KeycloakSetupError(f"Keycloak not ready in {timeout}s:\n{self._log_tail()}")

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def admin(self) -> KeycloakAdmin:
        return KeycloakAdmin(self.url, self.admin_user, self.admin_password)


class KeycloakAdmin:
    """The few admin REST calls the tests and the local stack need (synchronous)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.user = user
        self.password = password
        self.http = httpx.Client(base_url=url, timeout=30)

    def _headers(self) -> dict[str, str]:
        resp = self.http.post(
            "/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": self.user,
                "password": self.password,
            },
        )
        resp.raise_for_status()
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    def call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        resp = self.http.request(method, f"/admin/realms{path}", json=json, headers=self._headers())
        if resp.status_code >= 400 and resp.status_code != 409:  # 409: exists already
            raise KeycloakSetupError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp

    def create_realm(self, realm: str, *, access_token_lifespan_s: int = 300) -> None:
        self.call(
            "POST",
            "",
            {"realm": realm, "enabled": True, "accessTokenLifespan": access_token_lifespan_s},
        )

    def create_role(self, realm: str, role: str) -> None:
        self.call("POST", f"/{realm}/roles", {"name": role})

    def create_client(
        self,
        realm: str,
        client_id: str,
        *,
        secret: str | None = None,
        audience: str | None = None,
        password_grant: bool = False,
        service_account: bool = False,
    ) -> str:
        """A client (public without ``secret``); ``audience`` adds an audience mapper so its
        access tokens carry that ``aud``. Returns the client's internal id."""
        body: dict[str, Any] = {
            "clientId": client_id,
            "enabled": True,
            "publicClient": secret is None,
            "directAccessGrantsEnabled": password_grant,
            "serviceAccountsEnabled": service_account,
            "standardFlowEnabled": False,
        }
        if secret is not None:
            body["secret"] = secret
        if audience:
            body["protocolMappers"] = [
                {
                    "name": f"audience-{audience}",
                    "protocol": "openid-connect",
                    "protocolMapper": "oidc-audience-mapper",
                    "config": {
                        "included.custom.audience": audience,
                        "access.token.claim": "true",
                        "id.token.claim": "false",
                    },
                }
            ]
        self.call("POST", f"/{realm}/clients", body)
        found = self.call("GET", f"/{realm}/clients?clientId={client_id}").json()
        return str(found[0]["id"])

    def grant_client_role(self, realm: str, client_uuid: str, owner: str, role: str) -> None:
        """Give ``client_uuid``'s service account the client role ``owner``/``role`` (e.g.
        realm-management / manage-users)."""
        user = self.call("GET", f"/{realm}/clients/{client_uuid}/service-account-user").json()
        owner_id = self.call("GET", f"/{realm}/clients?clientId={owner}").json()[0]["id"]
        rep = self.call("GET", f"/{realm}/clients/{owner_id}/roles/{role}").json()
        self.call("POST", f"/{realm}/users/{user['id']}/role-mappings/clients/{owner_id}", [rep])

    def create_user(
        self, realm: str, username: str, password: str, *, roles: tuple[str, ...] = ()
    ) -> str:
        """A user who can log in at once; returns its id (the tokens' ``sub``)."""
        self.call(
            "POST",
            f"/{realm}/users",
            {
                "username": username,
                "enabled": True,
                "email": f"{username}@example.org",
                "emailVerified": True,
                "firstName": username,
                "lastName": "Test",
                "credentials": [{"type": "password", "value": password, "temporary": False}],
            },
        )
        found = self.call("GET", f"/{realm}/users?username={username}&exact=true").json()
        user_id = str(found[0]["id"])
        if roles:
            reps = [self.call("GET", f"/{realm}/roles/{r}").json() for r in roles]
            self.call("POST", f"/{realm}/users/{user_id}/role-mappings/realm", reps)
        return user_id

    def realm_roles(self, realm: str, user_id: str) -> set[str]:
        reps = self.call("GET", f"/{realm}/users/{user_id}/role-mappings/realm").json()
        return {str(r["name"]) for r in reps}

    def close(self) -> None:
        self.http.close()


def password_login(url: str, realm: str, client_id: str, username: str, password: str) -> str:
    """A user's access token by the password grant (a test client with direct access)."""
    resp = httpx.post(
        f"{url}/realms/{realm}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": password,
            "scope": "openid",
        },
        timeout=30,
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token
