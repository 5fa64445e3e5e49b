"""A local stand-in for the Hub's HTTP API, just the endpoints a push uses (the network edge, nothing more).

whoami, auth-check, repo creation, preupload (every file answered "regular", so no LFS/Xet transfer) and the
ndjson commit endpoint; for downloads, only what a refusal needs (repo info and file metadata of a missing or a
gated repo: ``hub.gated.add("org/name")``); and trusted publishing (GitHub's id-token endpoint and the Hub's
``/oauth/token`` exchange, whose token may write to the one repo it was scoped to). Every request is recorded, so
tests assert on exactly what would have been uploaded.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

GOOD_TOKEN = "hf_fake_write_token_for_tests"
# Trusted publishing (OIDC): GitHub's runtime answers ACTIONS_ID_TOKEN_REQUEST_URL (served here too) with an id token for
# ACTIONS_ID_TOKEN_REQUEST_TOKEN; the Hub's /oauth/token exchanges it for a short-lived token scoped to one repo.
GITHUB_REQUEST_TOKEN = "github-runtime-request-token"
GITHUB_ID_TOKEN = "github-oidc-id-token-jwt"
OIDC_TOKEN = "hf_jwt_fake_short_lived_oidc_token"
GITHUB_OIDC_PATH = "/_github/id-token"


class FakeHub:
    def __init__(self, user: str = "alice", orgs: tuple[str, ...] = ("acme",)):
        self.user, self.orgs = user, orgs
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        self.validated: list[dict] = []
        self.gated: set[str] = set()
        self.oidc_resources: list[str] = []  # the repos short-lived OIDC tokens were scoped to
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict | list, headers: dict | None = None):
                data = b"" if self.command == "HEAD" else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                authorized = bearer == GOOD_TOKEN or (bearer == OIDC_TOKEN and bool(hub.oidc_resources))
                request = {"method": method, "path": url.path, "query": parse_qs(url.query), "authorized": authorized}
                hub.requests.append({**request, "oidc": bearer == OIDC_TOKEN})
                if url.path in (GITHUB_OIDC_PATH, "/oauth/token"):
                    status, answer, headers = hub.trusted_publishing(url.path, parse_qs(url.query), body, bearer)
                else:
                    status, answer, headers = hub.route(method, url.path, parse_qs(url.query), body, authorized)
                    repo = hub.repo_named(url.path)
                    if bearer == OIDC_TOKEN and repo and repo not in hub.oidc_resources and status < 400:
                        status, answer, headers = 403, {"error": f"this OIDC token is scoped to {hub.oidc_resources}"}, {}
                self._send(status, answer, headers)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_HEAD(self):
                self._handle("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def trusted_publishing(self, path, query, body, bearer):
        if path == GITHUB_OIDC_PATH:  # GitHub's runtime: an id token for the Hub's audience
            if bearer != GITHUB_REQUEST_TOKEN or query.get("audience") != [self.endpoint]:
                return 401, {"error": "bad GitHub request token or audience"}, {}
            return 200, {"value": GITHUB_ID_TOKEN}, {}
        exchange = json.loads(body or b"{}")  # the Hub's RFC 8693 token exchange
        if exchange.get("subject_token") != GITHUB_ID_TOKEN or not exchange.get("grant_type", "").endswith("token-exchange"):
            return 401, {"error": "invalid subject token"}, {}
        self.oidc_resources.append(exchange["resource"])
        return 200, {"access_token": OIDC_TOKEN, "token_type": "bearer", "expires_in": 3600}, {}

    @staticmethod
    def repo_named(path: str) -> str | None:
        """The repo a model-repo API path acts on (``/api/models/ORG/NAME/...``), if any."""
        parts = path.split("/")
        return "/".join(parts[3:5]) if path.startswith("/api/models/") and len(parts) >= 5 else None

    def _may_write(self, repo_id: str) -> bool:
        return repo_id.split("/")[0] in (self.user, *self.orgs)

    def route(self, method, path, query, body, authorized):
        not_found = (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if not authorized:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        if method == "GET" and path == "/api/whoami-v2":
            return (
                200,
                {
                    "type": "user",
                    "name": self.user,
                    "orgs": [{"name": o} for o in self.orgs],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                },
                {},
            )
        if method == "GET" and path.startswith("/api/models/") and "/revision/" in path:
            repo_id = path[len("/api/models/") :].split("/revision/")[0]
            if repo_id in self.gated:  # a gated repo's card and file list are public; its files are not
                return (
                    200,
                    {
                        "id": repo_id,
                        "sha": "0" * 40,
                        "gated": "manual",
                        "private": False,
                        "siblings": [{"rfilename": "config.json"}, {"rfilename": "model.safetensors"}],
                    },
                    {},
                )
            return not_found
        if method == "GET" and path.startswith("/api/models/") and "/tree/" in path:
            repo_id = path[len("/api/models/") :].split("/tree/")[0]
            if repo_id in self.gated:
                return (
                    200,
                    [{"type": "file", "path": name, "size": 100, "oid": "1" * 40} for name in ("config.json", "model.safetensors")],
                    {},
                )
            return not_found
        if method in ("GET", "HEAD") and "/resolve/" in path:
            repo_id = path.lstrip("/").split("/resolve/")[0]
            if repo_id in self.gated:
                return (
                    403,
                    {"error": f"Access to model {repo_id} is restricted."},
                    {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo_id} is restricted."},
                )
            return not_found
        if method == "GET" and path.startswith("/api/models/") and path.endswith("/auth-check/write"):
            repo_id = path[len("/api/models/") : -len("/auth-check/write")]
            if repo_id not in self.repos:
                return not_found
            return (200, {}, {}) if self._may_write(repo_id) else (403, {"error": "no write access"}, {})
        if method == "POST" and path == "/api/validate-yaml":
            # The real Hub checks the card's metadata; here: it must at least be YAML with a mapping.
            import yaml

            content = json.loads(body)["content"]
            meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
            self.validated.append(meta)
            if not isinstance(meta, dict):
                return 400, {"error": "Invalid metadata"}, {}
            return 200, {"warnings": []}, {}
        if method == "POST" and path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or self.user}/{request['name']}"
            if not self._may_write(repo_id):
                return 403, {"error": "You don't have the rights to create a model under this namespace"}, {}
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}, {}
            private = bool(request.get("private")) or request.get("visibility") == "private"
            self.repos[repo_id] = {"private": private, "files": {}}
            return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}, {}
        if method == "POST" and path.startswith("/api/models/") and "/preupload/" in path:
            repo_id = path[len("/api/models/") :].split("/preupload/")[0]
            if repo_id not in self.repos:
                return not_found
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}, {}
        if method == "POST" and path.startswith("/api/models/") and "/commit/" in path:
            repo_id, revision = path[len("/api/models/") :].split("/commit/")
            if repo_id not in self.repos:
                return not_found
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
            create_pr = query.get("create_pr") == ["1"]
            self.commits.append(
                {
                    "repo_id": repo_id,
                    "revision": revision,
                    "summary": header["summary"],
                    "description": header.get("description"),
                    "create_pr": create_pr,
                    "files": files,
                }
            )
            number = len(self.commits)
            if not create_pr:
                self.repos[repo_id]["files"].update(files)
            return (
                200,
                {
                    "commitUrl": f"{self.endpoint}/{repo_id}/commit/{number:040x}",
                    "commitOid": f"{number:040x}",
                    "pullRequestUrl": f"{self.endpoint}/{repo_id}/discussions/{number}" if create_pr else None,
                },
                {},
            )
        return 404, {"error": f"fake hub: no route for {method} {path}"}, {}
