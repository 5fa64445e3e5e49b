"""A local stand-in for the Hub's HTTP API, just the endpoints a push uses (the network edge, nothing more).

whoami, auth-check, repo creation, preupload (every file answered "regular", so no LFS/Xet transfer) and the
ndjson commit endpoint; for downloads, only what a refusal needs (repo info and file metadata of a missing or a
gated repo: ``hub.gated.add("org/name")``). Every request is recorded, so tests assert on exactly what would have been uploaded.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

GOOD_TOKEN = "hf_fake_write_token_for_tests"


class FakeHub:
    def __init__(self, user: str = "alice", orgs: tuple[str, ...] = ("acme",)):
        self.user, self.orgs = user, orgs
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        self.validated: list[dict] = []
        self.gated: set[str] = set()
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
                authorized = self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}"
                hub.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query), "authorized": authorized})
                status, answer, headers = hub.route(method, url.path, parse_qs(url.query), body, authorized)
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
