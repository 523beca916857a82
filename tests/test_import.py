import subprocess
import sys


def test_import_does_not_pull_in_napari_or_qt():
    code = (
        "import sys, napari_ncc; "
        "qt = ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6'); "
        "bad = [m for m in ('napari', 'magicgui', *qt) if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
