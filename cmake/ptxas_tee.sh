#!/bin/sh
# CUDA compiler launcher of the _cuda target (CMakeLists.txt): runs the nvcc
# command line it is given, passes its stderr through to the build log, and
# keeps a copy next to the object file (<object>.ptxas.txt) so that the
# `-Xptxas -v` report (registers, shared memory, spills per kernel) survives
# the build. cmake/ptxas_collect.cmake gathers the copies.
obj=""
prev=""
for a in "$@"; do
  if [ "$prev" = "-o" ]; then obj="$a"; fi
  prev="$a"
done
if [ -z "$obj" ]; then exec "$@"; fi
tmp="$obj.ptxas.tmp"
"$@" 2>"$tmp"
rc=$?
cat "$tmp" >&2
mv -f "$tmp" "$obj.ptxas.txt"
exit $rc
