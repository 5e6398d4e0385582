#!/bin/sh
# Trim a virtual environment holding the serving dependencies down to what serving runs.
#
#   docker/slim-venv.sh /opt/venv
#
# Each step leaves the service's behaviour unchanged (the image's smoke test and the SavedModels'
# outputs are the same before and after):
#   - TensorFlow's C++ headers (290-430 MB) are for compiling custom ops;
#   - libclang (60 MB) is TensorFlow's code generators' C++ parser; nothing imports it at run time;
#   - TensorFlow's own shared libraries ship with their symbol tables (not needed to load or run
#     them, about 170 MB): strip them. Only TensorFlow's: the vendored libraries of other wheels
#     (numpy.libs/ and the like) were laid out by patchelf, and strip breaks those.
set -eu
venv="$1"
site="$(echo "${venv}"/lib/python3*/site-packages)"
rm -rf "${site}/tensorflow/include"
"${venv}/bin/python" -m pip uninstall --yes --quiet libclang
find "${site}/tensorflow" -name '*.so*' -type f -exec strip --strip-unneeded {} +
