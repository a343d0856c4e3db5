"""Export distilled students for the Hugging Face Hub, with a model card that says how they were made.

    python -m timm_r2kd.hub save output/train/r2kd/model_best.pth.tar exported/
    python -m timm_r2kd.hub push output/train/r2kd/model_best.pth.tar you/resnet18-r2kd [--private]
    python -m timm_r2kd.hub push exported/ you/resnet18-r2kd           # retry a push, no re-training

The folder holds ``model.safetensors``, ``config.json`` (timm's, so
``timm.create_model('hf-hub:you/name', pretrained=True)`` or ``'local-dir:exported'`` rebuilds the
student with its data config and label names), ``README.md`` (the card) and ``args.yaml`` (the
recipe). The token comes from huggingface_hub's own login or from an environment variable named
by ``--hub-token-env``; it is never written to a log, the card, the config or a checkpoint.
"""
import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from timm.models import create_model, load_state_dict, save_for_hf
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from .outputs import OutputError, check_export_target
from .version import __version__

_logger = logging.getLogger(__name__)

# pretrained_cfg fields describing where the *original* weights came from; a distilled student
# is new weights on (often) new data, so none of them applies any more
_ORIGIN_FIELDS = ('tag', 'license', 'paper_ids', 'paper_name', 'origin_url', 'notes', 'hf_hub_id',
                  'hf_hub_filename', 'url', 'file', 'source', 'label_offset', 'custom_load')

R2KD_CITATION = """@article{kim2024r2kd,
  title   = {Robustness-Reinforced Knowledge Distillation with Correlation Distance and Network Pruning},
  author  = {Kim, Seonghak and Ham, Gyeongdo and Cho, Yucheol and Kim, Daeshik},
  journal = {IEEE Transactions on Knowledge and Data Engineering},
  year    = {2024},
  eprint  = {2311.13934},
  archivePrefix = {arXiv}
}"""
TIMM_CITATION = """@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""


class HubPushError(RuntimeError):
    """A push to the Hub failed; the local export is intact and the message says what to do."""


class ExportError(ValueError):
    """A checkpoint or repository name that cannot be exported as given; the message says why."""


def check_repo_id(repo_id: str, flag: str = 'repo_id') -> None:
    """Raise ``ExportError`` unless ``repo_id`` is a valid Hub model repository id (huggingface_hub's rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"{flag} '{repo_id}' is not a Hub repository id: {e} Use 'namespace/name', "
                          f"e.g. 'you/resnet18-r2kd'.") from None


def read_summary(run_dir) -> List[Dict[str, float]]:
    """The rows of a run folder's summary.csv (one per evaluated epoch) as floats; [] without one."""
    path = Path(run_dir) / 'summary.csv'
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ('', None)} for row in csv.DictReader(f)]


def load_run(checkpoint_path: str) -> Dict[str, Any]:
    """What is known about the run that wrote ``checkpoint_path``.

    Reads the checkpoint's metadata (``weights_only``), and ``run.json``, ``summary.csv`` and
    ``args.yaml`` from its folder when they are there.
    """
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ExportError(f"The checkpoint '{checkpoint_path}' does not exist (a run writes model_best.pth.tar and "
                          f"last.pth.tar into its output folder).")
    try:
        meta = load_checkpoint_metadata(str(checkpoint_path))
    except Exception as e:  # truncated file, not a checkpoint, pickled objects refused
        raise ExportError(f"Could not read the checkpoint '{checkpoint_path}' ({type(e).__name__}): it may be "
                          f"truncated or not a training checkpoint.") from e
    if not isinstance(meta, dict):
        meta = {}
    args = meta.get('args')
    run_dir = checkpoint_path.parent
    run_json = run_dir / 'run.json'
    info = dict(
        checkpoint=str(checkpoint_path),
        args=vars(args) if args is not None else {},
        epoch=meta.get('epoch'),
        metric=meta.get('metric'),
        has_ema=meta.get('state_dict_ema') is not None,
        run=json.loads(run_json.read_text()) if run_json.is_file() else {},
        summary=read_summary(run_dir),
        args_yaml=str(run_dir / 'args.yaml') if (run_dir / 'args.yaml').is_file() else None,
    )
    return info


def _pick_weights(info: Dict[str, Any]) -> Tuple[bool, Optional[Dict[str, float]]]:
    """(use the EMA weights?, metrics of the exported epoch)."""
    row = next((r for r in info['summary'] if r.get('epoch') == info['epoch']), None)
    use_ema = bool(info['has_ema'] and row and row.get('eval_ema_top1', -1) > row.get('eval_top1', -1))
    return use_ema, row


def build_student(checkpoint_path: str, model_name: Optional[str] = None, info: Optional[Dict[str, Any]] = None):
    """Recreate the student of a training checkpoint, with the weights worth publishing.

    Returns:
        (model, info, use_ema): the model in eval mode with its training data config as
        ``pretrained_cfg``, the run info, and whether the EMA weights were the better ones.
    """
    info = info or load_run(checkpoint_path)
    args = info['args']
    model_name = model_name or args.get('model')
    if not model_name:
        raise ValueError(f"'{checkpoint_path}' does not record its model: pass --model NAME.")
    in_chans = args.get('in_chans') or (args.get('input_size') or [3])[0]
    model = create_model(model_name, pretrained=False, num_classes=args.get('num_classes'), in_chans=in_chans,
                         global_pool=args.get('gp'), **(args.get('model_kwargs') or {}))
    use_ema, _ = _pick_weights(info)
    model.load_state_dict(load_state_dict(checkpoint_path, use_ema=use_ema, weights_only=True), strict=True)
    data_config = info['run'].get('data_config') or {}
    cfg = dict(model.pretrained_cfg)
    for key in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
        if data_config.get(key) is not None:
            cfg[key] = tuple(data_config[key]) if isinstance(data_config[key], list) else data_config[key]
    if args.get('mean') and args.get('std'):
        cfg['mean'], cfg['std'] = tuple(args['mean']), tuple(args['std'])
    model.pretrained_cfg = cfg
    return model.eval(), info, use_ema


def _fmt(value: Optional[float], suffix: str = '') -> str:
    return 'not measured' if value is None else f'{value:.2f}{suffix}'


def model_card(model_name: str, info: Dict[str, Any], use_ema: bool, repo_name: str) -> str:
    """The README.md of an exported student, from what the run recorded."""
    args, run, summary = info['args'], info['run'], info['summary']
    teacher = args.get('teacher')
    kd_loss = args.get('kd_loss')
    dataset = args.get('dataset') or (os.path.basename(str(args.get('data_dir') or '').rstrip('/')) or 'not recorded')
    _, row = _pick_weights(info)
    prefix = 'eval_ema_' if use_ema else 'eval_'
    best = max(summary, key=lambda r: r.get(f'{prefix}top1', -1)) if summary else None
    final = summary[-1] if summary else None

    lines = ['---', 'library_name: timm', 'pipeline_tag: image-classification', 'tags:', '- image-classification',
             '- timm', '- knowledge-distillation']
    if kd_loss == 'r2kd':
        lines.append('- r2kd')
    if args.get('dataset'):
        lines += ['datasets:', f'- {args["dataset"].split("/")[-1]}']
    lines += ['---', f'# {repo_name}', '']
    if teacher:
        lines.append(f'A `{model_name}` student distilled from a `{teacher}` teacher with '
                     f'{"R2KD (robustness-reinforced knowledge distillation)" if kd_loss == "r2kd" else kd_loss} '
                     f'using timm-r2kd, built on timm\'s training task API.')
    else:
        lines.append(f'A `{model_name}` trained without a teacher by timm-r2kd\'s train_r2kd.py (timm\'s training).')
    lines += ['', '## Model details', '', f'- **Architecture:** `{model_name}`',
              f'- **Classes:** {args.get("num_classes")}',
              f'- **Input:** {run.get("data_config", {}).get("input_size", "not recorded")}, mean '
              f'{args.get("mean")}, std {args.get("std")}',
              f'- **Dataset:** {dataset} (train split `{args.get("train_split")}`'
              + (f', first {args["train_num_samples"]} samples' if args.get('train_num_samples') else '')
              + f'; validation split `{args.get("val_split")}`'
              + (f', first {args["val_num_samples"]} samples' if args.get('val_num_samples') else '') + ')',
              f'- **Epochs:** {args.get("epochs")} scheduled, {len(summary) or "unknown"} evaluated; '
              f'exported weights: {"EMA" if use_ema else "model"} of epoch {info.get("epoch")}']
    if teacher:
        t = run.get('teacher', {})
        lines += [f'- **Teacher:** `{teacher}`' + (f' from `{os.path.basename(args["teacher_checkpoint"])}`'
                                                   if args.get('teacher_checkpoint') else ' (pretrained)'),
                  f'- **Teacher top-1 (validation):** {_fmt(t.get("teacher", {}).get("top1"), "%")}']
        if kd_loss == 'r2kd':
            lines += [f'- **Pruned teacher:** L1-unstructured rate {args.get("prune_rate")} '
                      f'({args.get("prune_scope")} scope), dense weight {args.get("prune_weight")}; pruned top-1 '
                      f'{_fmt(t.get("pruned_teacher", {}).get("top1"), "%")}, blend top-1 '
                      f'{_fmt(t.get("teacher_blend", {}).get("top1"), "%")}',
                      f'- **Loss:** R2KD, temperature {args.get("r2kd_temperature")}, value weight '
                      f'{args.get("r2kd_value_weight")}, rank weight {args.get("r2kd_rank_weight")}, '
                      f'{args.get("r2kd_rank")} ranks (smoothing {args.get("r2kd_rank_smoothing")})'
                      + (', reference parity' if args.get('reference_parity') else '')]
        else:
            lines.append(f'- **Loss:** {kd_loss}, temperature {args.get("kd_temperature")}')
        lines += [f'- **Loss weights:** task {args.get("task_loss_weight") or 1.0}, distillation '
                  f'{args.get("distill_loss_weight") or 1.0}',
                  f'- **Augmented view:** {args.get("r2kd_view") or "none"}']

    lines += ['', '## Results', '', '| | top-1 | top-5 |', '| --- | ---: | ---: |']
    for label, r in (('final epoch', final), ('best epoch', best)):
        if r is None:
            lines.append(f'| {label} | not measured | not measured |')
        else:
            lines.append(f'| {label} ({int(r["epoch"])}) | {_fmt(r.get(prefix + "top1"))} | '
                         f'{_fmt(r.get(prefix + "top5"))} |')
    if row and any(k.startswith('eval_top1_') for k in row):
        lines += ['', 'Robustness (top-1 on corrupted validation images, exported epoch):', '',
                  '| corruption | top-1 |', '| --- | ---: |']
        lines += [f'| {k[len("eval_top1_"):]} | {v:.2f} |' for k, v in row.items() if k.startswith('eval_top1_')]
    else:
        lines += ['', 'Robustness: not measured (train with `--eval-corruptions` to measure it).']

    lines += ['', '## How to use', '', '```python', 'import timm', '',
              f"model = timm.create_model('hf-hub:{repo_name}', pretrained=True).eval()",
              'config = timm.data.resolve_data_config({}, model=model)',
              'transform = timm.data.create_transform(**config)', '```', '', '## How it was made', '']
    command = run.get('command')
    lines += ['```bash', command or '# command not recorded; args.yaml holds the full recipe', '```', '',
              '`args.yaml` in this repository is the full recipe (`python train_r2kd.py -c args.yaml`).', '',
              f'Library versions: timm-r2kd {run.get("versions", {}).get("timm_r2kd", __version__)}, timm '
              f'{run.get("versions", {}).get("timm", timm.__version__)}, torch '
              f'{run.get("versions", {}).get("torch", torch.__version__)}.', '',
              '## Citation', '', '```bibtex', R2KD_CITATION, '', TIMM_CITATION, '```', '']
    return '\n'.join(lines)


def save_hf(
        checkpoint_path: str,
        directory: str,
        model_name: Optional[str] = None,
        repo_name: Optional[str] = None,
        overwrite: bool = False,
        flag: str = 'directory',
) -> Path:
    """Write the Hub folder for a training checkpoint, complete or not at all.

    ``directory`` must be new, empty, or (with ``overwrite``) an earlier export; a folder holding
    anything else is refused (``OutputError``) and never touched.

    Args:
        checkpoint_path: A train_r2kd (or timm) training checkpoint.
        directory: Output folder.
        model_name: Model name, when the checkpoint does not record it.
        repo_name: Repository name used in the card's usage example.
        overwrite: Replace an earlier export in ``directory``.
        flag: Name of the option ``directory`` came from, for error messages.
    """
    directory = Path(directory)
    check_export_target(directory, overwrite, flag)
    model, info, use_ema = build_student(checkpoint_path, model_name)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}-new-', dir=directory.parent))
    try:
        label_names = info['run'].get('label_names')
        model_config = {'label_names': list(label_names)} if label_names else None
        save_for_hf(model, str(staging), model_config=model_config, safe_serialization=True,
                    data_config=dict(model.pretrained_cfg))
        config_path = staging / 'config.json'
        config = json.loads(config_path.read_text())
        for key in _ORIGIN_FIELDS:
            config['pretrained_cfg'].pop(key, None)
        config_path.write_text(json.dumps(config, indent=2))
        name = repo_name or f'{model.pretrained_cfg.get("architecture", model_name)}-distilled'
        (staging / 'README.md').write_text(model_card(info['args'].get('model') or model_name, info, use_ema, name))
        if info['args_yaml']:
            shutil.copy2(info['args_yaml'], staging / 'args.yaml')
        if directory.exists():  # empty, or an earlier export the caller asked to replace
            # a fresh unique name: the move never lands on a file of the user's
            old = Path(tempfile.mkdtemp(prefix=f'.{directory.name}-old-', dir=directory.parent))
            os.rmdir(old)
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old)
        else:
            staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _logger.info(f'Exported {"EMA " if use_ema else ""}student of epoch {info["epoch"]} to {directory}')
    return directory


def resolve_token(token_env: Optional[str]) -> Optional[str]:
    """The token from ``$token_env`` if named (it must be set), else None: huggingface_hub's own login."""
    if not token_env:
        return None
    token = os.environ.get(token_env)
    if not token:
        raise HubPushError(f'--hub-token-env names {token_env}, but that environment variable is empty. Export it, '
                           f'or drop the flag to use the token saved by `hf auth login`.')
    return token


_HTTP_PROBLEMS = {
    401: 'not authenticated (401): run `hf auth login` or set the variable named by --hub-token-env to a token '
         'with write access',
    403: 'forbidden (403): the token may not write to {repo} (wrong namespace, read-only token, or organisation '
         'permissions)',
    409: 'conflict (409): {repo} exists with another repository type or cannot be created as a model repository; '
         'choose another name',
    404: '{repo} was not found as a model repository (is the name taken by a dataset or Space?); choose another '
         'name',
}


def push_folder(
        directory: str,
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        endpoint: Optional[str] = None,
        timeout: Optional[float] = 1800.,
) -> str:
    """Upload an exported folder to a model repository (created if needed); returns the commit URL.

    The upload runs in a child process (``hub_upload.py``), so a push that outlasts ``timeout`` is
    really stopped (killed), not left running in the background: huggingface_hub's upload has no
    overall timeout of its own.

    Args:
        directory: Folder written by ``save_hf``.
        repo_id: 'namespace/name' of the model repository.
        token: Hub token; None uses huggingface_hub's own login (``hf auth login`` or $HF_TOKEN).
        private: Create the repository as private.
        revision: Branch to push to (created from main if missing).
        endpoint: Hub endpoint (default: $HF_ENDPOINT or huggingface.co).
        timeout: Seconds the whole push may take.

    Raises:
        HubPushError: naming the folder (never modified) and the command to retry; the token never
            appears in it.
    """
    directory = Path(directory)
    retry = f'python -m timm_r2kd.hub push {directory} {repo_id}' + (' --private' if private else '') + (
        f' --revision {revision}' if revision else '')

    def _fail(what: str, detail: str) -> HubPushError:
        if token:
            detail = detail.replace(token, '***')
        return HubPushError(f'Push to {repo_id} failed: {what}. Your export is intact in {directory}; '
                            f'retry without re-training: {retry}\n  ({detail})')

    request = dict(directory=str(directory), repo_id=repo_id, private=private, revision=revision, endpoint=endpoint,
                   version=__version__)
    env = dict(os.environ)
    env.pop('TIMM_R2KD_PUSH_TOKEN', None)
    if token:
        env['TIMM_R2KD_PUSH_TOKEN'] = token  # the environment, not argv: other users can list arguments
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name('hub_upload.py'))], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(json.dumps(request), timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise _fail(f'no answer within {timeout:.0f} s', 'the upload was stopped') from None
    try:
        outcome = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise _fail('the upload process ended without an answer', err.strip()[-500:] or f'exit {child.returncode}')
    kind, status, detail = outcome['kind'], outcome['status'], outcome['detail']
    if kind == 'ok':
        return detail
    if kind == 'http':
        what = _HTTP_PROBLEMS.get(status, 'the Hub answered HTTP {status}').format(repo=repo_id, status=status)
        raise _fail(what, detail)
    if kind == 'network':
        raise _fail('no connection to the Hub (offline, proxy, or timeout)', detail)
    raise _fail('an unexpected error', detail)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_r2kd.hub', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    save = sub.add_parser('save', help='write the Hub folder for a checkpoint')
    save.add_argument('checkpoint')
    save.add_argument('directory')
    save.add_argument('--model', default=None, help='model name, if the checkpoint does not record it')
    save.add_argument('--repo-name', default=None, help='repository name shown in the card')
    save.add_argument('--overwrite', action='store_true', help='replace an earlier export in the directory')
    push = sub.add_parser('push', help='export (if given a checkpoint) and upload to a model repository')
    push.add_argument('source', help='a training checkpoint, or a folder written by `save`')
    push.add_argument('repo_id')
    push.add_argument('--model', default=None, help='model name, if the checkpoint does not record it')
    push.add_argument('--save-dir', default=None, help='where to export a checkpoint (default: beside it)')
    push.add_argument('--overwrite', action='store_true', help='replace an earlier export in the save dir')
    push.add_argument('--private', action='store_true')
    push.add_argument('--revision', default=None, help='branch to push to')
    push.add_argument('--token-env', default=None, help='environment variable holding the token')
    push.add_argument('--timeout', type=float, default=1800., help='seconds the push may take')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        if args.command == 'save':
            save_hf(args.checkpoint, args.directory, args.model, args.repo_name, overwrite=args.overwrite)
            return 0
        check_repo_id(args.repo_id)
        folder = Path(args.source)
        if not folder.is_dir():
            folder = save_hf(args.source, args.save_dir or str(Path(args.source).parent / 'hf_export'), args.model,
                             args.repo_id, overwrite=args.overwrite, flag='--save-dir')
        url = push_folder(str(folder), args.repo_id, token=resolve_token(args.token_env), private=args.private,
                          revision=args.revision, timeout=args.timeout)
        _logger.info(f'Pushed {folder} to {url}')
        return 0
    except (ExportError, OutputError) as e:
        _logger.error(str(e))
        return 2
    except HubPushError as e:
        _logger.error(str(e))
        return 4

if __name__ == '__main__':
    sys.exit(main())
