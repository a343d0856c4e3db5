"""A stand-in for the Hugging Face Hub on 127.0.0.1, for offline upload and download tests.

It speaks the parts of the Hub's HTTP protocol that huggingface_hub uses to push a model folder and
that timm uses to load one:

* repository creation, branch creation and YAML validation;
* preupload, which answers "lfs" for ``*.safetensors`` (as the Hub does for binary weights) and
  "regular" for the rest;
* the Git LFS batch API (``{repo}.git/info/lfs/objects/batch``), then a PUT of the content to the
  upload URL it hands out, and the verify call; the content must match its sha256 oid;
* the NDJSON commit, with inline base64 files and ``lfsFile`` pointers to uploaded LFS objects;
* ``HEAD``/``GET {repo}/resolve/{revision}/{path}`` with the headers huggingface_hub's
  ``hf_hub_download`` reads (X-Repo-Commit, ETag, X-Linked-Etag/-Size for LFS files, and
  X-Error-Code: EntryNotFound / RevisionNotFound / RepositoryNotFound on 404).

Not spoken: the Xet storage protocol, which huggingface_hub prefers when ``hf_xet`` is installed;
clients of this stand-in set ``HF_HUB_DISABLE_XET=1`` (the Hub accepts both protocols).

``mode`` makes the API fail: '401', '403', '409' (every call), 'wrong-type' (the name is taken by a
repository of another type: creation says it exists, then the model repository is not found), or
'hang' (accept requests and never answer).
"""
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict


def _lfs(path: str) -> bool:
    return path.endswith('.safetensors')


class FakeHub:
    def __init__(self, mode: str = 'ok'):
        self.mode = mode
        # repo_id -> {'private': bool, 'branches': {name: {path: bytes}}, 'commits': {name: [oid, ...]}}
        self.repos = {}
        self.lfs_objects: Dict[str, bytes] = {}  # oid -> content, from PUTs to the LFS upload URL
        self.lfs_uploads = []  # (repo_id, path) committed as LFS pointers
        self.requests = []  # (method, path, headers) of every request
        self._release = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _reply(self, status, payload=None, headers=None, body=None):
                if body is None:
                    body = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json' if payload is not None or status >= 400
                                 else 'application/octet-stream')
                self.send_header('Content-Length', str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if status >= 400:
                    self.send_header('X-Error-Message', (payload or {}).get('error', ''))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(body)

            def _body(self):
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def _host(self):
                return f'http://{self.headers["Host"]}'

            def _handle(self):
                method = self.command
                body = self._body() if method in ('POST', 'PUT') else b''
                hub.requests.append((method, self.path, dict(self.headers)))
                if hub.mode == 'hang':
                    hub._release.wait(60)
                    return
                path = self.path.split('?')[0]
                if hub.mode in ('409', 'wrong-type') and path == '/api/repos/create':
                    # the Hub's answer when the name is taken: huggingface_hub treats it as "exists"
                    return self._reply(409, {'error': 'You already created this repo', 'url': f'{self._host()}/me/student'})
                if hub.mode == 'wrong-type':
                    return self._reply(404, {'error': 'Repository not found'})
                if hub.mode in ('401', '403', '409'):
                    return self._reply(int(hub.mode), {'error': f'fake hub refuses ({hub.mode})'})
                with hub._lock:
                    return self._route(method, path, body)

            def _route(self, method, path, body):
                if method == 'POST' and path == '/api/repos/create':
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get('organization') else data['name']
                    private = data.get('private', data.get('visibility') == 'private')
                    hub.repos.setdefault(repo_id, {'private': private, 'branches': {'main': {}}, 'commits': {'main': []}})
                    return self._reply(200, {'url': f'{self._host()}/{repo_id}'})
                if method == 'POST' and path == '/api/validate-yaml':
                    return self._reply(200, {})
                m = re.fullmatch(r'/(.+?)\.git/info/lfs/objects/batch', path)
                if m and method == 'POST':
                    return self._lfs_batch(m.group(1), json.loads(body))
                m = re.fullmatch(r'/lfs-upload/([0-9a-f]{64})', path)
                if m and method == 'PUT':
                    if hashlib.sha256(body).hexdigest() != m.group(1):
                        return self._reply(400, {'error': 'content does not match its oid'})
                    hub.lfs_objects[m.group(1)] = body
                    return self._reply(200, {})
                if method == 'POST' and path == '/lfs-verify':
                    data = json.loads(body)
                    stored = hub.lfs_objects.get(data['oid'])
                    if stored is None or len(stored) != data['size']:
                        return self._reply(404, {'error': 'object not uploaded'})
                    return self._reply(200, {})
                m = re.fullmatch(r'/api/models/(.+?)/(preupload|commit|branch)/(.+)', path)
                if m and method == 'POST':
                    return self._api(*m.groups(), body)
                m = re.fullmatch(r'/(.+?/.+?)/resolve/([^/]+)/(.+)', path)
                if m and method in ('GET', 'HEAD'):
                    return self._resolve(*m.groups())
                return self._reply(404, {'error': f'fake hub has no {method} {path}'})

            def _lfs_batch(self, repo_id, data):
                if repo_id not in hub.repos:
                    return self._reply(404, {'error': 'Repository not found'})
                objects = []
                for obj in data['objects']:
                    entry = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
                    if obj['oid'] not in hub.lfs_objects:
                        entry['actions'] = {
                            'upload': {'href': f"{self._host()}/lfs-upload/{obj['oid']}"},
                            'verify': {'href': f'{self._host()}/lfs-verify'},
                        }
                    objects.append(entry)
                return self._reply(200, {'transfer': 'basic', 'objects': objects})

            def _api(self, repo_id, action, revision, body):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._reply(404, {'error': 'Repository not found'}, {'X-Error-Code': 'RepoNotFound'})
                if action == 'branch':
                    repo['branches'].setdefault(revision, dict(repo['branches']['main']))
                    repo['commits'].setdefault(revision, list(repo['commits']['main']))
                    return self._reply(200, {})
                if revision not in repo['branches']:
                    return self._reply(404, {'error': f'Invalid rev id: {revision}'}, {'X-Error-Code': 'RevisionNotFound'})
                if action == 'preupload':
                    files = json.loads(body)['files']
                    return self._reply(200, {'files': [
                        {'path': f['path'], 'uploadMode': 'lfs' if _lfs(f['path']) else 'regular', 'shouldIgnore': False}
                        for f in files]})
                files = repo['branches'][revision]
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item['value']
                    if item['key'] == 'file':
                        files[value['path']] = base64.b64decode(value['content'])
                    elif item['key'] == 'lfsFile':
                        if value['oid'] not in hub.lfs_objects:
                            return self._reply(422, {'error': f"LFS object {value['oid']} was never uploaded"})
                        files[value['path']] = hub.lfs_objects[value['oid']]
                        hub.lfs_uploads.append((repo_id, value['path']))
                oid = hashlib.sha1(f'{repo_id}@{revision}#{len(repo["commits"][revision])}'.encode()).hexdigest()
                repo['commits'][revision].append(oid)
                return self._reply(200, {'commitUrl': f'{self._host()}/{repo_id}/commit/{oid}', 'commitOid': oid,
                                         'pullRequestUrl': None})

            def _resolve(self, repo_id, revision, file_path):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._reply(404, {'error': 'Repository not found'}, {'X-Error-Code': 'RepoNotFound'})
                if revision not in repo['branches']:
                    return self._reply(404, {'error': 'Revision not found'}, {'X-Error-Code': 'RevisionNotFound'})
                content = repo['branches'][revision].get(file_path)
                commit = repo['commits'][revision][-1] if repo['commits'][revision] else '0' * 40
                if content is None:
                    return self._reply(404, {'error': 'Entry not found'},
                                       {'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': commit})
                headers = {'X-Repo-Commit': commit, 'ETag': f'"{hashlib.sha1(content).hexdigest()}"'}
                if _lfs(file_path):
                    headers.update({'X-Linked-Etag': f'"{hashlib.sha256(content).hexdigest()}"',
                                    'X-Linked-Size': str(len(content))})
                return self._reply(200, headers=headers, body=content)

            def do_POST(self):
                self._handle()

            def do_PUT(self):
                self._handle()

            def do_GET(self):
                self._handle()

            def do_HEAD(self):
                self._handle()

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def files(self, repo_id: str, branch: str = 'main') -> Dict[str, bytes]:
        """The files of ``repo_id`` on ``branch``."""
        return self.repos[repo_id]['branches'][branch]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
