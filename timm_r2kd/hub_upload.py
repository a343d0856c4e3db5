"""The upload half of ``hub.push_folder``, run as a child process that a timeout can kill.

Run as a script (``python .../hub_upload.py``), not as ``-m timm_r2kd.hub_upload``: a script does
not import the ``timm_r2kd`` package (torch, timm), so the child starts in well under a second. It
reads the request as JSON on stdin and the token from ``$TIMM_R2KD_PUSH_TOKEN`` (never from argv,
which other users can list), and writes one JSON line: ``{"kind": "ok" | "http" | "network" |
"error", "status": int | null, "detail": str}``.
"""
import json
import os
import sys


def _is_network_error(error: Exception) -> bool:
    # huggingface_hub's HTTP client has changed between releases (requests, httpx); their transport
    # errors share these class names, so match by name instead of importing a client.
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, (OSError, TimeoutError)) or bool(
        names & {'TransportError', 'TimeoutException', 'ConnectError', 'NetworkError', 'ConnectionError'})


def upload(request: dict, token=None) -> dict:
    """Create the repository (and branch) and upload the folder; the outcome as a dict."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    try:
        api = HfApi(endpoint=request.get('endpoint'), token=token, library_name='timm-r2kd',
                    library_version=request['version'])
        url = api.create_repo(request['repo_id'], private=request['private'], exist_ok=True, repo_type='model')
        if request.get('revision'):
            api.create_branch(url.repo_id, branch=request['revision'], exist_ok=True)
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=request['directory'],
                                   revision=request.get('revision'),
                                   commit_message=f"Add distilled student (timm-r2kd {request['version']})")
        return dict(kind='ok', status=None, detail=getattr(commit, 'commit_url', str(commit)))
    except HfHubHTTPError as e:
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        return dict(kind='http', status=status, detail=f'{type(e).__name__}: {e}')
    except Exception as e:  # reported to the parent, which turns it into a HubPushError
        kind = 'network' if _is_network_error(e) else 'error'
        return dict(kind=kind, status=None, detail=f'{type(e).__name__}: {e}')


if __name__ == '__main__':
    outcome = upload(json.loads(sys.stdin.read()), token=os.environ.get('TIMM_R2KD_PUSH_TOKEN') or None)
    sys.stdout.write(json.dumps(outcome) + '\n')
