# cmake -DOBJDIR=<_cuda object dir> -DOUT=<report> -P ptxas_collect.cmake
# Concatenates the per-source `-Xptxas -v` reports kept by ptxas_tee.sh into
# the one file installed as fastconv/cuda_ptxas.txt (read by
# `python -m fastconv info --cuda`). Each source's part starts with
# "## source: <name>".
file(GLOB_RECURSE parts "${OBJDIR}/*.ptxas.txt")
list(SORT parts)
set(text "# fastconv CUDA module: ptxas -v report of every kernel (generated at build time)\n")
foreach(p ${parts})
  get_filename_component(name "${p}" NAME)
  string(REPLACE ".ptxas.txt" "" name "${name}")
  string(REGEX REPLACE "\\.o(bj)?$" "" name "${name}")
  file(READ "${p}" body)
  string(APPEND text "## source: ${name}\n${body}\n")
endforeach()
if(NOT parts)
  string(APPEND text "# (no ptxas output found under ${OBJDIR})\n")
endif()
file(WRITE "${OUT}" "${text}")
