"""
Wheels built by hand, for the environment tests and bench/bench_envs.py: a wheel is a zip of the
package's files and a C{NAME-VERSION.dist-info} folder (METADATA, WHEEL, RECORD), so building one
needs no build backend, no build isolation and no network.
"""

import base64
import hashlib
import os
import zipfile


def make_wheel(folder, name="tinypkg", version="1.0", requires=(), source=None):
    """
    Write C{NAME-VERSION-py3-none-any.whl} into C{folder}; return its path. The package is one
    module C{NAME/__init__.py} holding C{__version__} (or C{source}); C{requires} are its
    C{Requires-Dist} lines.
    """
    dist_info = "%s-%s.dist-info" % (name, version)
    metadata = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
    metadata += "".join("Requires-Dist: %s\n" % requirement for requirement in requires)
    files = {
        "%s/__init__.py" % name: source if source is not None else "__version__ = %r\n" % version,
        "%s/METADATA" % dist_info: metadata,
        "%s/WHEEL" % dist_info: "Wheel-Version: 1.0\nGenerator: srpy-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "%s/top_level.txt" % dist_info: name + "\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode("utf-8")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append("%s/RECORD,," % dist_info)
    files["%s/RECORD" % dist_info] = "\n".join(record) + "\n"
    path = os.path.join(str(folder), "%s-%s-py3-none-any.whl" % (name, version))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path
