"""Where a run or an export may write: nothing a user already has is deleted or overwritten.

A run folder that holds another run's files is refused unless the run resumes from it, and an
export folder is written only when it is new, empty, or (with ``overwrite``) an earlier export.
"""
import os
import tempfile
from pathlib import Path
from typing import Optional

# what save_hf writes; a folder holding only these (config.json among them) is an earlier export
EXPORT_FILES = frozenset({'model.safetensors', 'config.json', 'README.md', 'args.yaml'})
# what a train_r2kd / timm run writes into its folder
_RUN_FILES = ('args.yaml', 'summary.csv', 'run.json', 'last.pth.tar', 'model_best.pth.tar')


class OutputError(ValueError):
    """An output path that would destroy or mix up existing files; the message says what to do."""


def is_export(path) -> bool:
    """True when ``path`` is a folder holding an earlier export of this tool and nothing else."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return 'config.json' in names and names <= EXPORT_FILES


def check_export_target(path, overwrite: bool = False, flag: str = '--save-hf') -> None:
    """Raise ``OutputError`` unless an export may be written to ``path``.

    Args:
        path: The export folder.
        overwrite: Replace an earlier export found there.
        flag: Name of the option the path came from, for the message.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} '{path}' is a file; name a folder (new or empty) for the export.")
    if not path.is_dir() or not any(path.iterdir()):
        check_writable(path, flag)
        return
    if not is_export(path):
        raise OutputError(
            f"{flag} '{path}' is a folder holding other files (an export only replaces an earlier export, which "
            f"holds just {', '.join(sorted(EXPORT_FILES))}). Name a new or empty folder.")
    if not overwrite:
        option = '--overwrite-export' if flag == '--save-hf' else '--overwrite'
        raise OutputError(f"{flag} '{path}' holds an earlier export. Pass {option} to replace it, or name a "
                          f"new folder.")
    check_writable(path, flag)


def run_files(path) -> list:
    """The files of a training run found in folder ``path`` (empty when it is new or holds none)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name in _RUN_FILES or p.name.endswith('.pth.tar'))


def check_run_folder(path, resume: Optional[str] = None) -> None:
    """Raise ``OutputError`` if ``path`` holds another run's files and the run does not resume from it.

    A new run never takes the next free name instead (as timm's ``get_outdir(inc=True)`` would):
    scripts find a run's results by the folder they named, and would silently read the old run's.

    Args:
        path: The run folder (output root joined with the experiment name).
        resume: The ``--resume`` checkpoint, if any.
    """
    found = run_files(path)
    if not found:
        check_writable(Path(path), '--output')
        return
    if resume and Path(resume).resolve().parent == Path(path).resolve():
        return
    raise OutputError(
        f"The run folder '{path}' already holds a run ({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}). "
        f"Resume it with --resume {os.path.join(path, 'last.pth.tar')}, or choose another --experiment (or "
        f"--output) for a new run.")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path, flag: str) -> None:
    """Raise ``OutputError`` unless files can be created in ``path`` (or its nearest existing parent)."""
    folder = _existing_parent(Path(path))
    if not folder.is_dir():
        raise OutputError(f"{flag}: '{folder}' is a file, not a folder; choose another path.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{flag}: cannot write to '{folder}' ({e.strerror}); choose a writable path.") from e
