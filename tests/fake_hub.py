"""A minimal stand-in for the Hugging Face Hub API on 127.0.0.1, for offline upload tests.

It answers the calls huggingface_hub makes for create_repo / create_branch / upload_folder
(repo creation, YAML validation, preupload, NDJSON commit with inline base64 files) and keeps
what was uploaded in memory. ``mode`` makes the API fail: '401', '403', '409' (every call), 'wrong-type' (the name
is taken by a repository of another type: creation says it exists, then the model repository is
not found), or 'hang' (accept requests and never answer).
"""
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, mode: str = 'ok'):
        self.mode = mode
        self.repos = {}  # repo_id -> {'private': bool, 'files': {path: bytes}, 'branches': set}
        self.requests = []  # (method, path, headers) of every request
        self._release = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, payload=None):
                body = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                if status >= 400:
                    self.send_header('X-Error-Message', payload.get('error', '') if payload else '')
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def _handle(self, method):
                body = self._body() if method == 'POST' else b''
                hub.requests.append((method, self.path, dict(self.headers)))
                if hub.mode == 'hang':
                    hub._release.wait(60)
                    return
                path = self.path.split('?')[0]
                if hub.mode in ('409', 'wrong-type') and path == '/api/repos/create':
                    # the Hub's answer when the name is taken: huggingface_hub treats it as "exists"
                    return self._reply(409, {'error': 'You already created this repo',
                                             'url': f'http://{self.headers["Host"]}/me/student'})
                if hub.mode == 'wrong-type':
                    return self._reply(404, {'error': 'Repository not found'})
                if hub.mode in ('401', '403', '409'):
                    return self._reply(int(hub.mode), {'error': f'fake hub refuses ({hub.mode})'})
                if method == 'POST' and path == '/api/repos/create':
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get('organization') else data['name']
                    private = data.get('private', data.get('visibility') == 'private')
                    hub.repos.setdefault(repo_id, {'private': private, 'files': {}, 'branches': {'main'}})
                    return self._reply(200, {'url': f'http://{self.headers["Host"]}/{repo_id}'})
                if method == 'POST' and path == '/api/validate-yaml':
                    return self._reply(200, {})
                m = re.fullmatch(r'/api/models/(.+?)/(preupload|commit|branch)/(.+)', path)
                if m and method == 'POST':
                    repo_id, action, revision = m.groups()
                    if repo_id not in hub.repos:
                        return self._reply(404, {'error': 'Repository not found'})
                    if action == 'branch':
                        hub.repos[repo_id]['branches'].add(revision)
                        return self._reply(200, {})
                    if action == 'preupload':
                        files = json.loads(body)['files']
                        return self._reply(200, {'files': [
                            {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item['key'] == 'file':
                            value = item['value']
                            hub.repos[repo_id]['files'][value['path']] = base64.b64decode(value['content'])
                    return self._reply(200, {'commitUrl': f'http://{self.headers["Host"]}/{repo_id}/commit/1', 'commitOid': '1' * 40,
                                             'pullRequestUrl': None})
                return self._reply(404, {'error': f'fake hub has no {method} {path}'})

            def do_POST(self):
                self._handle('POST')

            def do_GET(self):
                self._handle('GET')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
